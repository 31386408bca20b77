package queue_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// A test binary started with QW_QUEUE_CHILD set becomes a worker process
// that takes one job, records that it started it, and hangs: the parent
// SIGKILLs it mid-job.
func TestMain(m *testing.M) {
	if ns := os.Getenv("QW_QUEUE_CHILD"); ns != "" {
		os.Exit(runChild(ns, os.Getenv("QW_QUEUE_CHILD_NAME")))
	}
	os.Exit(m.Run())
}

func runChild(ns, name string) int {
	rdb := redis.NewClient(&redis.Options{Addr: testbed.RedisAddr()})
	keys := queue.NewKeys(ns)
	c, err := queue.NewConsumer(queue.Deps{Redis: rdb, Keys: keys, Log: zap.NewNop()}, queue.Options{
		Queues: []string{"builds"}, Concurrency: 1, WorkerName: name,
		BlockTimeout: time.Second, OperationTimeout: 2 * time.Second, DrainTimeout: time.Second,
		LeaseDuration: 2 * time.Second, RecoverInterval: -1, SchedulerInterval: -1,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	_ = c.Run(context.Background(), queue.HandlerFunc(func(ctx context.Context, _ *queue.Job) queue.Outcome {
		rdb.Incr(ctx, ns+":test:started")
		select {} // mid-job forever, until SIGKILL
	}))
	return 0
}

func fastOptions(name string, concurrency int) queue.Options {
	return queue.Options{
		Queues: []string{"builds"}, Concurrency: concurrency, WorkerName: name,
		BlockTimeout: time.Second, OperationTimeout: 2 * time.Second, DrainTimeout: 5 * time.Second,
		LeaseDuration: 2 * time.Second, RecoverInterval: 300 * time.Millisecond, SchedulerInterval: 100 * time.Millisecond,
		Retry: queue.RetryPolicy{MaxRetries: 2, Delay: time.Second, Factor: 2},
	}
}

func runConsumer(t *testing.T, rdb redis.UniversalClient, keys queue.Keys, opts queue.Options, h queue.Handler) (stop func()) {
	t.Helper()
	c, err := queue.NewConsumer(queue.Deps{Redis: rdb, Keys: keys, Log: zaptest.NewLogger(t)}, opts)
	if err != nil {
		t.Fatal(err)
	}
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

func job(id int) string {
	return `{"class":"start","queue":"builds","args":[{"buildId":` + strconv.Itoa(id) + `}]}`
}

func TestReliability_SIGKILLedWorkerJobIsRecoveredAndCompletedOnce(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	ctx := context.Background()
	rdb.RPush(ctx, keys.Queue("builds"), job(42))

	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "QW_QUEUE_CHILD="+ns, "QW_QUEUE_CHILD_NAME=childhost:"+testbed.Suffix())
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, "child started the job", func() bool { return rdb.Get(ctx, ns+":test:started").Val() == "1" })
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()
	if n := rdb.LLen(ctx, keys.Queue("builds")).Val(); n != 0 {
		t.Fatalf("job back in the queue before any recovery (%d)", n)
	}
	killedAt := time.Now()

	var completed atomic.Int32
	runConsumer(t, rdb, keys, fastOptions("survivor:"+testbed.Suffix(), 2), queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome {
		completed.Add(1)
		return queue.Done()
	}))
	testbed.Eventually(t, 15*time.Second, "job recovered and completed", func() bool { return completed.Load() == 1 })
	t.Logf("recovered and completed %.1fs after SIGKILL (lease 2s)", time.Since(killedAt).Seconds())
	time.Sleep(1500 * time.Millisecond)
	if c := completed.Load(); c != 1 {
		t.Fatalf("job completed %d times, want exactly once", c)
	}
	if rdb.Get(ctx, keys.StatProcessed()).Val() != "1" {
		t.Fatal("stat:processed != 1")
	}
	// The dead worker's resque registration is gone too.
	for _, m := range rdb.SMembers(ctx, keys.Workers()).Val() {
		if len(m) >= 9 && m[:9] == "childhost" {
			t.Fatalf("dead worker %s still registered", m)
		}
	}
}

func TestReliability_ThreeWorkersTwoThousandJobsEachAckedOnce(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	ctx := context.Background()
	const n = 2000
	pipe := rdb.Pipeline()
	for i := range n {
		pipe.RPush(ctx, keys.Queue("builds"), job(i))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := make(map[string]int, n)
	h := queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		mu.Lock()
		seen[string(j.Args[0])]++
		mu.Unlock()
		return queue.Done()
	})
	for w := range 3 {
		// Each worker has its own connection pool, as separate replicas would.
		c := redis.NewClient(&redis.Options{Addr: testbed.RedisAddr()})
		t.Cleanup(func() { _ = c.Close() })
		runConsumer(t, c, keys, fastOptions(fmt.Sprintf("replica%d:%d", w, w), 4), h)
	}
	testbed.Eventually(t, 60*time.Second, "all jobs acked", func() bool { return rdb.Get(ctx, keys.StatProcessed()).Val() == strconv.Itoa(n) })
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Fatalf("%d distinct jobs handled, want %d", len(seen), n)
	}
	for k, c := range seen {
		if c != 1 {
			t.Fatalf("job %s handled %d times", k, c)
		}
	}
}

// enqueueIn writes a delayed job exactly as node-resque's enqueueIn does.
func enqueueIn(t *testing.T, rdb *redis.Client, keys queue.Keys, delay time.Duration, j string) int64 {
	t.Helper()
	ctx := context.Background()
	ts := int64(math.Round(float64(time.Now().Add(delay).UnixMilli()) / 1000))
	if _, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.RPush(ctx, keys.Delayed(ts), j)
		p.SAdd(ctx, keys.Timestamps(j), "delayed:"+strconv.FormatInt(ts, 10))
		p.ZAdd(ctx, keys.DelayedSchedule(), redis.Z{Score: float64(ts), Member: strconv.FormatInt(ts, 10)})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return ts
}

func TestReliability_DelayedJobRunsWithinASecondOfItsDueTime(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	ran := make(chan time.Time, 1)
	runConsumer(t, rdb, keys, fastOptions("delayhost:1", 1), queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome {
		ran <- time.Now()
		return queue.Done()
	}))
	ts := enqueueIn(t, rdb, keys, 2*time.Second, job(7))
	due := time.Unix(ts, 0)
	select {
	case at := <-ran:
		late := at.Sub(due)
		t.Logf("ran %v after its due second", late)
		// node-resque rounds the due time to the nearest second: up to 0.5s early is by design.
		if late > time.Second || late < -500*time.Millisecond {
			t.Fatalf("ran %v from its due time, want within 1s", late)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("delayed job never ran")
	}
	ctx := context.Background()
	if rdb.Exists(ctx, keys.Delayed(ts), keys.Timestamps(job(7))).Val() != 0 || rdb.ZCard(ctx, keys.DelayedSchedule()).Val() != 0 {
		t.Fatal("delayed bookkeeping left behind")
	}
}

func TestReliability_FailedAttemptsBackOffThenDeadLetterWithReport(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	ctx := context.Background()
	var attempts []int
	var times []time.Time
	var mu sync.Mutex
	reported := make(chan string, 1)
	opts := fastOptions("retryhost:1", 1)
	runConsumer(t, rdb, keys, opts, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		if j.Class == "report" {
			reported <- string(j.Args[0])
			return queue.Done()
		}
		mu.Lock()
		attempts = append(attempts, j.Attempt)
		times = append(times, time.Now())
		mu.Unlock()
		return queue.Retry(errors.New("apiserver unavailable")).ReportDeadLetter(queue.NewJob{Class: "report", Args: []any{j.Args[0]}})
	}))
	rdb.RPush(ctx, keys.Queue("builds"), job(9))
	select {
	case got := <-reported:
		if got != `{"buildId":9}` {
			t.Fatalf("report args %s", got)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("dead-letter report never ran")
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(attempts) != "[0 1 2]" {
		t.Fatalf("attempts seen %v, want [0 1 2] (1 try + 2 retries)", attempts)
	}
	// Backoff 1s then 2s, each rounded to whole seconds as node-resque does.
	for i, want := range []time.Duration{time.Second, 2 * time.Second} {
		got := times[i+1].Sub(times[i])
		if got < want-600*time.Millisecond || got > want+1200*time.Millisecond {
			t.Errorf("retry %d came %v after the previous attempt, want about %v", i+1, got, want)
		}
	}
	entry := rdb.LIndex(ctx, keys.Failed(), 0).Val()
	if !strings.Contains(entry, `"error":"apiserver unavailable (gave up after 3 attempts)"`) {
		t.Fatalf("failed entry after the last retry: %q", entry)
	}
}

func TestReliability_RecovererReturnsLeaselessAndOrphanedInFlightJobs(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	ctx := context.Background()
	// A registered slot whose lease record is gone (asynq's orphan hole).
	rdb.HSet(ctx, keys.Slots(), "ghost:1-0", "builds")
	rdb.RPush(ctx, keys.InFlight("ghost:1-0"), job(1))
	// An in-flight list no registration knows (crash before registering).
	rdb.RPush(ctx, keys.InFlight("nobody:2-0"), `{"class":"stop","queue":"other","args":[{"buildId":2}]}`)
	// A live slot: must not be touched.
	rdb.ZAdd(ctx, keys.Leases(), redis.Z{Score: float64(time.Now().Add(time.Hour).UnixMilli()), Member: "alive:3-0"})
	rdb.HSet(ctx, keys.Slots(), "alive:3-0", "builds")
	rdb.RPush(ctx, keys.InFlight("alive:3-0"), job(3))

	// Two recoverers at once: each job is moved exactly once.
	var wg sync.WaitGroup
	var total atomic.Int32
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			n, err := queue.NewRecoverer(queue.Deps{Redis: rdb, Keys: keys, Log: zaptest.NewLogger(t)}, queue.RecovererOptions{Fallback: "builds", OperationTimeout: 2 * time.Second}).RecoverOnce(ctx)
			if err != nil {
				t.Error(err)
			}
			total.Add(int32(n))
		}()
	}
	wg.Wait()
	if total.Load() != 2 {
		t.Fatalf("recovered %d jobs, want 2", total.Load())
	}
	if got := rdb.LRange(ctx, keys.Queue("builds"), 0, -1).Val(); len(got) != 1 || got[0] != job(1) {
		t.Fatalf("builds queue %v", got)
	}
	if got := rdb.LLen(ctx, keys.Queue("other")).Val(); got != 1 {
		t.Fatalf("orphan not returned to its own queue (%d)", got)
	}
	if rdb.LLen(ctx, keys.InFlight("alive:3-0")).Val() != 1 {
		t.Fatal("a live slot's job was taken away")
	}
}

func TestReliability_MoversRacingMoveEachDelayedJobOnce(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	ctx := context.Background()
	const n = 1500
	past := time.Now().Add(-10 * time.Second).Unix()
	pipe := rdb.Pipeline()
	for i := range n {
		ts := past - int64(i%3)
		j := job(i)
		pipe.RPush(ctx, keys.Delayed(ts), j)
		pipe.SAdd(ctx, keys.Timestamps(j), "delayed:"+strconv.FormatInt(ts, 10))
		pipe.ZAdd(ctx, keys.DelayedSchedule(), redis.Z{Score: float64(ts), Member: strconv.FormatInt(ts, 10)})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var moved atomic.Int32
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			m, err := queue.NewMover(rdb, keys, "builds", 5*time.Second, zaptest.NewLogger(t), nil).MoveDue(ctx)
			if err != nil {
				t.Error(err)
			}
			moved.Add(int32(m))
		}()
	}
	wg.Wait()
	if moved.Load() != n || rdb.LLen(ctx, keys.Queue("builds")).Val() != n {
		t.Fatalf("moved %d, queue holds %d, want %d each", moved.Load(), rdb.LLen(ctx, keys.Queue("builds")).Val(), n)
	}
	if rdb.ZCard(ctx, keys.DelayedSchedule()).Val() != 0 {
		t.Fatal("schedule not emptied")
	}
	if !rdb.SIsMember(ctx, keys.Queues(), "builds").Val() {
		t.Fatal("queue not registered in the queues set")
	}
}

func TestReliability_ClusterHashTagNamespace(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns + ":{screwdriver-resque}")
	got := make(chan string, 1)
	runConsumer(t, rdb, keys, fastOptions("taghost:1", 1), queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		got <- string(j.Raw)
		return queue.Done()
	}))
	rdb.RPush(context.Background(), ns+":{screwdriver-resque}:queue:builds", job(5))
	select {
	case raw := <-got:
		if raw != job(5) {
			t.Fatal(raw)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("job in the hash-tagged namespace not consumed")
	}
}

// A private Redis with an append-only file, so a restart keeps its data.
func startRedis(t *testing.T) (addr string, restart func()) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	addr = "127.0.0.1:" + strconv.Itoa(port)
	var cmd *exec.Cmd
	start := func() {
		cmd = exec.Command("redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(port), "--save", "",
			"--appendonly", "yes", "--appendfsync", "always", "--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting redis-server: %v", err)
		}
		c := redis.NewClient(&redis.Options{Addr: addr})
		defer c.Close()
		testbed.Eventually(t, 10*time.Second, "private redis up", func() bool { return c.Ping(context.Background()).Err() == nil })
	}
	stop := func() {
		_ = cmd.Process.Signal(syscall.SIGTERM) // SIGTERM: Redis flushes the AOF and exits
		_ = cmd.Wait()
	}
	start()
	t.Cleanup(stop)
	return addr, func() { stop(); time.Sleep(time.Second); start() }
}

func TestReliability_RedisRestartMidRunLosesNothing(t *testing.T) {
	addr, restart := startRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	keys := queue.NewKeys("resque")
	ctx := context.Background()
	const n = 300
	for i := range n {
		rdb.RPush(ctx, keys.Queue("builds"), job(i))
	}
	var mu sync.Mutex
	handled := map[string]int{}
	runConsumer(t, rdb, keys, fastOptions("restarthost:1", 4), queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		time.Sleep(10 * time.Millisecond) // work
		mu.Lock()
		handled[string(j.Args[0])]++
		mu.Unlock()
		return queue.Done()
	}))
	testbed.Eventually(t, 10*time.Second, "some jobs done", func() bool {
		done, _ := rdb.Get(ctx, keys.StatProcessed()).Int()
		return done >= 50
	})
	restart()
	t.Cleanup(func() {
		if t.Failed() {
			mu.Lock()
			t.Logf("handled %d distinct; queue %d; processed %s", len(handled), rdb.LLen(ctx, keys.Queue("builds")).Val(), rdb.Get(ctx, keys.StatProcessed()).Val())
			mu.Unlock()
			iter := rdb.Scan(ctx, 0, keys.InFlightPattern(), 100).Iterator()
			for iter.Next(ctx) {
				t.Logf("in flight %s: %v", iter.Val(), rdb.LRange(ctx, iter.Val(), 0, -1).Val())
			}
			t.Logf("delayed %v", rdb.ZRange(ctx, keys.DelayedSchedule(), 0, -1).Val())
		}
	})
	testbed.Eventually(t, 20*time.Second, "every job done after the restart", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) == n && rdb.LLen(ctx, keys.Queue("builds")).Val() == 0
	})
	mu.Lock()
	defer mu.Unlock()
	dup := 0
	for _, c := range handled {
		if c > 1 {
			dup++
		}
	}
	// A job whose ack was lost with the connection is worked again: at least
	// once is the contract (pods are idempotent); nothing may be lost.
	t.Logf("%d jobs, %d handled twice around the restart", n, dup)
	if dup > 4 {
		t.Fatalf("%d jobs handled more than once; at most one per slot may repeat", dup)
	}
	testbed.Eventually(t, 10*time.Second, "nothing left in flight", func() bool {
		iter := rdb.Scan(ctx, 0, keys.InFlightPattern(), 100).Iterator()
		for iter.Next(ctx) {
			if rdb.LLen(ctx, iter.Val()).Val() > 0 {
				return false
			}
		}
		return true
	})
}
