package queue_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/testbed/proc"
)

// startLive runs a consumer with tight liveness bounds and returns it.
func startLive(t *testing.T, f *fixture, h queue.Handler) *queue.Consumer {
	t.Helper()
	f.opts.JobTimeout, f.opts.WedgeMargin = time.Second, 300*time.Millisecond
	c, err := queue.NewConsumer(queue.Deps{Redis: f.rdb, Keys: f.keys, Log: zaptest.NewLogger(t)}, f.opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

// live asserts Live stays nil for d.
func stayLive(t *testing.T, c *queue.Consumer, d time.Duration, what string) {
	t.Helper()
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if err := c.Live(context.Background()); err != nil {
			t.Fatalf("%s: liveness failed: %v", what, err)
		}
	}
}

// A handler that never returns (it ignores its context) wedges its slot:
// liveness fails once the job has run past JobTimeout, naming the slot and
// the step, and recovers when the handler returns.
func TestConsumer_HandlerThatNeverReturnsFailsLiveness(t *testing.T) {
	f := newFixture(t, 2)
	release := make(chan struct{})
	c := startLive(t, f, queue.HandlerFunc(func(ctx context.Context, j *queue.Job) queue.Outcome {
		<-release // deaf to ctx: a wedge
		return queue.Done()
	}))
	stayLive(t, c, 500*time.Millisecond, "before any job")
	f.enqueue(t, "builds", job(1))
	var err error
	testbed.Eventually(t, 10*time.Second, "liveness fails on the wedged slot", func() bool {
		err = c.Live(context.Background())
		return err != nil
	})
	if msg := err.Error(); !strings.Contains(msg, "stuck in handling a job since") || !strings.Contains(msg, f.opts.WorkerName) {
		t.Fatalf("liveness error does not say which slot and step: %v", err)
	}
	close(release)
	testbed.Eventually(t, 5*time.Second, "live again once the handler returned", func() bool { return c.Live(context.Background()) == nil })
}

// An idle consumer sits in blocking takes, one after another: never a wedge.
func TestConsumer_IdleBlockingTakesAreLive(t *testing.T) {
	f := newFixture(t, 2)
	c := startLive(t, f, queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome { return queue.Done() }))
	stayLive(t, c, 3*f.opts.BlockTimeout+time.Second, "idle")
}

// Redis down answers every call with an error within its timeout: the
// slots back off and retry, the heartbeat fails and retries. That is a
// dependency outage for readiness, not a wedge: liveness holds.
func TestConsumer_RedisDownIsNotAWedge(t *testing.T) {
	r, err := proc.StartRedis(proc.RedisOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	f := newFixture(t, 2)
	f.rdb = r.Client
	f.opts.HeartbeatInterval, f.opts.LeaseDuration = 300*time.Millisecond, 3*time.Second
	c := startLive(t, f, queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome { return queue.Done() }))
	stayLive(t, c, time.Second, "Redis up")
	r.Kill()
	stayLive(t, c, 3*(f.opts.BlockTimeout+f.opts.OperationTimeout), "Redis down")
}
