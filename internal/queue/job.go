package queue

import (
	"bytes"
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
	// Args are the job's arguments, without the attempt marker (see Attempt).
	Args []json.RawMessage
	// Attempt counts the attempts that already failed (0 on first delivery).
	// It travels inside args, as a trailing {"queueWorkerAttempt":N}
	// element, because node-resque's scheduler re-enqueues a delayed job as
	// enqueue(queue, class, args): anything outside class, queue and args is
	// dropped on the way. A top-level "attempt" field (what earlier versions
	// wrote) is still read.
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

// attemptKey names the attempt marker, the last element of args when a job
// is on its second or later attempt: {"queueWorkerAttempt":2}.
const attemptKey = "queueWorkerAttempt"

var attemptPrefix = []byte(`{"` + attemptKey + `":`)

// ErrMalformed marks a payload that is not a resque job at all.
var ErrMalformed = errors.New("malformed resque job")

// ParseJob decodes a resque job, tolerating extra top-level fields. The
// envelope, args included, is decoded in one pass. (encoding/json refuses
// nesting beyond 10000 levels without recursing that deep; the consumer
// holds jobs to Limits before they get here.)
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
	if n := len(env.Args); n > 0 {
		if a, ok, err := parseAttemptArg(env.Args[n-1]); err != nil {
			return nil, err
		} else if ok {
			j.Args = env.Args[: n-1 : n-1]
			j.Attempt = max(j.Attempt, a)
		}
	}
	if env.Queue != nil && *env.Queue != "" {
		j.Queue = *env.Queue
	}
	return j, nil
}

// parseAttemptArg reads an attempt marker ({"queueWorkerAttempt":N} and
// nothing else); ok is false for any other argument.
func parseAttemptArg(a json.RawMessage) (attempt int, ok bool, err error) {
	if !bytes.HasPrefix(bytes.TrimLeft(a, " \t\r\n"), attemptPrefix) {
		return 0, false, nil
	}
	var m map[string]json.RawMessage
	if json.Unmarshal(a, &m) != nil || len(m) != 1 {
		return 0, false, nil
	}
	n, perr := strconv.Atoi(string(m[attemptKey]))
	if perr != nil || n < 0 {
		return 0, false, fmt.Errorf("%w: bad %q marker %s", ErrMalformed, attemptKey, m[attemptKey])
	}
	return n, true, nil
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

// ErrUnencodable marks a job that cannot be written back in the form
// node-resque would print (a number beyond JavaScript's range, say): it
// cannot be retried or postponed, only dead-lettered.
var ErrUnencodable = errors.New("job cannot be re-encoded as node-resque would print it")

// withAttempt renders the job for its next attempt exactly as node-resque's
// encode(queue, class, args) would print it, with the attempt marker as the
// last element of args when attempt > 0. So node-resque's scheduler, which
// re-enqueues a delayed job from its parsed class, queue and args, writes
// the same bytes back, marker included. Extra top-level fields are dropped.
func (j *Job) withAttempt(attempt int) ([]byte, error) {
	args, err := reencodeJS(j.rawArgs())
	if err != nil {
		return nil, fmt.Errorf("%w: re-encoding args: %v", ErrUnencodable, err)
	}
	out := make([]byte, 0, len(args)+len(j.Class)+len(j.Queue)+64)
	out = append(out, `{"class":`...)
	out = appendJSString(out, j.Class)
	out = append(out, `,"queue":`...)
	out = appendJSString(out, j.Queue)
	out = append(out, `,"args":`...)
	if attempt > 0 {
		// args is "[...]" in JS form: insert the marker before its "]".
		out = append(out, args[:len(args)-1]...)
		if len(args) > 2 {
			out = append(out, ',')
		}
		out = append(out, attemptPrefix...)
		out = strconv.AppendInt(out, int64(attempt), 10)
		out = append(out, "}]"...)
	} else {
		out = append(out, args...)
	}
	return append(out, '}'), nil
}

// failedPayload is the payload a failed entry carries for raw: the job
// without its attempt marker, so a job retried from the failed list
// (node-resque's retryAndRemoveFailed enqueues the payload's class and args)
// starts again from its first attempt. raw is returned as it is when it
// carries no marker or cannot be re-rendered.
func failedPayload(raw []byte, l Limits) []byte {
	if l.check(string(raw)) != nil || !bytes.Contains(raw, attemptPrefix) {
		return raw
	}
	j, err := ParseJob(raw, "")
	if err != nil || j.Attempt == 0 {
		return raw
	}
	p, err := j.withAttempt(0)
	if err != nil {
		return raw
	}
	return p
}

// Limits are what a job may be at the door: checked right after the take,
// before anything decodes or re-encodes it.
type Limits struct {
	// MaxJobBytes bounds a job's length.
	MaxJobBytes int
	// MaxJobDepth bounds how deep arrays and objects nest, the envelope
	// included ({"args":[{}]} is 3 deep).
	MaxJobDepth int
}

// DefaultLimits are 1 MiB and 64 levels: a Screwdriver start or stop job is
// a few hundred bytes and 3 deep; an inline buildConfig a few KiB.
var DefaultLimits = Limits{MaxJobBytes: 1 << 20, MaxJobDepth: 64}

func (l Limits) withDefaults() Limits {
	if l.MaxJobBytes <= 0 {
		l.MaxJobBytes = DefaultLimits.MaxJobBytes
	}
	if l.MaxJobDepth <= 0 {
		l.MaxJobDepth = DefaultLimits.MaxJobDepth
	}
	return l
}

// Rejection names why a job failed the limits: the failed entry's
// exception, a metric label, and the reason written in place of the payload.
type Rejection struct {
	Exception string // JobTooLarge, JobTooDeep
	Label     string // too_large, too_deep
	Reason    string
}

// check returns nil if raw is within the limits. It costs one length check
// and one allocation-free byte scan.
func (l Limits) check(raw string) *Rejection {
	if len(raw) > l.MaxJobBytes {
		return &Rejection{Exception: "JobTooLarge", Label: "too_large",
			Reason: fmt.Sprintf("job of %d bytes exceeds the limit of %d bytes (queue.maxJobBytes); payload omitted from this entry", len(raw), l.MaxJobBytes)}
	}
	if nestingExceeds(raw, l.MaxJobDepth) {
		return &Rejection{Exception: "JobTooDeep", Label: "too_deep",
			Reason: fmt.Sprintf("job of %d bytes nests arrays/objects deeper than %d levels (queue.maxJobDepth); payload omitted from this entry", len(raw), l.MaxJobDepth)}
	}
	return nil
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
