package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// node-resque's tooling removes a failed entry with LREM of the entry's
// JavaScript re-serialisation (JSON.stringify(JSON.parse(entry))), so our
// entries must be byte-identical to what JSON.stringify would print: key order
// preserved, no HTML escaping, U+2028/U+2029 literal, no trailing newline.
// encoding/json cannot do the last three together, hence this small encoder.
//
// Everything here is iterative: a job is untrusted input, and a recursive
// walk of a deeply nested document overflows the goroutine stack, which is a
// fatal error recover() cannot catch.

// maxEncodeDepth bounds the nesting reencodeJS accepts, as encoding/json's
// own decoder does (so whatever we print, Go can read back). Jobs are held to
// the much lower Limits.MaxJobDepth before anything decodes them.
const maxEncodeDepth = 10000

// appendJSString appends s as JSON.stringify would print it (invalid UTF-8
// bytes as U+FFFD, as a JavaScript string read from them holds).
func appendJSString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				// An invalid byte reads as U+FFFD, which JSON.stringify
				// prints literally: an escape here would not survive
				// node-resque's JSON.stringify(JSON.parse(entry)).
				dst = append(dst, "\uFFFD"...)
			} else {
				dst = append(dst, s[i:i+size]...)
			}
			i += size
			continue
		}
		switch c {
		case '"':
			dst = append(dst, '\\', '"')
		case '\\':
			dst = append(dst, '\\', '\\')
		case '\b':
			dst = append(dst, '\\', 'b')
		case '\f':
			dst = append(dst, '\\', 'f')
		case '\n':
			dst = append(dst, '\\', 'n')
		case '\r':
			dst = append(dst, '\\', 'r')
		case '\t':
			dst = append(dst, '\\', 't')
		default:
			if c < 0x20 {
				dst = append(dst, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			} else {
				dst = append(dst, c)
			}
		}
		i++
	}
	return append(dst, '"')
}

// errNumberRange marks a number JavaScript reads as ±Infinity (1e999), which
// JSON.stringify would print as null: the job cannot travel unchanged.
var errNumberRange = errors.New("number out of JavaScript's range")

// appendJSNumber prints a JSON number as JavaScript's Number#toString would.
func appendJSNumber(dst []byte, n json.Number) ([]byte, error) {
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil && !(errors.Is(err, strconv.ErrRange) && f == 0) { // underflow reads as 0 in JS too
		if errors.Is(err, strconv.ErrRange) {
			return nil, fmt.Errorf("%w: %.40q", errNumberRange, string(n))
		}
		return nil, fmt.Errorf("number %.40q: %w", string(n), err)
	}
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, fmt.Errorf("%w: %.40q", errNumberRange, string(n))
	}
	if f == 0 {
		return append(dst, '0'), nil // JS prints -0 as 0
	}
	abs := math.Abs(f)
	if abs >= 1e-6 && abs < 1e21 { // JS switches to exponent form outside [1e-6, 1e21)
		return strconv.AppendFloat(dst, f, 'f', -1, 64), nil
	}
	s := strconv.FormatFloat(f, 'e', -1, 64) // 1e+21, 1.5e-07
	mant, exp, _ := strings.Cut(s, "e")
	sign, digits := exp[:1], strings.TrimLeft(exp[1:], "0")
	return append(dst, mant+"e"+sign+digits...), nil
}

// reencodeJS re-serialises a JSON document the way JSON.stringify(JSON.parse(x))
// would, keeping key order. (JavaScript also hoists integer-like object keys
// to the front; such keys do not occur in resque payloads.) A number beyond
// JavaScript's range is an error (errNumberRange), not silently null.
func reencodeJS(raw []byte) ([]byte, error) {
	out, _, err := reencode(raw, encodeMode{})
	return out, err
}

// encodeMode tunes reencode for failed-list entries.
type encodeMode struct {
	// redact replaces the value of every secret key (see secretKey) with
	// redactedValue, also inside string values that hold a JSON object (a
	// sendWebhook job's args[0] is such a string).
	redact bool
	// lossy prints numbers beyond JavaScript's range as null, exactly what
	// JSON.stringify(JSON.parse(x)) does, instead of failing.
	lossy bool
	// nested marks the walk of a JSON document found inside a string, so
	// strings within it are not searched again.
	nested bool
}

// redactedValue replaces secrets in failed-list entries.
const redactedValue = "[redacted]"

// secretKey says whether an object key names a credential: "token" and any
// key ending in it ("accessToken", "refresh_token"), case-insensitively.
func secretKey(k string) bool {
	return len(k) >= 5 && strings.EqualFold(k[len(k)-5:], "token")
}

// frame is one open array or object of the walk.
type frame struct {
	object  bool
	n       int  // elements (or members) written so far
	wantKey bool // an object expecting its next key
}

// reencode is reencodeJS with a mode; it also returns how many values it
// redacted. It walks the document with an explicit stack, never recursing
// (a string holding JSON is walked with nested set, one level only).
func reencode(raw []byte, mode encodeMode) ([]byte, int, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	out := make([]byte, 0, len(raw))
	var stack []frame
	redacted := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			return nil, 0, err
		}
		if d, ok := tok.(json.Delim); ok && (d == ']' || d == '}') {
			stack = stack[:len(stack)-1] // the decoder checked the pairing
			out = append(out, byte(d))
			if len(stack) == 0 {
				break
			}
			continue
		}
		var top *frame
		if len(stack) > 0 {
			top = &stack[len(stack)-1]
		}
		if top != nil && top.object && top.wantKey {
			key, ok := tok.(string)
			if !ok {
				return nil, 0, fmt.Errorf("object key is %T", tok)
			}
			if top.n > 0 {
				out = append(out, ',')
			}
			top.n++
			top.wantKey = false
			out = appendJSString(out, key)
			out = append(out, ':')
			if mode.redact && secretKey(key) {
				if err := skipValue(dec); err != nil {
					return nil, 0, err
				}
				out = appendJSString(out, redactedValue)
				redacted++
				top.wantKey = true
			}
			continue
		}
		if top != nil {
			if top.object {
				top.wantKey = true
			} else {
				if top.n > 0 {
					out = append(out, ',')
				}
				top.n++
			}
		}
		switch t := tok.(type) {
		case json.Delim:
			if len(stack) >= maxEncodeDepth {
				return nil, 0, fmt.Errorf("nesting deeper than %d", maxEncodeDepth)
			}
			stack = append(stack, frame{object: t == '{', wantKey: t == '{'})
			out = append(out, byte(t))
			continue
		case string:
			if s, n := redactInString(t, mode); n > 0 {
				out = appendJSString(out, s)
				redacted += n
			} else {
				out = appendJSString(out, t)
			}
		case json.Number:
			o, nerr := appendJSNumber(out, t)
			switch {
			case nerr == nil:
				out = o
			case mode.lossy && errors.Is(nerr, errNumberRange):
				out = append(out, "null"...)
			default:
				return nil, 0, nerr
			}
		case bool:
			out = strconv.AppendBool(out, t)
		case nil:
			out = append(out, "null"...)
		default:
			return nil, 0, fmt.Errorf("unexpected token %T", tok)
		}
		if len(stack) == 0 {
			break // a scalar document
		}
	}
	// One document only: anything but the end of input after it is an error.
	if _, err := dec.Token(); err != io.EOF {
		return nil, 0, errors.New("trailing data after JSON value")
	}
	return out, redacted, nil
}

// redactInString redacts the secrets of a string value that holds a JSON
// object (once, not within strings of that object).
func redactInString(s string, mode encodeMode) (string, int) {
	if !mode.redact || mode.nested || len(s) < 2 || s[0] != '{' || !strings.Contains(strings.ToLower(s), "token") {
		return s, 0
	}
	inner, n, err := reencode([]byte(s), encodeMode{redact: true, lossy: mode.lossy, nested: true})
	if err != nil || n == 0 {
		return s, 0
	}
	return string(inner), n
}

// skipValue consumes one value from dec, iteratively.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '[' || d == '{' {
				depth++
			} else {
				depth--
			}
		}
		if depth == 0 {
			return nil
		}
	}
}

// nestingExceeds reports whether raw nests arrays and objects more than max
// deep (the job envelope counts: {"args":[{}]} is 3 deep). It is a byte scan
// that allocates nothing and never recurses: brackets inside strings do not
// count, and an escaped quote does not end a string. It says nothing about
// validity; the parse after it does. (Generic so a job taken as a string is
// not copied to be scanned.)
func nestingExceeds[T string | []byte](raw T, max int) bool {
	if max < 0 {
		return true // every document is at least 0 deep
	}
	depth := 0
	for i := 0; i < len(raw); i++ {
		switch raw[i] {
		case '"':
			// Skip the string: find its closing quote, stepping over escapes
			// (the byte after a backslash is never the end; \uXXXX's hex
			// digits cannot be a quote or a bracket).
			for i++; i < len(raw) && raw[i] != '"'; i++ {
				if raw[i] == '\\' {
					i++ // the escaped byte
				}
			}
		case '[', '{':
			if depth++; depth > max {
				return true
			}
		case ']', '}':
			depth--
		}
	}
	return false
}

// secretPattern finds "<...token>":"<value>" in text that is not JSON this
// package can walk (a job that failed to parse, or one omitted for its size),
// also in its escaped form inside a JSON string (\"token\":\"...\").
var secretPattern = regexp.MustCompile(`(?i)((?:\\?")[^"\\]{0,64}token(?:\\?")\s*:\s*)(\\?")(?:[^"\\]|\\[^"]|\\")*?(\\?")`)

// redactText is the best-effort redaction of text that is not walkable JSON.
func redactText(s string) string {
	if !strings.Contains(strings.ToLower(s), "token") {
		return s
	}
	return secretPattern.ReplaceAllString(s, `$1$2`+redactedValue+`$3`)
}

// jsDate formats t as JavaScript's Date#toString does in UTC, the format of
// node-resque's failed_at and run_at fields.
func jsDate(t time.Time) string {
	return t.UTC().Format("Mon Jan 02 2006 15:04:05") + " GMT+0000 (Coordinated Universal Time)"
}

// Failure is one entry of the resque failed list.
type Failure struct {
	Worker  string
	Queue   string
	Payload []byte // the job as taken from the queue
	// PayloadOmitted, when set, says why Payload is not to be written (a job
	// over the size or nesting limits): the entry carries a stub payload
	// instead (see omittedPayload), never a re-encoding of the job.
	PayloadOmitted string
	Exception      string // error class, e.g. "Error"
	Error          string
	Backtrace      []string
	FailedAt       time.Time
}

// Encode renders the entry in node-resque's exact form: keys in the order
// worker, queue, payload, exception, error, backtrace, failed_at.
//
// The payload is re-encoded as JSON.stringify would print it, with secrets
// redacted (the failed list is kept forever and read by people and tools):
// every "token" value in it becomes "[redacted]". A number beyond
// JavaScript's range prints as null, as node-resque would print it. A payload
// that is not JSON at all is kept as a JSON string (redacted best-effort), so
// nothing else is lost. backtrace is always an array: node-resque's
// retryStuckJobs() reads backtrace[1] of every entry and throws on null.
func (f Failure) Encode() []byte {
	out := make([]byte, 0, 256+len(f.Payload))
	out = append(out, `{"worker":`...)
	out = appendJSString(out, f.Worker)
	out = append(out, `,"queue":`...)
	out = appendJSString(out, f.Queue)
	out = append(out, `,"payload":`...)
	switch {
	case f.PayloadOmitted != "":
		out = append(out, omittedPayload(f.Queue, f.PayloadOmitted)...)
	default:
		if p, _, err := reencode(f.Payload, encodeMode{redact: true, lossy: true}); err == nil {
			out = append(out, p...)
		} else {
			out = appendJSString(out, redactText(string(f.Payload)))
		}
	}
	out = append(out, `,"exception":`...)
	out = appendJSString(out, f.Exception)
	out = append(out, `,"error":`...)
	out = appendJSString(out, f.Error)
	out = append(out, `,"backtrace":[`...)
	for i, line := range f.Backtrace {
		if i > 0 {
			out = append(out, ',')
		}
		out = appendJSString(out, line)
	}
	out = append(out, `],"failed_at":`...)
	out = appendJSString(out, jsDate(f.FailedAt))
	return append(out, '}')
}

// omittedPayload is the payload of an entry whose job is not written: a job
// object node-resque can list and retry (retryAndRemoveFailed enqueues
// class "omitted" with no args, which our consumer fails as unknown), saying
// why in its own "omitted" field.
func omittedPayload(queue, why string) []byte {
	out := []byte(`{"class":"omitted","queue":`)
	out = appendJSString(out, queue)
	out = append(out, `,"args":[],"omitted":`...)
	out = appendJSString(out, why)
	return append(out, '}')
}
