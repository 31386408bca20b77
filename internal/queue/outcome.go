package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Outcome is what a Handler says about a job; the consumer settles it. The
// handler never touches Redis for that: settling, counting attempts and the
// dead-letter step are the queue's (as in asynq, where a handler returns an
// error and the processor decides).
type Outcome struct {
	kind      outcomeKind
	err       error
	exception string
	delay     time.Duration
	reason    string
	// report is enqueued in the same script that writes the job to the
	// failed list, if it ends there (see Outcome.ReportDeadLetter).
	report *NewJob
}

type outcomeKind int

const (
	// kindNone is the zero Outcome: a handler bug, settled as a retry so the
	// job is neither lost nor acked by accident.
	kindNone outcomeKind = iota
	kindDone
	kindRetry
	kindPostpone
	kindFail
	kindRequeue
)

// Done: the job is finished; it is acked.
func Done() Outcome { return Outcome{kind: kindDone} }

// Retry: this attempt failed and another may succeed. The job goes through
// the delayed schedule with exponential backoff; after the last retry it is
// written to the failed list.
func Retry(err error) Outcome { return Outcome{kind: kindRetry, err: err, exception: "Error"} }

// Postpone: nothing is wrong with the job but it cannot run now (a paused
// runtime, a budget, an unavailable dependency). It comes back after delay
// without spending an attempt. reason is a bounded metric label.
func Postpone(delay time.Duration, reason string) Outcome {
	return Outcome{kind: kindPostpone, delay: delay, reason: reason}
}

// Fail: no retry can help; the job goes to the failed list at once, with
// exception as the entry's exception name and err as its error.
func Fail(exception string, err error) Outcome {
	return Outcome{kind: kindFail, err: err, exception: exception}
}

// Requeue: give the job back to the head of its queue unchanged (it was
// interrupted, not failed).
func Requeue() Outcome { return Outcome{kind: kindRequeue} }

// ReportDeadLetter attaches a job to enqueue, atomically with the failed
// entry, if this outcome ends the job in the failed list (a Fail, or a Retry
// after the last attempt). The report then survives a crash, a lost reply
// and an unavailable receiver, because it is an ordinary job.
func (o Outcome) ReportDeadLetter(j NewJob) Outcome {
	o.report = &j
	return o
}

// Err is the failure an outcome carries (nil for Done, Postpone, Requeue).
func (o Outcome) Err() error { return o.err }

// String names the outcome, for logs and tests.
func (o Outcome) String() string {
	switch o.kind {
	case kindDone:
		return "done"
	case kindRetry:
		return fmt.Sprintf("retry(%v)", o.err)
	case kindPostpone:
		return fmt.Sprintf("postpone(%s, %s)", o.delay, o.reason)
	case kindFail:
		return fmt.Sprintf("fail(%s: %v)", o.exception, o.err)
	case kindRequeue:
		return "requeue"
	}
	return "none"
}

// NewJob is a job a settle enqueues: args are JSON-encoded in node-resque's
// form; the queue is the settled job's own.
type NewJob struct {
	Class string
	Args  []any
}

// Settle operations and the outcome labels of queue_worker_jobs_total.
const (
	opAck     = "ack"
	opFail    = "fail"
	opDelay   = "delay"
	opRequeue = "requeue"

	OutcomeSucceeded = "succeeded"
	OutcomeRetried   = "retried"
	OutcomeDelayed   = "delayed"
	OutcomeFailed    = "failed"
	OutcomeRequeued  = "requeued"
)

// settlement is how an outcome is written: the pure part of settling.
type settlement struct {
	op        string
	label     string // jobs_total outcome
	exception string
	reason    error
	delay     time.Duration
	attempt   int // the attempt count the rescheduled job carries
	report    *NewJob
}

var errNoOutcome = errors.New("handler returned no outcome")

// plan turns an outcome into a settlement. attempt is the number of failed
// attempts the job already had; stopping says the job's context ended (the
// drain timeout passed), so a failure is most likely the interruption
// itself and the job goes back unchanged.
func plan(o Outcome, attempt int, p RetryPolicy, stopping bool) settlement {
	if o.kind == kindNone {
		o = Retry(errNoOutcome)
	}
	if stopping && (o.kind == kindRetry || o.kind == kindPostpone) {
		return settlement{op: opRequeue, label: OutcomeRequeued}
	}
	switch o.kind {
	case kindDone:
		return settlement{op: opAck, label: OutcomeSucceeded}
	case kindFail:
		return settlement{op: opFail, label: OutcomeFailed, exception: o.exception, reason: o.err, report: o.report}
	case kindPostpone:
		return settlement{op: opDelay, label: OutcomeDelayed, delay: o.delay, attempt: attempt, reason: errors.New(o.reason)}
	case kindRequeue:
		return settlement{op: opRequeue, label: OutcomeRequeued}
	}
	next := attempt + 1
	if next > p.MaxRetries {
		return settlement{op: opFail, label: OutcomeFailed, exception: o.exception, report: o.report,
			reason: fmt.Errorf("%w (gave up after %d attempts)", o.err, next)}
	}
	return settlement{op: opDelay, label: OutcomeRetried, delay: p.backoff(next), attempt: next, reason: o.err}
}

// encode renders a NewJob for queue q in node-resque's JSON form.
func (j NewJob) encode(q string) ([]byte, error) {
	args, err := json.Marshal(j.Args)
	if err != nil {
		return nil, fmt.Errorf("encoding the args of a %s job: %w", j.Class, err)
	}
	return (&Job{Class: j.Class, Queue: q, rawArgsOverride: args}).withAttempt(0)
}
