package queue

import (
	"testing"
	"time"
)

// The failed entry must be byte-identical to node-resque's, or its tooling
// cannot remove or retry it (it LREMs the JavaScript re-serialisation).
func TestFailure_EncodeMatchesNodeResque(t *testing.T) {
	at := time.Date(2026, 11, 23, 18, 38, 10, 0, time.UTC)
	f := Failure{
		Worker:    "checkhost:4343",
		Queue:     "builds",
		Payload:   []byte(`{"class":"start","queue":"builds","args":[{"buildId":300,"jobId":1}]}`),
		Exception: "Error",
		Error:     "simulated failure for build 300",
		Backtrace: []string{"    at perform (worker.js:203:41)"},
		FailedAt:  at,
	}
	want := `{"worker":"checkhost:4343","queue":"builds","payload":{"class":"start","queue":"builds","args":[{"buildId":300,"jobId":1}]},"exception":"Error","error":"simulated failure for build 300","backtrace":["    at perform (worker.js:203:41)"],"failed_at":"Mon Nov 23 2026 18:38:10 GMT+0000 (Coordinated Universal Time)"}`
	if got := string(f.Encode()); got != want {
		t.Fatalf("Encode:\n got %s\nwant %s", got, want)
	}
}

func TestFailure_EncodeReserialisesLikeJavaScript(t *testing.T) {
	tests := []struct {
		name, payload, want string
	}{
		{"WhitespaceDropped", `{ "class" : "start", "args" : [ 1 ] }`, `{"class":"start","args":[1]}`},
		{"SlashUnescaped", `{"a":"http:\/\/x\/y"}`, `{"a":"http://x/y"}`},
		{"HTMLNotEscaped", `{"a":"\u003cb\u003e \u0026"}`, `{"a":"<b> &"}`},
		{"LineSeparatorsLiteral", `{"a":"x\u2028y\u2029"}`, "{\"a\":\"x\u2028y\u2029\"}"},
		{"ControlCharsLowerHex", `{"a":"\u001F\b\f"}`, `{"a":"\u001f\b\f"}`},
		{"NumbersAsJS", `{"a":1.0,"b":1e2,"c":-0,"d":1.5e-7,"e":1e21,"f":0.000001}`, `{"a":1,"b":100,"c":0,"d":1.5e-7,"e":1e+21,"f":0.000001}`},
		{"KeyOrderKept", `{"z":1,"a":{"y":true,"b":null}}`, `{"z":1,"a":{"y":true,"b":null}}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := reencodeJS([]byte(tt.payload))
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

func TestFailure_NonJSONPayloadKeptAsString(t *testing.T) {
	f := Failure{Worker: "w:1", Queue: "builds", Payload: []byte("not json {"), Exception: "MalformedJob", Error: "bad", FailedAt: time.Unix(0, 0)}
	want := `{"worker":"w:1","queue":"builds","payload":"not json {","exception":"MalformedJob","error":"bad","backtrace":[],"failed_at":"Thu Jan 01 1970 00:00:00 GMT+0000 (Coordinated Universal Time)"}`
	if got := string(f.Encode()); got != want {
		t.Fatalf("got %s\nwant %s", got, want)
	}
}

func TestParseJob(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		class   string
		queue   string
		wantErr bool
	}{
		{"NodeResqueJob", `{"class":"start","queue":"builds","args":[{"buildId":1}]}`, "start", "builds", false},
		{"RubyResqueNoQueueField", `{"class":"stop","args":[{"buildId":1}]}`, "stop", "taken", false},
		{"ExtraFieldsTolerated", `{"class":"start","queue":"builds","args":[],"jid":"x","enqueued_at":1}`, "start", "builds", false},
		{"NotJSON", `garbage`, "", "", true},
		{"MissingClass", `{"queue":"builds","args":[]}`, "", "", true},
		{"ArgsNotArray", `{"class":"start","args":{"buildId":1}}`, "", "", true},
		{"MissingArgs", `{"class":"start"}`, "", "", true},
		{"TrailingData", `{"class":"start","args":[]} {}`, "", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			j, err := ParseJob([]byte(tt.raw), "taken")
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err == nil && (j.Class != tt.class || j.Queue != tt.queue) {
				t.Fatalf("got class %q queue %q", j.Class, j.Queue)
			}
		})
	}
}
