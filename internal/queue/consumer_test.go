package queue_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"

	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
)

type fixture struct {
	rdb  *redis.Client
	keys queue.Keys
	opts queue.Options
}

func newFixture(t *testing.T, concurrency int) *fixture {
	rdb, ns, _ := testbed.Redis(t)
	return &fixture{rdb: rdb, keys: queue.NewKeys(ns), opts: queue.Options{
		Queues:           []string{"builds"},
		Concurrency:      concurrency,
		WorkerName:       "testhost:" + testbed.Suffix(),
		BlockTimeout:     time.Second, // BLMOVE takes whole seconds
		OperationTimeout: 2 * time.Second,
		DrainTimeout:     5 * time.Second,
	}}
}

// enqueue writes a job the way node-resque does (MULTI SADD + RPUSH).
func (f *fixture) enqueue(t *testing.T, q, job string) {
	t.Helper()
	ctx := context.Background()
	if _, err := f.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, f.keys.Queues(), q)
		p.RPush(ctx, f.keys.Queue(q), job)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// run starts a consumer and returns a stop function that waits for it.
func (f *fixture) run(t *testing.T, h queue.Handler) (stop func()) {
	t.Helper()
	c, err := queue.NewConsumer(f.rdb, f.keys, f.opts, zaptest.NewLogger(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
}

func (f *fixture) inFlight(t *testing.T) int64 {
	t.Helper()
	var total int64
	for i := range f.opts.Concurrency {
		n, err := f.rdb.LLen(context.Background(), f.keys.InFlight(f.opts.WorkerName+"-"+strconv.Itoa(i))).Result()
		if err != nil {
			t.Fatal(err)
		}
		total += n
	}
	return total
}

func TestConsumer_AckedJobLeavesNoTrace(t *testing.T) {
	f := newFixture(t, 2)
	job := `{"class":"start","queue":"builds","args":[{"buildId":1,"jobId":1}]}`
	f.enqueue(t, "builds", job)
	got := make(chan *queue.Job, 1)
	stop := f.run(t, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) {
		if err := d.Ack(ctx); err != nil {
			t.Error(err)
		}
		got <- d.Job
	}))
	defer stop()
	select {
	case j := <-got:
		if j.Class != "start" || string(j.Raw) != job {
			t.Fatalf("handed %q / %s", j.Class, j.Raw)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("job not delivered")
	}
	ctx := context.Background()
	testbed.Eventually(t, 2*time.Second, "processed stat", func() bool {
		return f.rdb.Get(ctx, f.keys.StatProcessed()).Val() == "1"
	})
	if n := f.inFlight(t); n != 0 {
		t.Fatalf("%d jobs still in flight after ack", n)
	}
	if n := f.rdb.LLen(ctx, f.keys.Queue("builds")).Val(); n != 0 {
		t.Fatalf("queue still holds %d jobs", n)
	}
}

func TestConsumer_MalformedJobGoesToFailedListWithReason(t *testing.T) {
	tests := []struct{ name, raw, reason string }{
		{"NotJSON", `{"class":"start",`, "not a JSON object"},
		{"NoClass", `{"queue":"builds","args":[]}`, `missing \"class\"`},
		{"ArgsNotArray", `{"class":"start","queue":"builds","args":"x"}`, `\"args\" is not an array`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 1)
			f.enqueue(t, "builds", tt.raw)
			var handled atomic.Int32
			stop := f.run(t, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) {
				handled.Add(1)
				_ = d.Ack(ctx)
			}))
			ctx := context.Background()
			testbed.Eventually(t, 5*time.Second, "failed entry", func() bool { return f.rdb.LLen(ctx, f.keys.Failed()).Val() == 1 })
			stop()
			if handled.Load() != 0 {
				t.Fatal("a malformed job reached the handler")
			}
			entry := f.rdb.LIndex(ctx, f.keys.Failed(), 0).Val()
			var e map[string]any
			if err := json.Unmarshal([]byte(entry), &e); err != nil {
				t.Fatalf("failed entry is not JSON: %v: %s", err, entry)
			}
			if e["exception"] != "MalformedJob" || e["queue"] != "builds" || e["worker"] != f.opts.WorkerName+"-0" {
				t.Fatalf("entry fields: %s", entry)
			}
			if !strings.Contains(entry, tt.reason) {
				t.Fatalf("entry %s does not give the reason %q", entry, tt.reason)
			}
			if f.rdb.Get(ctx, f.keys.StatFailed()).Val() != "1" {
				t.Fatal("stat:failed not incremented")
			}
			if n := f.inFlight(t); n != 0 {
				t.Fatalf("%d in flight", n)
			}
		})
	}
}

func TestConsumer_FailWritesNodeResqueEntry(t *testing.T) {
	f := newFixture(t, 1)
	job := `{"class":"start","queue":"builds","args":[{"buildId":7}]}`
	f.enqueue(t, "builds", job)
	stop := f.run(t, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) {
		_ = d.Fail(ctx, "InvalidPayload", errors.New("container (the build image) is required"))
	}))
	ctx := context.Background()
	testbed.Eventually(t, 5*time.Second, "failed entry", func() bool { return f.rdb.LLen(ctx, f.keys.Failed()).Val() == 1 })
	stop()
	entry := f.rdb.LIndex(ctx, f.keys.Failed(), 0).Val()
	prefix := `{"worker":"` + f.opts.WorkerName + `-0","queue":"builds","payload":` + job + `,"exception":"InvalidPayload","error":"container (the build image) is required","backtrace":null,"failed_at":"`
	if !strings.HasPrefix(entry, prefix) || !strings.HasSuffix(entry, `(Coordinated Universal Time)"}`) {
		t.Fatalf("entry\n%s\nwant prefix\n%s", entry, prefix)
	}
}

func TestConsumer_UnsettledJobReturnsToQueueHead(t *testing.T) {
	f := newFixture(t, 1)
	f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":1}]}`)
	f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":2}]}`)
	var seen []string
	var mu sync.Mutex
	stop := f.run(t, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, string(d.Job.Args[0]))
		if len(seen) > 1 {
			_ = d.Ack(ctx)
		}
		// first delivery: left unsettled on purpose
	}))
	testbed.Eventually(t, 5*time.Second, "both jobs acked", func() bool {
		return f.rdb.Get(context.Background(), f.keys.StatProcessed()).Val() == "2"
	})
	stop()
	if seen[0] != `{"buildId":1}` || seen[1] != `{"buildId":1}` {
		t.Fatalf("the unsettled job must come back first, saw %v", seen)
	}
}

func TestConsumer_LeftoverInFlightJobIsRequeuedOnStart(t *testing.T) {
	f := newFixture(t, 1)
	ctx := context.Background()
	left := `{"class":"stop","queue":"builds","args":[{"buildId":9}]}`
	// A previous process with our name died holding a job.
	f.rdb.RPush(ctx, f.keys.InFlight(f.opts.WorkerName+"-0"), left)
	got := make(chan string, 1)
	stop := f.run(t, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) {
		_ = d.Ack(ctx)
		got <- string(d.Job.Raw)
	}))
	defer stop()
	select {
	case raw := <-got:
		if raw != left {
			t.Fatalf("got %s", raw)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("leftover job was not worked")
	}
}

// On stop, a job in progress finishes and is acked; nothing new is taken.
func TestConsumer_StopDrainsInFlightJobs(t *testing.T) {
	f := newFixture(t, 1)
	f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":1}]}`)
	f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":2}]}`)
	started := make(chan struct{})
	release := make(chan struct{})
	var acked atomic.Int32
	stop := f.run(t, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) {
		close(started)
		<-release
		if ctx.Err() != nil {
			t.Error("job context cancelled during the drain period")
		}
		if err := d.Ack(ctx); err == nil {
			acked.Add(1)
		}
	}))
	<-started
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	time.Sleep(300 * time.Millisecond) // stop is waiting on the job
	close(release)
	<-stopped
	ctx := context.Background()
	if acked.Load() != 1 {
		t.Fatalf("acked %d, want 1", acked.Load())
	}
	if n := f.rdb.LLen(ctx, f.keys.Queue("builds")).Val(); n != 1 {
		t.Fatalf("queue holds %d jobs, want the untaken one", n)
	}
	if n := f.inFlight(t); n != 0 {
		t.Fatalf("%d in flight after drain", n)
	}
}

func TestConsumer_ManyJobsEachAckedOnce(t *testing.T) {
	f := newFixture(t, 4)
	const n = 500
	ctx := context.Background()
	pipe := f.rdb.Pipeline()
	for i := range n {
		pipe.RPush(ctx, f.keys.Queue("builds"), `{"class":"start","queue":"builds","args":[{"buildId":`+strconv.Itoa(i+1)+`}]}`)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	stop := f.run(t, queue.HandlerFunc(func(ctx context.Context, d *queue.Delivery) {
		mu.Lock()
		seen[string(d.Job.Args[0])]++
		mu.Unlock()
		_ = d.Ack(ctx)
	}))
	testbed.Eventually(t, 20*time.Second, "all acked", func() bool { return f.rdb.Get(ctx, f.keys.StatProcessed()).Val() == strconv.Itoa(n) })
	stop()
	if len(seen) != n {
		t.Fatalf("saw %d distinct jobs, want %d", len(seen), n)
	}
	for k, c := range seen {
		if c != 1 {
			t.Fatalf("job %s handled %d times", k, c)
		}
	}
}
