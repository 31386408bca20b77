package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// Job is one resque job: {"class":..,"queue":..,"args":[..]}.
type Job struct {
	Class string
	// Queue is the job's own queue field (node-resque adds it; Ruby resque
	// does not), falling back to the queue it was taken from.
	Queue string
	Args  []json.RawMessage
	// Attempt counts the attempts that already failed (0 on first delivery).
	// It travels with the job as an extra top-level "attempt" field, which
	// node-resque and resque ignore.
	Attempt int
	// Raw is the exact bytes taken from Redis; settling a job removes exactly
	// these bytes from the in-flight list.
	Raw []byte
	// rawArgsOverride, when set, is the args array to render instead of
	// Args (a job built from Go values, see NewJob).
	rawArgsOverride json.RawMessage
	// prefetched says the previous job's settle took this one.
	prefetched bool
}

// ErrMalformed marks a payload that is not a resque job at all.
var ErrMalformed = errors.New("malformed resque job")

// ParseJob decodes a resque job, tolerating extra top-level fields. The
// envelope, args included, is decoded in one pass.
func ParseJob(raw []byte, takenFrom string) (*Job, error) {
	var env struct {
		Class   *string           `json:"class"`
		Queue   *string           `json:"queue"`
		Args    []json.RawMessage `json:"args"`
		Attempt int               `json:"attempt"`
	}
	// json.Unmarshal also rejects trailing data after the object
	// ("invalid character ... after top-level value").
	if err := json.Unmarshal(raw, &env); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field == "args" {
			return nil, fmt.Errorf("%w: \"args\" is not an array", ErrMalformed)
		}
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrMalformed, err)
	}
	if env.Class == nil || *env.Class == "" {
		return nil, fmt.Errorf("%w: missing \"class\"", ErrMalformed)
	}
	if env.Attempt < 0 {
		return nil, fmt.Errorf("%w: negative \"attempt\"", ErrMalformed)
	}
	if env.Args == nil {
		// Absent or null ("args":[] decodes to an empty, non-nil slice).
		return nil, fmt.Errorf("%w: missing \"args\"", ErrMalformed)
	}
	j := &Job{Class: *env.Class, Queue: takenFrom, Raw: raw, Attempt: env.Attempt, Args: env.Args}
	if env.Queue != nil && *env.Queue != "" {
		j.Queue = *env.Queue
	}
	return j, nil
}

// rawArgs renders args as a JSON array (element bytes as received).
func (j *Job) rawArgs() []byte {
	if j.rawArgsOverride != nil {
		return j.rawArgsOverride
	}
	n := 2
	for _, a := range j.Args {
		n += len(a) + 1
	}
	out := make([]byte, 0, n)
	out = append(out, '[')
	for i, a := range j.Args {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, a...)
	}
	return append(out, ']')
}

// withAttempt renders the job for its next attempt, in node-resque's key
// order with the attempt count appended. Other extra fields are dropped.
func (j *Job) withAttempt(attempt int) ([]byte, error) {
	args, err := reencodeJS(j.rawArgs())
	if err != nil {
		return nil, fmt.Errorf("re-encoding args: %w", err)
	}
	out := make([]byte, 0, len(j.Raw)+16)
	out = append(out, `{"class":`...)
	out = appendJSString(out, j.Class)
	out = append(out, `,"queue":`...)
	out = appendJSString(out, j.Queue)
	out = append(out, `,"args":`...)
	out = append(out, args...)
	out = append(out, `,"attempt":`...)
	out = strconv.AppendInt(out, int64(attempt), 10)
	return append(out, '}'), nil
}

// Payload returns args[0], where node-resque puts the job's object.
func (j *Job) Payload() (json.RawMessage, error) {
	if len(j.Args) == 0 {
		return nil, fmt.Errorf("%w: \"args\" is empty", ErrMalformed)
	}
	return j.Args[0], nil
}

// printedAsJS reports, conservatively, that raw (a valid JSON document, e.g.
// one ParseJob accepted) is already exactly what JSON.stringify(JSON.parse(raw))
// prints, so reencodeJS(raw) would return raw unchanged: no whitespace
// between tokens, only the escapes JSON.stringify writes, valid UTF-8, and
// numbers that are plain safe integers. false means "re-encode to know";
// node-resque's own payloads always pass.
func printedAsJS(raw []byte) bool {
	if !utf8.Valid(raw) {
		return false
	}
	for i := 0; i < len(raw); {
		c := raw[i]
		switch {
		case c == '"':
			i++
			for i < len(raw) && raw[i] != '"' {
				b := raw[i]
				if b < 0x20 {
					return false
				}
				if b != '\\' {
					i++
					continue
				}
				if i+1 >= len(raw) {
					return false
				}
				switch raw[i+1] {
				case '"', '\\', 'b', 'f', 'n', 'r', 't':
					i += 2
				case 'u':
					// JSON.stringify writes \u00xx (lowercase hex) for the
					// control characters without a short escape only.
					if i+6 > len(raw) || string(raw[i+2:i+4]) != "00" || (raw[i+4] != '0' && raw[i+4] != '1') {
						return false
					}
					h := raw[i+5]
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f') {
						return false
					}
					switch string(raw[i+4 : i+6]) {
					case "08", "09", "0a", "0c", "0d":
						return false
					}
					i += 6
				default:
					return false
				}
			}
			i++ // closing quote
		case c == '-' || '0' <= c && c <= '9':
			start := i
			if c == '-' {
				i++
			}
			digits := i
			for i < len(raw) && '0' <= raw[i] && raw[i] <= '9' {
				i++
			}
			n := i - digits
			if n == 0 || n > 15 || (raw[digits] == '0' && (n > 1 || digits > start)) {
				return false // empty, beyond 2^53, leading zero, or -0
			}
			if i < len(raw) && (raw[i] == '.' || raw[i] == 'e' || raw[i] == 'E') {
				return false
			}
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			return false
		default:
			i++ // structural characters and the letters of true/false/null
		}
	}
	return true
}
