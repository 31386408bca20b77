package queue

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/sdkata/queue-worker/internal/testbed"
)

func runInternal(t *testing.T, c *Consumer, h Handler) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func newInternalConsumer(t *testing.T, concurrency int) (*Consumer, Keys) {
	rdb, ns, _ := testbed.Redis(t)
	keys := NewKeys(ns)
	c, err := NewConsumer(Deps{Redis: rdb, Keys: keys, Log: zaptest.NewLogger(t)}, Options{
		Queues: []string{"builds"}, Concurrency: concurrency, WorkerName: "prefetch:" + testbed.Suffix(),
		BlockTimeout: time.Second, OperationTimeout: 2 * time.Second, DrainTimeout: 5 * time.Second,
		Retry: RetryPolicy{MaxRetries: 1, Delay: time.Hour},
	})
	if err != nil {
		t.Fatal(err)
	}
	return c, keys
}

// A deep queue is worked one job at a time per slot, mostly without a
// separate take: each settle (ack, retry, failed list) takes the next job
// into the slot's in-flight list and worker record in the same script.
func TestPrefetch_DeepQueueOneJobPerSlotAndRecordKept(t *testing.T) {
	c, keys := newInternalConsumer(t, 1)
	ctx := context.Background()
	const jobs = 60
	for i := range jobs {
		c.rdb.RPush(ctx, keys.Queue("builds"), `{"class":"start","queue":"builds","args":[{"buildId":`+strconv.Itoa(i)+`}]}`)
	}
	s := c.slots[0]
	var mu sync.Mutex
	var prefetched, handled int
	var problems []string
	runInternal(t, c, HandlerFunc(func(ctx context.Context, job *Job) Outcome {
		raw := string(job.Raw)
		inflight := c.rdb.LRange(ctx, s.inflight, 0, -1).Val()
		var rec struct {
			Payload json.RawMessage `json:"payload"`
			Worker  string          `json:"worker"`
			Queue   string          `json:"queue"`
			RunAt   string          `json:"run_at"`
		}
		recErr := json.Unmarshal([]byte(c.rdb.Get(ctx, s.record).Val()), &rec)
		mu.Lock()
		if len(inflight) != 1 || inflight[0] != raw {
			problems = append(problems, "in-flight list "+strconv.Quote(raw)+" = "+strconv.Quote(inflight[0]))
		}
		if recErr != nil || string(rec.Payload) != raw || rec.Worker != s.name || rec.Queue != "builds" || rec.RunAt == "" {
			problems = append(problems, "worker record for "+raw)
		}
		if job.prefetched {
			prefetched++
		}
		handled++
		n := handled
		mu.Unlock()
		// Every settle kind that may take next: ack, retry (delayed), fail.
		switch n % 3 {
		case 0:
			return Done()
		case 1:
			return Retry(errors.New("x"))
		default:
			return Fail("Error", errors.New("y"))
		}
	}))
	testbed.Eventually(t, 10*time.Second, "every job handled", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return handled == jobs
	})
	mu.Lock()
	defer mu.Unlock()
	for _, p := range problems {
		t.Error(p)
	}
	// Only the first job needs a BLMOVE.
	if prefetched != jobs-1 {
		t.Fatalf("%d of %d jobs were taken by the previous settle, want %d", prefetched, jobs, jobs-1)
	}
	if n := c.rdb.LLen(ctx, s.inflight).Val(); n != 0 {
		t.Fatalf("%d jobs left in flight", n)
	}
	if got := c.rdb.LLen(ctx, keys.Failed()).Val(); got != jobs/3 {
		t.Fatalf("failed list holds %d, want %d", got, jobs/3)
	}
}
