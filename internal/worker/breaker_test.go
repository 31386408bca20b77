package worker_test

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sdkata/queue-worker/internal/breaker"
	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/weightage"
	"github.com/sdkata/queue-worker/internal/worker"
)

// downExecutor is a Kubernetes side whose breaker is open.
type downExecutor struct{ calls int }

func (e *downExecutor) Start(context.Context, *build.Config, weightage.Decision) (*executor.StartResult, error) {
	e.calls++
	return nil, fmt.Errorf("creating pod: %w", breaker.ErrOpen)
}
func (e *downExecutor) Stop(context.Context, int64) error {
	return fmt.Errorf("deleting pods: %w", breaker.ErrOpen)
}

// With the Kubernetes breaker open, a start waits in the delayed schedule:
// no attempt is spent and nothing reaches the failed list.
func TestWorker_OpenBreakerDelaysNotFails(t *testing.T) {
	rdb, ns, prefix := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	rules, _ := weightage.NewRules(weightage.RulesSpec{Default: weightage.Hyperd})
	exec := &downExecutor{}
	w := worker.New(exec, queue.NewBuildConfigs(rdb, prefix, 2*time.Second), weightage.NewHolder(rules),
		queue.NewStopMarks(rdb, keys, time.Hour, 2*time.Second), zaptest.NewLogger(t), nil)
	c, err := queue.NewConsumer(rdb, keys, queue.Options{
		Queues: []string{"builds"}, Concurrency: 1, WorkerName: "brk:" + testbed.Suffix(),
		BlockTimeout: time.Second, OperationTimeout: 2 * time.Second, SchedulerInterval: -1,
		Retry: queue.RetryPolicy{MaxRetries: 0, Delay: time.Second},
	}, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, w) }()
	defer func() { cancel(); <-done }()
	job := `{"class":"start","queue":"builds","args":[{"buildId":5,"container":"node:18","apiUri":"https://a","token":"t"}]}`
	rdb.RPush(context.Background(), keys.Queue("builds"), job)
	testbed.Eventually(t, 10*time.Second, "start delayed", func() bool { return rdb.ZCard(context.Background(), keys.DelayedSchedule()).Val() == 1 })
	if n := rdb.LLen(context.Background(), keys.Failed()).Val(); n != 0 {
		t.Fatalf("%d failed entries with MaxRetries 0: an open breaker must not fail the job", n)
	}
	ts := rdb.ZRange(context.Background(), keys.DelayedSchedule(), 0, -1).Val()[0]
	tsn, _ := strconv.ParseInt(ts, 10, 64)
	delayed := rdb.LRange(context.Background(), keys.Delayed(tsn), 0, -1).Val()
	if len(delayed) != 1 {
		t.Fatalf("delayed list %v", delayed)
	}
	j, err := queue.ParseJob([]byte(delayed[0]), "builds")
	if err != nil || j.Attempt != 0 {
		t.Fatalf("delayed job %s (attempt must stay 0): %v", delayed[0], err)
	}
}
