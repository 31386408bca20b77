package queue

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
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

// appendJSString appends s as JSON.stringify would print it.
func appendJSString(dst []byte, s string) []byte {
	const hex = "0123456789abcdef"
	dst = append(dst, '"')
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && size == 1 {
				dst = append(dst, `\ufffd`...)
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

// appendJSNumber prints a JSON number as JavaScript's Number#toString would.
func appendJSNumber(dst []byte, n json.Number) ([]byte, error) {
	f, err := strconv.ParseFloat(string(n), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return nil, fmt.Errorf("number %q out of range", n)
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
// to the front; such keys do not occur in resque payloads.)
func reencodeJS(raw []byte) ([]byte, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	out := make([]byte, 0, len(raw))
	var err error
	out, err = reencodeValue(dec, out)
	if err != nil {
		return nil, err
	}
	if dec.More() {
		return nil, fmt.Errorf("trailing data after JSON value")
	}
	return out, nil
}

func reencodeValue(dec *json.Decoder, out []byte) ([]byte, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			out = append(out, '{')
			for first := true; dec.More(); first = false {
				if !first {
					out = append(out, ',')
				}
				key, err := dec.Token()
				if err != nil {
					return nil, err
				}
				out = appendJSString(out, key.(string))
				out = append(out, ':')
				if out, err = reencodeValue(dec, out); err != nil {
					return nil, err
				}
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return append(out, '}'), nil
		case '[':
			out = append(out, '[')
			for first := true; dec.More(); first = false {
				if !first {
					out = append(out, ',')
				}
				if out, err = reencodeValue(dec, out); err != nil {
					return nil, err
				}
			}
			if _, err := dec.Token(); err != nil {
				return nil, err
			}
			return append(out, ']'), nil
		}
		return nil, fmt.Errorf("unexpected delimiter %v", t)
	case string:
		return appendJSString(out, t), nil
	case json.Number:
		return appendJSNumber(out, t)
	case bool:
		return strconv.AppendBool(out, t), nil
	case nil:
		return append(out, "null"...), nil
	}
	return nil, fmt.Errorf("unexpected token %T", tok)
}

// jsDate formats t as JavaScript's Date#toString does in UTC, the format of
// node-resque's failed_at and run_at fields.
func jsDate(t time.Time) string {
	return t.UTC().Format("Mon Jan 02 2006 15:04:05") + " GMT+0000 (Coordinated Universal Time)"
}

// Failure is one entry of the resque failed list.
type Failure struct {
	Worker    string
	Queue     string
	Payload   []byte // the job as taken from the queue
	Exception string // error class, e.g. "Error"
	Error     string
	Backtrace []string
	FailedAt  time.Time
}

// Encode renders the entry in node-resque's exact form: keys in the order
// worker, queue, payload, exception, error, backtrace, failed_at. A payload
// that is not JSON at all is kept as a JSON string, so nothing is lost.
func (f Failure) Encode() []byte {
	out := make([]byte, 0, 256+len(f.Payload))
	out = append(out, `{"worker":`...)
	out = appendJSString(out, f.Worker)
	out = append(out, `,"queue":`...)
	out = appendJSString(out, f.Queue)
	out = append(out, `,"payload":`...)
	if p, err := reencodeJS(f.Payload); err == nil {
		out = append(out, p...)
	} else {
		out = appendJSString(out, string(f.Payload))
	}
	out = append(out, `,"exception":`...)
	out = appendJSString(out, f.Exception)
	out = append(out, `,"error":`...)
	out = appendJSString(out, f.Error)
	out = append(out, `,"backtrace":`...)
	if f.Backtrace == nil {
		out = append(out, "null"...)
	} else {
		out = append(out, '[')
		for i, line := range f.Backtrace {
			if i > 0 {
				out = append(out, ',')
			}
			out = appendJSString(out, line)
		}
		out = append(out, ']')
	}
	out = append(out, `,"failed_at":`...)
	out = appendJSString(out, jsDate(f.FailedAt))
	return append(out, '}')
}
