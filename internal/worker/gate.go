package worker

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// InFlightCounter counts a runtime's build pods in flight (not finished),
// for the per-runtime budgets.
type InFlightCounter interface {
	InFlight(ctx context.Context, rt weightage.Runtime) (int, error)
}

// SetInFlightCounter enables the budgets of the routing rules; without a
// counter they are not enforced. Call it before the worker handles jobs.
func (w *Worker) SetInFlightCounter(c InFlightCounter) { w.inflight = c }

// holdDelay is how long a start that cannot run now (its runtime paused or
// over budget) waits in the queue's schedule before it is tried again.
// Short enough that unpausing takes effect within seconds, long enough not
// to spin on Redis.
var holdDelay = 10 * time.Second

// delayError is a start that must wait: nothing about the job is wrong, so
// it neither counts an attempt nor reaches the failed list.
type delayError struct {
	runtime weightage.Runtime
	reason  string // metric label: paused | budget
	msg     string
}

func (e *delayError) Error() string { return e.msg }

// admit lets a routed start through, or returns a *delayError when its
// runtime is paused with nowhere else to go, or at its budget of pods in
// flight. The budget is soft: slots and replicas that check at the same
// moment can each start one pod past it.
func (w *Worker) admit(ctx context.Context, rules *weightage.Rules, d weightage.Decision) error {
	if d.Held {
		return &delayError{runtime: d.Runtime, reason: "paused",
			msg: fmt.Sprintf("%s is paused and the build can only run there (rule %s)", d.Runtime, d.Rule)}
	}
	limit := rules.Budget(d.Runtime)
	if limit == 0 || w.inflight == nil {
		return nil
	}
	n, err := w.inflight.InFlight(ctx, d.Runtime)
	if err != nil {
		return fmt.Errorf("counting %s pods in flight for its budget: %w", d.Runtime, err)
	}
	if n >= limit {
		return &delayError{runtime: d.Runtime, reason: "budget",
			msg: fmt.Sprintf("%s has %d pods in flight, at its budget of %d", d.Runtime, n, limit)}
	}
	return nil
}

// delay puts a held start back on the queue's schedule.
func (w *Worker) delay(ctx context.Context, d *queue.Delivery, de *delayError, class string, log *zap.Logger) {
	w.metrics.Delayed.WithLabelValues(string(de.runtime), de.reason).Inc()
	if err := d.RetryLater(ctx, holdDelay); err != nil {
		log.Error("delaying a held start failed; it stays in flight for recovery", zap.String("reason", de.msg), zap.Error(err))
		return
	}
	log.Info("start delayed", zap.String("reason", de.msg), zap.Duration("retry_in", holdDelay))
	w.metrics.Jobs.WithLabelValues(class, "delayed").Inc()
}
