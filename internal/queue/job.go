package queue

import (
	"bytes"
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
	// rawArgs is the args array exactly as received.
	rawArgs json.RawMessage
}

// ErrMalformed marks a payload that is not a resque job at all.
var ErrMalformed = errors.New("malformed resque job")

// ParseJob decodes a resque job, tolerating extra top-level fields.
func ParseJob(raw []byte, takenFrom string) (*Job, error) {
	var env struct {
		Class   *string          `json:"class"`
		Queue   *string          `json:"queue"`
		Args    *json.RawMessage `json:"args"`
		Attempt int              `json:"attempt"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&env); err != nil {
		return nil, fmt.Errorf("%w: not a JSON object: %v", ErrMalformed, err)
	}
	if dec.More() {
		return nil, fmt.Errorf("%w: trailing data after the JSON object", ErrMalformed)
	}
	if env.Class == nil || *env.Class == "" {
		return nil, fmt.Errorf("%w: missing \"class\"", ErrMalformed)
	}
	if env.Attempt < 0 {
		return nil, fmt.Errorf("%w: negative \"attempt\"", ErrMalformed)
	}
	j := &Job{Class: *env.Class, Queue: takenFrom, Raw: raw, Attempt: env.Attempt}
	if env.Queue != nil && *env.Queue != "" {
		j.Queue = *env.Queue
	}
	if env.Args == nil {
		return nil, fmt.Errorf("%w: missing \"args\"", ErrMalformed)
	}
	if err := json.Unmarshal(*env.Args, &j.Args); err != nil {
		return nil, fmt.Errorf("%w: \"args\" is not an array", ErrMalformed)
	}
	j.rawArgs = *env.Args
	return j, nil
}

// withAttempt renders the job for its next attempt, in node-resque's key
// order with the attempt count appended. Other extra fields are dropped.
func (j *Job) withAttempt(attempt int) ([]byte, error) {
	args, err := reencodeJS(j.rawArgs)
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
