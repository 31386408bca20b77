package queue

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// Job is one resque job: {"class":..,"queue":..,"args":[..]}.
type Job struct {
	Class string
	// Queue is the job's own queue field (node-resque adds it; Ruby resque
	// does not), falling back to the queue it was taken from.
	Queue string
	Args  []json.RawMessage
	// Raw is the exact bytes taken from Redis; settling a job removes exactly
	// these bytes from the in-flight list.
	Raw []byte
}

// ErrMalformed marks a payload that is not a resque job at all.
var ErrMalformed = errors.New("malformed resque job")

// ParseJob decodes a resque job, tolerating extra top-level fields.
func ParseJob(raw []byte, takenFrom string) (*Job, error) {
	var env struct {
		Class *string          `json:"class"`
		Queue *string          `json:"queue"`
		Args  *json.RawMessage `json:"args"`
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
	j := &Job{Class: *env.Class, Queue: takenFrom, Raw: raw}
	if env.Queue != nil && *env.Queue != "" {
		j.Queue = *env.Queue
	}
	if env.Args == nil {
		return nil, fmt.Errorf("%w: missing \"args\"", ErrMalformed)
	}
	if err := json.Unmarshal(*env.Args, &j.Args); err != nil {
		return nil, fmt.Errorf("%w: \"args\" is not an array", ErrMalformed)
	}
	return j, nil
}

// Payload returns args[0], where node-resque puts the job's object.
func (j *Job) Payload() (json.RawMessage, error) {
	if len(j.Args) == 0 {
		return nil, fmt.Errorf("%w: \"args\" is empty", ErrMalformed)
	}
	return j.Args[0], nil
}
