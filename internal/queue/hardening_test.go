package queue_test

// Hostile and unlucky jobs: limits at the door, jobs that cannot be written
// back, poison jobs, stale in-flight entries, fencing, token redaction.

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// failedEntry is a failed-list entry as resque tooling reads it.
type failedEntry struct {
	Worker    string          `json:"worker"`
	Queue     string          `json:"queue"`
	Payload   json.RawMessage `json:"payload"`
	Exception string          `json:"exception"`
	Error     string          `json:"error"`
	Backtrace []string        `json:"backtrace"`
}

func readFailed(t *testing.T, rdb *redis.Client, keys queue.Keys) []failedEntry {
	t.Helper()
	raw, err := rdb.LRange(context.Background(), keys.Failed(), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]failedEntry, len(raw))
	for i, r := range raw {
		if err := json.Unmarshal([]byte(r), &out[i]); err != nil {
			t.Fatalf("failed entry %d is not JSON (%v): %.300s", i, err, r)
		}
	}
	return out
}

// deepJob nests depth arrays inside args[0] (the envelope adds 2 levels).
func deepJob(depth int) string {
	return `{"class":"start","queue":"builds","args":[` + strings.Repeat("[", depth) + strings.Repeat("]", depth) + `]}`
}

func TestConsumer_JobsBeyondTheLimitsGoToFailedListUnparsed(t *testing.T) {
	big := `{"class":"start","queue":"builds","args":[{"buildId":1,"token":"secret-jwt","pad":"` + strings.Repeat("x", 2<<20) + `"}]}`
	tests := []struct {
		name, raw, exception, reason string
		maxStack                     int // bytes; 0 keeps the default
	}{
		{"Oversized", big, "JobTooLarge", "exceeds the limit of 1048576 bytes (queue.maxJobBytes); payload omitted", 0},
		{"JustTooDeep", deepJob(63), "JobTooDeep", "deeper than 64 levels (queue.maxJobDepth); payload omitted", 0},
		// 300k levels in 600 KB: re-encoding it recursively overflows even a
		// large stack, which is fatal (recover cannot catch it). The stack is
		// capped so that the check costs little memory.
		{"DeepEnoughToOverflowARecursiveEncoder", deepJob(300_000), "JobTooDeep", "deeper than 64 levels", 16 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.maxStack > 0 {
				defer debug.SetMaxStack(debug.SetMaxStack(tt.maxStack))
			}
			f := newFixture(t, 1)
			next := `{"class":"start","queue":"builds","args":[{"buildId":2}]}`
			f.enqueue(t, "builds", tt.raw)
			f.enqueue(t, "builds", next)
			var handled []string
			var mu sync.Mutex
			stop := f.run(t, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
				mu.Lock()
				handled = append(handled, string(j.Raw))
				mu.Unlock()
				return queue.Done()
			}))
			ctx := context.Background()
			testbed.Eventually(t, 10*time.Second, "the next job handled", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(handled) > 0 && handled[len(handled)-1] == next
			})
			stop()
			mu.Lock()
			if len(handled) != 1 {
				t.Fatalf("handler saw %d jobs (the first %d bytes long), want only the next one", len(handled), len(handled[0]))
			}
			mu.Unlock()
			entries := readFailed(t, f.rdb, f.keys)
			if len(entries) != 1 {
				t.Fatalf("%d failed entries, want 1", len(entries))
			}
			e := entries[0]
			if e.Exception != tt.exception || !strings.Contains(e.Error, tt.reason) || e.Queue != "builds" {
				t.Fatalf("entry exception %q error %q queue %q", e.Exception, e.Error, e.Queue)
			}
			// Omitted, not re-encoded: a small stub that says why.
			var p struct {
				Class   string            `json:"class"`
				Args    []json.RawMessage `json:"args"`
				Omitted string            `json:"omitted"`
			}
			if err := json.Unmarshal(e.Payload, &p); err != nil || p.Class != "omitted" || len(p.Args) != 0 || !strings.Contains(p.Omitted, tt.reason) {
				t.Fatalf("payload %.300s (%v), want the omitted stub", e.Payload, err)
			}
			if n := len(f.rdb.LIndex(ctx, f.keys.Failed(), 0).Val()); n > 2048 {
				t.Fatalf("failed entry is %d bytes", n)
			}
			if n := f.inFlight(t); n != 0 {
				t.Fatalf("%d in flight", n)
			}
		})
	}
}

// A number JavaScript reads as Infinity cannot be written back for a retry
// or a postpone: the job goes to the failed list instead of staying in
// flight (and being taken again for ever).
func TestConsumer_UnencodableJobGoesToFailedListInsteadOfRetrying(t *testing.T) {
	for _, outcome := range []queue.Outcome{queue.Retry(errors.New("apiserver down")), queue.Postpone(time.Second, "paused")} {
		t.Run(outcome.String(), func(t *testing.T) {
			f := newFixture(t, 1)
			f.opts.Retry = queue.RetryPolicy{MaxRetries: 3, Delay: time.Second}
			raw := `{"class":"start","queue":"builds","args":[{"buildId":3,"extra":1e999}]}`
			f.enqueue(t, "builds", raw)
			var handled atomic.Int32
			stop := f.run(t, queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome {
				handled.Add(1)
				return outcome
			}))
			ctx := context.Background()
			testbed.Eventually(t, 5*time.Second, "failed entry", func() bool { return f.rdb.LLen(ctx, f.keys.Failed()).Val() == 1 })
			time.Sleep(300 * time.Millisecond)
			stop()
			if n := handled.Load(); n != 1 {
				t.Fatalf("handled %d times", n)
			}
			e := readFailed(t, f.rdb, f.keys)[0]
			if e.Exception != "UnencodableJob" || !strings.Contains(e.Error, "1e999") {
				t.Fatalf("entry exception %q error %q", e.Exception, e.Error)
			}
			// The payload is what JSON.stringify(JSON.parse(job)) prints, so
			// node-resque can still list, remove and retry the entry.
			if string(e.Payload) != `{"class":"start","queue":"builds","args":[{"buildId":3,"extra":null}]}` {
				t.Fatalf("payload %s", e.Payload)
			}
			if n := f.inFlight(t); n != 0 {
				t.Fatalf("%d in flight", n)
			}
		})
	}
}

// The failed list is kept for ever and read by people and tools: build
// tokens in it are redacted, the entry otherwise intact.
func TestConsumer_FailedEntryRedactsTokens(t *testing.T) {
	f := newFixture(t, 1)
	inline := `{"class":"start","queue":"builds","args":[{"buildId":1,"apiUri":"http://api/","token":"eyJhbGciOi.secret.sig","annotations":{"x":{"accessToken":"abc"}},"provider":null}]}`
	webhook := `{"class":"sendWebhook","queue":"builds","args":["{\"webhookConfig\":{\"url\":\"http://h/\"},\"token\":\"eyJwebhook.secret\"}"]}`
	f.enqueue(t, "builds", inline)
	f.enqueue(t, "builds", webhook)
	stop := f.run(t, queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome {
		return queue.Fail("PodRejected", errors.New("forbidden"))
	}))
	ctx := context.Background()
	testbed.Eventually(t, 5*time.Second, "two failed entries", func() bool { return f.rdb.LLen(ctx, f.keys.Failed()).Val() == 2 })
	stop()
	raw := strings.Join(f.rdb.LRange(ctx, f.keys.Failed(), 0, -1).Val(), "\n")
	for _, secret := range []string{"eyJhbGciOi", "abc", "eyJwebhook"} {
		if strings.Contains(raw, secret) {
			t.Fatalf("failed list still holds %q:\n%s", secret, raw)
		}
	}
	entries := readFailed(t, f.rdb, f.keys)
	want := []string{
		`{"class":"start","queue":"builds","args":[{"buildId":1,"apiUri":"http://api/","token":"[redacted]","annotations":{"x":{"accessToken":"[redacted]"}},"provider":null}]}`,
		`{"class":"sendWebhook","queue":"builds","args":["{\"webhookConfig\":{\"url\":\"http://h/\"},\"token\":\"[redacted]\"}"]}`,
	}
	for i, e := range entries {
		if string(e.Payload) != want[i] {
			t.Errorf("payload\n%s\nwant\n%s", e.Payload, want[i])
		}
	}
}

// A job whose settle a Redis failover undid reappears in a live slot's
// in-flight list next to the job the slot works; nothing else would ever
// return it (the slot's lease is live). The slot returns it to its queue and
// it runs exactly once.
func TestConsumer_StaleInFlightEntryIsReturnedAndRunOnce(t *testing.T) {
	for _, busy := range []bool{true, false} {
		name := map[bool]string{true: "BehindTheCurrentJob", false: "InAnIdleSlot"}[busy]
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, 1)
			f.opts.LeaseDuration = 3 * time.Second // heartbeat every second
			ctx := context.Background()
			stale := `{"class":"start","queue":"builds","args":[{"buildId":99}]}`
			current := `{"class":"start","queue":"builds","args":[{"buildId":1}]}`
			started := make(chan struct{}, 1)
			release := make(chan struct{})
			var mu sync.Mutex
			counts := map[string]int{}
			stop := f.run(t, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
				mu.Lock()
				counts[string(j.Raw)]++
				mu.Unlock()
				if string(j.Raw) == current {
					started <- struct{}{}
					<-release
				}
				return queue.Done()
			}))
			defer stop()
			inflight := f.keys.InFlight(f.opts.WorkerName + "-0")
			if busy {
				f.enqueue(t, "builds", current)
				<-started
				// Older than the current job: at the head of the list.
				f.rdb.LPush(ctx, inflight, stale)
				close(release)
			} else {
				close(release)
				testbed.Eventually(t, 5*time.Second, "slot registered", func() bool {
					return f.rdb.ZScore(ctx, f.keys.Leases(), f.opts.WorkerName+"-0").Err() == nil
				})
				f.rdb.RPush(ctx, inflight, stale)
			}
			testbed.Eventually(t, 10*time.Second, "the stale entry ran", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return counts[stale] > 0
			})
			time.Sleep(1500 * time.Millisecond)
			mu.Lock()
			defer mu.Unlock()
			if counts[stale] != 1 {
				t.Fatalf("stale entry ran %d times", counts[stale])
			}
			if n := f.rdb.LLen(ctx, inflight).Val(); n != 0 {
				t.Fatalf("%d entries left in flight", n)
			}
		})
	}
}

// A job that kills every process that takes it is returned from dead slots
// MaxRecoveries (3) times, then dead-lettered as a PoisonJob instead of
// being returned a 4th time.
func TestRecoverer_PoisonJobIsDeadLetteredAfterMaxRecoveries(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	ctx := context.Background()
	poison := job(666)
	rdb.RPush(ctx, keys.Queue("builds"), poison)
	// A consumer of another queue: it takes nothing here, but its recoverer
	// returns the jobs of dead slots of the whole namespace.
	opts := fastOptions("recoverer:"+testbed.Suffix(), 1)
	opts.Queues = []string{"elsewhere"}
	opts.DeadLetterNotices = map[string]string{"start": "report"}
	runConsumer(t, rdb, keys, opts, queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome { return queue.Done() }))

	for death := 1; death <= 4; death++ {
		child := exec.Command(os.Args[0], "-test.run=^$")
		child.Env = append(os.Environ(), "QW_QUEUE_CHILD="+ns, "QW_QUEUE_CHILD_NAME=poisoned"+strconv.Itoa(death)+":"+testbed.Suffix())
		child.Stderr = os.Stderr
		if err := child.Start(); err != nil {
			t.Fatal(err)
		}
		testbed.Eventually(t, 10*time.Second, "child took the job", func() bool {
			return rdb.Get(ctx, ns+":test:started").Val() == strconv.Itoa(death)
		})
		if err := child.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = child.Wait()
		if death <= 3 {
			testbed.Eventually(t, 10*time.Second, "job returned after death "+strconv.Itoa(death), func() bool {
				return rdb.LLen(ctx, keys.Queue("builds")).Val() == 1
			})
			continue
		}
		testbed.Eventually(t, 10*time.Second, "poison job dead-lettered", func() bool { return rdb.LLen(ctx, keys.Failed()).Val() == 1 })
	}
	time.Sleep(time.Second)
	// What is queued now is its dead-letter notice only (a start that never
	// runs is still reported), not the job a 4th time.
	queued := rdb.LRange(ctx, keys.Queue("builds"), 0, -1).Val()
	if len(queued) != 1 {
		t.Fatalf("queued after the dead letter: %q", queued)
	}
	var notice struct {
		Class string            `json:"class"`
		Args  []json.RawMessage `json:"args"`
	}
	if err := json.Unmarshal([]byte(queued[0]), &notice); err != nil || notice.Class != "report" || len(notice.Args) != 2 ||
		string(notice.Args[0]) != `{"buildId":666}` || !strings.Contains(string(notice.Args[1]), "4 times") {
		t.Fatalf("dead-letter notice %s (%v)", queued[0], err)
	}
	e := readFailed(t, rdb, keys)[0]
	if e.Exception != "PoisonJob" || !strings.Contains(e.Error, "4 times") || e.Queue != "builds" || !strings.HasPrefix(e.Worker, "poisoned4:") {
		t.Fatalf("entry worker %q queue %q exception %q error %q", e.Worker, e.Queue, e.Exception, e.Error)
	}
	if string(e.Payload) != poison {
		t.Fatalf("payload %s", e.Payload)
	}
	if n := rdb.LLen(ctx, keys.Poison()).Val(); n != 0 {
		t.Fatalf("%d entries left in the poison list", n)
	}
	if rdb.Get(ctx, keys.StatFailed()).Val() != "1" {
		t.Fatal("stat:failed not incremented")
	}
}

// partition is a TCP proxy to Redis that can stop forwarding (a replica cut
// off from Redis but not from Kubernetes), and heal, dropping the
// connections that were cut (their streams lost bytes).
type partition struct {
	ln       net.Listener
	upstream string
	cut      atomic.Bool
	mu       sync.Mutex
	conns    []net.Conn
}

func newPartition(t *testing.T, upstream string) *partition {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &partition{ln: ln, upstream: upstream}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	t.Cleanup(func() { _ = ln.Close(); p.dropAll() })
	return p
}

func (p *partition) Addr() string { return p.ln.Addr().String() }

func (p *partition) serve(c net.Conn) {
	up, err := net.Dial("tcp", p.upstream)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.conns = append(p.conns, c, up)
	p.mu.Unlock()
	go p.pipe(up, c)
	p.pipe(c, up)
}

// pipe copies src to dst, dropping what it reads while the link is cut.
func (p *partition) pipe(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !p.cut.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *partition) dropAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.Close()
	}
	p.conns = nil
}

func (p *partition) Cut() { p.cut.Store(true) }

func (p *partition) Heal() {
	p.dropAll()
	p.cut.Store(false)
}

// A replica that cannot reach Redis stops acting on its job before its lease
// runs out (the handler's context is cancelled), and does not settle it: the
// recovered copy runs elsewhere, exactly once, and is the only one acked.
func TestConsumer_CutOffFromRedisCancelsTheJobBeforeItsLeaseRunsOut(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	ctx := context.Background()
	link := newPartition(t, testbed.RedisAddr())
	cutOff := redis.NewClient(&redis.Options{Addr: link.Addr(), MaxRetries: -1, DialTimeout: 300 * time.Millisecond})
	t.Cleanup(func() { _ = cutOff.Close() })

	started := make(chan struct{})
	cancelledAt := make(chan time.Time, 1)
	var firstCount, survivorCount atomic.Int32
	opts := fastOptions("cutoff:"+testbed.Suffix(), 1)
	opts.LeaseDuration = 3 * time.Second
	opts.OperationTimeout = 500 * time.Millisecond
	runConsumer(t, cutOff, keys, opts, queue.HandlerFunc(func(ctx context.Context, j *queue.Job) queue.Outcome {
		firstCount.Add(1)
		close(started)
		<-ctx.Done()
		cancelledAt <- time.Now()
		return queue.Done() // claims success: must not be written
	}))
	rdb.RPush(ctx, keys.Queue("builds"), job(5))
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("job not delivered")
	}
	cutAt := time.Now()
	link.Cut()
	time.Sleep(300 * time.Millisecond) // a beat already forwarded lands
	deadline, err := rdb.ZScore(ctx, keys.Leases(), opts.WorkerName+"-0").Result()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case at := <-cancelledAt:
		t.Logf("cancelled %v after the cut, %v before the lease ran out", at.Sub(cutAt), time.UnixMilli(int64(deadline)).Sub(at))
		if at.UnixMilli() >= int64(deadline) {
			t.Fatalf("job context cancelled at %d, not before the lease deadline %d", at.UnixMilli(), int64(deadline))
		}
	case <-time.After(8 * time.Second):
		t.Fatal("the cut-off replica kept acting on the job: its context was never cancelled")
	}

	// Another replica recovers the job once the lease runs out, and runs it.
	runConsumer(t, rdb, keys, fastOptions("survivor:"+testbed.Suffix(), 1), queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome {
		survivorCount.Add(1)
		return queue.Done()
	}))
	testbed.Eventually(t, 10*time.Second, "the recovered job acked", func() bool { return rdb.Get(ctx, keys.StatProcessed()).Val() == "1" })
	link.Heal()
	time.Sleep(2 * time.Second) // the cut-off replica reconnects
	if f, s := firstCount.Load(), survivorCount.Load(); f != 1 || s != 1 {
		t.Fatalf("handled %d times by the cut-off replica and %d by the survivor, want once each", f, s)
	}
	if got := rdb.Get(ctx, keys.StatProcessed()).Val(); got != "1" {
		t.Fatalf("processed %s, want 1 (the abandoned copy must not be acked)", got)
	}
	if n := rdb.LLen(ctx, keys.Queue("builds")).Val(); n != 0 {
		t.Fatalf("%d jobs queued", n)
	}
}
