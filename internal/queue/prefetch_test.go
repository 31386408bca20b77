package queue_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// A test binary started with QW_QUEUE_PREFETCH_CHILD set becomes a worker
// with one slot that acks the first jobs of a deep queue (each ack also
// takes the next job) and hangs on job number QW_QUEUE_PREFETCH_HANG, which
// it therefore holds only as a prefetched job: the parent SIGKILLs it there.
// (init, not TestMain, so reliability_test.go's TestMain stays as it is.)
func init() {
	if ns := os.Getenv("QW_QUEUE_PREFETCH_CHILD"); ns != "" {
		hang, _ := strconv.Atoi(os.Getenv("QW_QUEUE_PREFETCH_HANG"))
		os.Exit(runPrefetchChild(ns, os.Getenv("QW_QUEUE_CHILD_NAME"), hang))
	}
}

func runPrefetchChild(ns, name string, hang int) int {
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
	seen := 0
	_ = c.Run(context.Background(), queue.HandlerFunc(func(ctx context.Context, j *queue.Job) queue.Outcome {
		seen++
		if seen == hang {
			rdb.Set(ctx, ns+":test:hung", string(j.Raw), 0)
			select {} // holding the prefetched job until SIGKILL
		}
		rdb.HIncrBy(ctx, ns+":test:done", string(j.Raw), 1)
		return queue.Done()
	}))
	return 0
}

func TestPrefetch_SIGKILLedSlotLosesNoJobOfADeepQueue(t *testing.T) {
	const jobs, hang = 40, 7
	rdb, ns, _ := testbed.Redis(t)
	keys := queue.NewKeys(ns)
	ctx := context.Background()
	for i := range jobs {
		rdb.RPush(ctx, keys.Queue("builds"), job(i))
	}

	name := "prefetchchild:" + testbed.Suffix()
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), "QW_QUEUE_PREFETCH_CHILD="+ns, "QW_QUEUE_CHILD_NAME="+name, "QW_QUEUE_PREFETCH_HANG="+strconv.Itoa(hang))
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, "child hangs on a job", func() bool { return rdb.Exists(ctx, ns+":test:hung").Val() == 1 })
	if err := child.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = child.Wait()

	// The job the dead slot was working came from its previous ack's script:
	// it is in the slot's in-flight list (not only in the dead process's
	// memory), and it is the only job there.
	hung := rdb.Get(ctx, ns+":test:hung").Val()
	inflight := rdb.LRange(ctx, keys.InFlight(name+"-0"), 0, -1).Val()
	if len(inflight) != 1 || inflight[0] != hung {
		t.Fatalf("dead slot's in-flight list = %q, want exactly the job it hung on %q", inflight, hung)
	}
	if got := rdb.HLen(ctx, ns+":test:done").Val(); got != hang-1 {
		t.Fatalf("child acked %d jobs, want %d", got, hang-1)
	}
	if got := rdb.LLen(ctx, keys.Queue("builds")).Val(); got != int64(jobs-hang) {
		t.Fatalf("queue holds %d jobs, want %d", got, jobs-hang)
	}

	var mu sync.Mutex
	done := map[string]int{}
	runConsumer(t, rdb, keys, fastOptions("prefetchsurvivor:"+testbed.Suffix(), 2), queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		mu.Lock()
		done[string(j.Raw)]++
		mu.Unlock()
		return queue.Done()
	}))
	testbed.Eventually(t, 15*time.Second, "every job completed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(done) == jobs-hang+1
	})
	time.Sleep(500 * time.Millisecond)
	childDone := rdb.HGetAll(ctx, ns+":test:done").Val()
	mu.Lock()
	defer mu.Unlock()
	if done[hung] != 1 {
		t.Fatalf("the dead slot's prefetched job completed %d times, want 1", done[hung])
	}
	for i := range jobs {
		n := done[job(i)]
		if c, ok := childDone[job(i)]; ok {
			m, _ := strconv.Atoi(c)
			n += m
		}
		if n != 1 {
			t.Fatalf("job %d completed %d times, want exactly once", i, n)
		}
	}
	if got := rdb.Get(ctx, keys.StatProcessed()).Val(); got != strconv.Itoa(jobs) {
		t.Fatalf("stat:processed = %s, want %d", got, jobs)
	}
}
