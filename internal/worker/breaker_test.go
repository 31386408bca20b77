package worker_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"github.com/sdkata/queue-worker/internal/breaker"
	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/testbed/stack"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// downExecutor is a Kubernetes side whose breaker is open.
type downExecutor struct{}

func (downExecutor) StartWith(context.Context, *build.Config, weightage.Decision, int, func(context.Context) error) (*executor.StartResult, error) {
	return nil, fmt.Errorf("creating pod: %w", breaker.ErrOpen)
}
func (downExecutor) Stop(context.Context, int64) error {
	return fmt.Errorf("deleting pods: %w", breaker.ErrOpen)
}

// With the Kubernetes breaker open, a start waits in the delayed schedule:
// no attempt is spent and nothing reaches the failed list.
func TestWorker_OpenBreakerDelaysNotFails(t *testing.T) {
	b := stack.Start(t, stack.Options{Executor: downExecutor{}})
	b.Push(t, `{"class":"start","queue":"`+b.Prefix+`builds","args":[{"buildId":5,"container":"node:18","apiUri":"https://a","token":"t"}]}`)
	ctx := context.Background()
	testbed.Eventually(t, 10*time.Second, "start delayed", func() bool { return b.Redis.ZCard(ctx, b.Keys.DelayedSchedule()).Val() == 1 })
	if n := len(b.FailedEntries(t)); n != 0 {
		t.Fatalf("%d failed entries: an open breaker must not fail the job", n)
	}
	ts := b.Redis.ZRange(ctx, b.Keys.DelayedSchedule(), 0, -1).Val()[0]
	tsn, _ := strconv.ParseInt(ts, 10, 64)
	delayed := b.Redis.LRange(ctx, b.Keys.Delayed(tsn), 0, -1).Val()
	if len(delayed) != 1 {
		t.Fatalf("delayed list %v", delayed)
	}
	j, err := queue.ParseJob([]byte(delayed[0]), "builds")
	if err != nil || j.Attempt != 0 {
		t.Fatalf("delayed job %s (attempt must stay 0): %v", delayed[0], err)
	}
}
