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
	c, err := queue.NewConsumer(queue.Deps{Redis: f.rdb, Keys: f.keys, Log: zaptest.NewLogger(t)}, f.opts)
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
	stop := f.run(t, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		got <- j
		return queue.Done()
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
			stop := f.run(t, queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome {
				handled.Add(1)
				return queue.Done()
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
	stop := f.run(t, queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome {
		return queue.Fail("InvalidPayload", errors.New("container (the build image) is required"))
	}))
	ctx := context.Background()
	testbed.Eventually(t, 5*time.Second, "failed entry", func() bool { return f.rdb.LLen(ctx, f.keys.Failed()).Val() == 1 })
	stop()
	entry := f.rdb.LIndex(ctx, f.keys.Failed(), 0).Val()
	prefix := `{"worker":"` + f.opts.WorkerName + `-0","queue":"builds","payload":` + job + `,"exception":"InvalidPayload","error":"container (the build image) is required","backtrace":[],"failed_at":"`
	if !strings.HasPrefix(entry, prefix) || !strings.HasSuffix(entry, `(Coordinated Universal Time)"}`) {
		t.Fatalf("entry\n%s\nwant prefix\n%s", entry, prefix)
	}
}

func TestConsumer_RequeuedJobReturnsToQueueHead(t *testing.T) {
	f := newFixture(t, 1)
	f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":1}]}`)
	f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":2}]}`)
	var seen []string
	var mu sync.Mutex
	stop := f.run(t, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		mu.Lock()
		defer mu.Unlock()
		seen = append(seen, string(j.Args[0]))
		if len(seen) > 1 {
			return queue.Done()
		}
		return queue.Requeue()
	}))
	testbed.Eventually(t, 5*time.Second, "both jobs acked", func() bool {
		return f.rdb.Get(context.Background(), f.keys.StatProcessed()).Val() == "2"
	})
	stop()
	if seen[0] != `{"buildId":1}` || seen[1] != `{"buildId":1}` {
		t.Fatalf("the requeued job must come back first, saw %v", seen)
	}
}

func TestConsumer_LeftoverInFlightJobIsRequeuedOnStart(t *testing.T) {
	f := newFixture(t, 1)
	ctx := context.Background()
	left := `{"class":"stop","queue":"builds","args":[{"buildId":9}]}`
	// A previous process with our name died holding a job.
	f.rdb.RPush(ctx, f.keys.InFlight(f.opts.WorkerName+"-0"), left)
	got := make(chan string, 1)
	stop := f.run(t, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		got <- string(j.Raw)
		return queue.Done()
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
	stop := f.run(t, queue.HandlerFunc(func(ctx context.Context, _ *queue.Job) queue.Outcome {
		close(started)
		<-release
		if ctx.Err() != nil {
			t.Error("job context cancelled during the drain period")
		}
		return queue.Done()
	}))
	<-started
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	time.Sleep(300 * time.Millisecond) // stop is waiting on the job
	close(release)
	<-stopped
	ctx := context.Background()
	if got := f.rdb.Get(ctx, f.keys.StatProcessed()).Val(); got != "1" {
		t.Fatalf("processed %s, want 1", got)
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
	stop := f.run(t, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		mu.Lock()
		seen[string(j.Args[0])]++
		mu.Unlock()
		return queue.Done()
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

// A panicking handler fails that job with the panic as its reason; the slot
// keeps working and takes the next job.
func TestConsumer_PanicFailsTheJobAndKeepsTheSlot(t *testing.T) {
	f := newFixture(t, 1)
	f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":1}]}`)
	f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":2}]}`)
	stop := f.run(t, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		if string(j.Args[0]) == `{"buildId":1}` {
			var pods []string
			_ = pods[len(j.Args)] // index out of range: a handler bug
		}
		return queue.Done()
	}))
	ctx := context.Background()
	testbed.Eventually(t, 5*time.Second, "second job acked", func() bool { return f.rdb.Get(ctx, f.keys.StatProcessed()).Val() == "1" })
	stop()
	entry := f.rdb.LIndex(ctx, f.keys.Failed(), 0).Val()
	if !strings.Contains(entry, `"exception":"Panic"`) || !strings.Contains(entry, "index out of range") {
		t.Fatalf("failed entry %s", entry)
	}
}

// A dead-letter report rides in the fail script: it is queued iff the job
// reached the failed list, whether by Fail or after the last retry.
func TestConsumer_DeadLetterReportIsQueuedWithTheFailedEntry(t *testing.T) {
	tests := []struct {
		name    string
		outcome func() queue.Outcome
		attempt int
	}{
		{"Fail", func() queue.Outcome { return queue.Fail("PodRejected", errors.New("forbidden")) }, 0},
		{"LastRetry", func() queue.Outcome { return queue.Retry(errors.New("apiserver down")) }, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, 1)
			f.opts.Retry.MaxRetries = 1
			f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":4}],"attempt":`+strconv.Itoa(tt.attempt)+`}`)
			var reports atomic.Int32
			stop := f.run(t, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
				if j.Class == "report" {
					reports.Add(1)
					if string(j.Args[0]) != `{"buildId":4}` || string(j.Args[1]) != `{"message":"m"}` {
						t.Errorf("report args %s", j.Raw)
					}
					return queue.Done()
				}
				return tt.outcome().ReportDeadLetter(queue.NewJob{Class: "report",
					Args: []any{j.Args[0], map[string]string{"message": "m"}}})
			}))
			ctx := context.Background()
			testbed.Eventually(t, 5*time.Second, "report handled", func() bool { return reports.Load() == 1 })
			stop()
			if n := f.rdb.LLen(ctx, f.keys.Failed()).Val(); n != 1 {
				t.Fatalf("failed list %d", n)
			}
		})
	}
}
