package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
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
	// Args (a follow-up job built from a Go value).
	rawArgsOverride json.RawMessage
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
