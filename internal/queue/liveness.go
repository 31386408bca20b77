package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
)

// A slot or loop is wedged when it stays in one step longer than that step
// can take: every step of the consumer is bounded by a configured timeout
// (a blocking take by BlockTimeout, a Redis call by OperationTimeout, a
// settle by half a lease, a job by JobTimeout), so overstaying the bound by
// a margin means something hangs that no timeout covers — a call without a
// deadline, a deadlock, a handler ignoring its context. Liveness reports it
// so the kubelet restarts the process and the slot's job is recovered
// elsewhere. A dependency that answers with errors (Redis down) is not a
// wedge: every failed call returns within its timeout; readiness covers it.

// step is what a slot or loop is doing, for the liveness message.
type step int32

const (
	stepIdle   step = iota // not running (before Run, after it returned)
	stepLoop               // between takes: leftovers, lease, backoff
	stepTake               // blocked in a take
	stepJob                // handling a job
	stepSettle             // writing the outcome
)

func (s step) String() string {
	return [...]string{"idle", "between jobs", "a blocking take", "handling a job", "settling a job"}[s]
}

// watch records the step a goroutine is in, since when, and how long that
// step may take.
type watch struct {
	step  atomic.Int32
	since atomic.Int64 // unix nanoseconds
	limit atomic.Int64 // nanoseconds
}

func (w *watch) enter(s step, now time.Time, limit time.Duration) {
	w.since.Store(now.UnixNano())
	w.limit.Store(int64(limit))
	w.step.Store(int32(s))
}

// overdue says how far past its bound the current step is (≤ 0: in time).
func (w *watch) overdue(now time.Time) (step, time.Time, time.Duration, time.Duration) {
	s := step(w.step.Load())
	since := time.Unix(0, w.since.Load())
	limit := time.Duration(w.limit.Load())
	if s == stepIdle {
		return s, since, limit, 0
	}
	return s, since, limit, now.Sub(since) - limit
}

// bounds are the longest each step may take, from the options.
func (o *Options) stepLimit(s step) time.Duration {
	switch s {
	case stepLoop:
		// A leftover sweep or a lease renewal, and a backoff of at most 5s.
		return 2*o.OperationTimeout + 5*time.Second
	case stepTake:
		// go-redis gives a blocking command its block time plus 10s to answer.
		return o.BlockTimeout + 10*time.Second + o.OperationTimeout
	case stepJob:
		return o.JobTimeout
	case stepSettle:
		// withRetry retries for half a lease, each try bounded.
		return o.LeaseDuration/2 + o.OperationTimeout
	}
	return 0
}

func (c *Consumer) enter(w *watch, s step) {
	w.enter(s, c.now(), c.opts.stepLimit(s)+c.opts.WedgeMargin)
}

// Live is the consumer's liveness check: an error naming every slot or
// background loop that has overstayed its current step, with since when
// and its bound.
func (c *Consumer) Live(context.Context) error {
	now := c.now()
	var wedged []string
	check := func(who string, w *watch) {
		if s, since, limit, over := w.overdue(now); over > 0 {
			wedged = append(wedged, fmt.Sprintf("%s stuck in %s since %s (%s, bound %s)",
				who, s, since.UTC().Format(time.RFC3339), now.Sub(since).Round(time.Second), limit))
		}
	}
	for _, s := range c.slots {
		check("slot "+s.name, &s.watch)
	}
	check("the heartbeat", &c.beatWatch)
	if len(wedged) > 0 {
		return errors.New(strings.Join(wedged, "; "))
	}
	return nil
}
