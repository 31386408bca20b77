package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// Hostile shapes every target starts from.
var fuzzSeeds = []string{
	`{"class":"start","queue":"builds","args":[{"buildId":1,"jobId":2,"token":"t"}]}`,
	`{"class":"start","queue":"builds","args":[{"buildId":1},{"queueWorkerAttempt":2}],"attempt":1}`,
	`{"class":"start","args":[` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `]}`,
	strings.Repeat("[", 10001) + strings.Repeat("]", 10001),
	strings.Repeat(`{"a":`, 70) + "1" + strings.Repeat("}", 70),
	`{"class":"s","args":[1e999,-1e999,1e-400,-0,0.0,9007199254740993,1e21,1e-7,123456789012345678901234567890]}`,
	"{\"class\":\"s\",\"args\":[\"\xff\xfe\",\"a\xc3\"]}",
	`{"class":"s","args":["\ud800","\udc00\ud800","\ud83d\ude00","\u2028\u2029","\u0000\u001f\/"]}`,
	`{"class":"s","args":["{\"token\":\"x\",\"webhookConfig\":{}}"]}`,
	`{"class":"s","args":[{"Token":1,"accessToken":{"a":[1]},"tokenGen":2}]}`,
	`{"class":"s","args":["\"[]{}\\"]}`,
	`{"class":"s","args":[]} x`,
	`{"class":"s","args":[]}]`,
	` {"class" : "s" , "args" : [ true , false , null ] } `,
	`"str"`, `-0`, `1e999`, `[`, `{"a":}`, ``,
}

// jsIdentity says out is what JSON.stringify(JSON.parse(out)) prints, as far
// as reencodeJS models JavaScript: the property node-resque's LREM needs.
func jsIdentity(t *testing.T, what string, out []byte) {
	t.Helper()
	if !json.Valid(out) {
		t.Fatalf("%s printed invalid JSON: %q", what, out)
	}
	again, _, err := reencode(out, encodeMode{lossy: true})
	if err != nil {
		t.Fatalf("%s printed %q, which does not re-encode: %v", what, out, err)
	}
	if !bytes.Equal(again, out) {
		t.Fatalf("%s is not stable under re-encoding:\n%q\n%q", what, out, again)
	}
}

func FuzzParseJob(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		if DefaultLimits.check(string(raw)) != nil {
			return // the consumer never parses such a job
		}
		j, err := ParseJob(raw, "q")
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if j.Class == "" || j.Args == nil || j.Attempt < 0 {
			t.Fatalf("accepted %q as class %q args %v attempt %d", raw, j.Class, j.Args, j.Attempt)
		}
		next, err := j.withAttempt(j.Attempt + 1)
		if err != nil {
			if !errors.Is(err, ErrUnencodable) {
				t.Fatalf("withAttempt: %v is not ErrUnencodable", err)
			}
			return
		}
		jsIdentity(t, "withAttempt", next)
		back, err := ParseJob(next, "q")
		if err != nil {
			t.Fatalf("the next attempt %q does not parse: %v", next, err)
		}
		if back.Class != j.Class || back.Queue != j.Queue || back.Attempt != j.Attempt+1 || len(back.Args) != len(j.Args) {
			t.Fatalf("next attempt %q parses to class %q queue %q attempt %d with %d args, want %q %q %d %d",
				next, back.Class, back.Queue, back.Attempt, len(back.Args), j.Class, j.Queue, j.Attempt+1, len(j.Args))
		}
	})
}

func FuzzReencodeJS(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), false, false)
		f.Add([]byte(s), true, true)
	}
	f.Fuzz(func(t *testing.T, raw []byte, redact, lossy bool) {
		out, _, err := reencode(raw, encodeMode{redact: redact, lossy: lossy})
		if err != nil {
			return
		}
		jsIdentity(t, "reencode", out)
		if !redact && !json.Valid(raw) {
			t.Fatalf("re-encoded invalid JSON %q as %q", raw, out)
		}
		if redact {
			// Redacting twice changes nothing more.
			again, _, err := reencode(out, encodeMode{redact: true, lossy: lossy})
			if err != nil || !bytes.Equal(again, out) {
				t.Fatalf("redacting %q again gave %q (%v)", out, again, err)
			}
		}
	})
}

func FuzzAppendJSString(f *testing.F) {
	for _, s := range []string{"", "plain", "\xff", "a\xc3", "\u2028", "\x00\x1f\"\\/", "<&>", "😀", "\ufffd", "\xed\xa0\x80"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := appendJSString(nil, s)
		jsIdentity(t, "appendJSString", out)
		var back string
		if err := json.Unmarshal(out, &back); err != nil {
			t.Fatal(err)
		}
		// Each invalid byte becomes U+FFFD; everything else is kept.
		if want := string([]rune(s)); back != want {
			t.Fatalf("appendJSString(%q) reads back as %q, want %q", s, back, want)
		}
	})
}

func FuzzAppendJSNumber(f *testing.F) {
	for _, s := range []string{"0", "-0", "1", "1.0", "1e999", "-1e999", "1e-400", "9007199254740993", "1e21", "1e-7", "0.000001", "123.456e-2", "5e-324"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !json.Valid([]byte(s)) || (s[0] != '-' && (s[0] < '0' || s[0] > '9')) || strings.ContainsAny(s, " \t\r\n") {
			return
		}
		out, err := appendJSNumber(nil, json.Number(s))
		if err != nil {
			if !errors.Is(err, errNumberRange) {
				t.Fatalf("appendJSNumber(%q): %v", s, err)
			}
			return
		}
		jsIdentity(t, "appendJSNumber", out)
		in, _ := strconv.ParseFloat(s, 64)
		got, err := strconv.ParseFloat(string(out), 64)
		if err != nil || got != in {
			t.Fatalf("appendJSNumber(%q) = %q, which reads as %v, not %v", s, out, got, in)
		}
	})
}

func FuzzFailureEncode(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), "Error", "boom \xff", "")
	}
	f.Add([]byte("not json {"), "MalformedJob", `"quoted" \`, "job of 5 bytes exceeds")
	f.Fuzz(func(t *testing.T, payload []byte, exception, msg, omitted string) {
		e := Failure{Worker: "w:1-0", Queue: "builds", Payload: payload, PayloadOmitted: omitted,
			Exception: exception, Error: msg, Backtrace: []string{"  at x", msg}, FailedAt: time.Unix(0, 0)}.Encode()
		// node-resque removes an entry by LREM of JSON.stringify(JSON.parse(entry)).
		jsIdentity(t, "Failure.Encode", e)
		var back struct {
			Payload   json.RawMessage `json:"payload"`
			Backtrace []string        `json:"backtrace"`
		}
		if err := json.Unmarshal(e, &back); err != nil || back.Backtrace == nil {
			t.Fatalf("entry %q: %v", e, err)
		}
		if bytes.Contains(payload, []byte("token")) && omitted == "" {
			// No secret value survives in a payload that names a token key
			// the walk understood.
			if p, n, err := reencode(payload, encodeMode{redact: true, lossy: true}); err == nil && n > 0 && !bytes.Equal(back.Payload, p) {
				t.Fatalf("payload %q written as %q, want %q", payload, back.Payload, p)
			}
		}
	})
}

// depthOf is the nesting of a valid JSON document, by walking its tokens.
func depthOf(raw []byte) int {
	dec := json.NewDecoder(bytes.NewReader(raw))
	depth, maxDepth := 0, 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return maxDepth
		}
		if err != nil {
			return -1
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '[' || d == '{' {
				depth++
				maxDepth = max(maxDepth, depth)
			} else {
				depth--
			}
		}
	}
}

func FuzzNestingExceeds(f *testing.F) {
	for _, s := range fuzzSeeds {
		f.Add([]byte(s), 64)
		f.Add([]byte(s), 3)
	}
	f.Fuzz(func(t *testing.T, raw []byte, limit int) {
		got := nestingExceeds(raw, limit)
		if !utf8.Valid(raw) || !json.Valid(raw) {
			return // only "no panic" for what the parse would refuse
		}
		if want := depthOf(raw) > limit; got != want {
			t.Fatalf("nestingExceeds(%q, %d) = %v, but the document is %d deep", raw, limit, got, depthOf(raw))
		}
	})
}
