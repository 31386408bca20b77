package queue_test

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// oldestAge scrapes queue_worker_queue_oldest_job_age_seconds{queue="builds"}.
func oldestAge(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "queue_worker_queue_oldest_job_age_seconds" {
			for _, m := range mf.GetMetric() {
				return m.GetGauge().GetValue()
			}
		}
	}
	t.Fatal("no queue_worker_queue_oldest_job_age_seconds in the scrape")
	return 0
}

// The age of the job at the head of a queue grows while it waits, starts
// again when the head moves, and is 0 for an empty queue.
func TestDepthCollector_OldestJobAgeFollowsTheHead(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(queue.NewDepthCollector(rdb, keys, []string{"builds"}, time.Second))
	ctx := context.Background()
	if got := oldestAge(t, reg); got != 0 {
		t.Fatalf("empty queue: age %v", got)
	}
	rdb.RPush(ctx, keys.Queue("builds"), job(1), job(2))
	oldestAge(t, reg) // first sighting of job 1 at the head
	time.Sleep(1100 * time.Millisecond)
	if got := oldestAge(t, reg); got < 1 {
		t.Fatalf("job 1 waited over a second at the head, age %v", got)
	}
	rdb.LPop(ctx, keys.Queue("builds")) // taken: job 2 is the head now
	if got := oldestAge(t, reg); got >= 1 {
		t.Fatalf("a new head kept the old head's age: %v", got)
	}
	rdb.Del(ctx, keys.Queue("builds"))
	if got := oldestAge(t, reg); got != 0 {
		t.Fatalf("emptied queue: age %v", got)
	}
}
