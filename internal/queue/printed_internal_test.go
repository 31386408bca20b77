package queue

import "testing"

// printedAsJS may only say true when reencodeJS leaves the bytes unchanged.
func TestPrintedAsJS_AgreesWithReencode(t *testing.T) {
	docs := []string{
		`{"class":"start","queue":"builds","args":[{"buildId":1,"jobId":2,"blockedBy":"3","x":true,"y":null,"z":false}]}`,
		`{"class":"s","args":[-12,0,123456789012345]}`,
		`{"class":"s","args":["a\"b\\c\n\t\r\b\f\u0001\u001f"]}`,
		`{"class":"s","args":["é – 😀"]}`,
		`{"class":"s","args":[1234567890123456]}`,
		`{"class":"s","args":[1.5]}`,
		`{"class":"s","args":[1e3]}`,
		`{"class":"s","args":[-0]}`,
		`{"class":"s","args":[01]}`,
		`{"class":"s", "args":[]}`,
		"{\"class\":\"s\",\"args\":[]}\n",
		`{"class":"s","args":["\/"]}`,
		`{"class":"s","args":["\u0041"]}`,
		`{"class":"s","args":["\u000A"]}`,
		`{"class":"s","args":["\u000a"]}`,
		`{"class":"s","args":["\u2028"]}`,
		"{\"class\":\"s\",\"args\":[\"\xff\"]}",
		`{"class":"s","args":[[],{},[[1]],{"a":{"b":[]}}]}`,
	}
	var yes int
	for _, d := range docs {
		p, err := reencodeJS([]byte(d))
		same := err == nil && string(p) == d
		got := printedAsJS([]byte(d))
		if got && !same {
			t.Errorf("printedAsJS(%s) = true, but reencodeJS gives %s (%v)", d, p, err)
		}
		if got {
			yes++
		}
	}
	if yes < 4 {
		t.Fatalf("only %d documents recognised as printed by JSON.stringify", yes)
	}
	for _, d := range docs[:4] {
		if !printedAsJS([]byte(d)) {
			t.Errorf("printedAsJS(%s) = false, want true", d)
		}
	}
}
