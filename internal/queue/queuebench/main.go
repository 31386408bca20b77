// Command queuebench measures the queue consumer's drain throughput: N jobs
// are pre-enqueued the way node-resque enqueues them, then a Consumer with
// concurrency C takes and acks them with a no-op handler, timed from Run to
// the N-th Ack. bench/run.sh runs it next to the asynq and node-resque
// drivers in bench/ (a separate module, so their dependencies stay out of
// this one). It prints one line:
//
//	RESULT ours <n> <c> <seconds> <jobs/s>
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/queue"
)

func main() {
	addr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	db := flag.Int("db", 13, "Redis DB; it is FLUSHDBed before the run")
	n := flag.Int("n", 20000, "jobs")
	c := flag.Int("c", 8, "consumer concurrency")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the timed part here")
	version := flag.Bool("redis-version", false, "print the Redis server version and exit")
	flag.Parse()
	if *version {
		info, err := redis.NewClient(&redis.Options{Addr: *addr}).Info(context.Background(), "server").Result()
		if err != nil {
			log.Fatal(err)
		}
		for _, line := range strings.Split(info, "\n") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:"); ok {
				fmt.Println(v)
			}
		}
		return
	}
	if err := run(*addr, *db, *n, *c, *cpuprofile); err != nil {
		log.Fatal(err)
	}
}

func run(addr string, db, n, c int, cpuprofile string) error {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr, DB: db})
	defer rdb.Close()
	if err := flushOwnDB(ctx, rdb, db); err != nil {
		return err
	}
	keys := queue.NewKeys("resque")
	if err := enqueue(ctx, rdb, keys, n); err != nil {
		return err
	}

	consumer, err := queue.NewConsumer(queue.Deps{Redis: rdb, Keys: keys, Log: zap.NewNop()}, queue.Options{
		Queues:           []string{"builds"},
		Concurrency:      c,
		WorkerName:       "bench:" + strconv.Itoa(os.Getpid()),
		BlockTimeout:     time.Second,
		OperationTimeout: 5 * time.Second,
		DrainTimeout:     5 * time.Second,
	})
	if err != nil {
		return err
	}
	var acked atomic.Int64
	done := make(chan struct{})
	// Counted when the handler returns Done: the settle follows (one script
	// call, which also takes the next job), so the N-th settle is at most one
	// round trip after done closes, and Run's drain waits for it.
	handler := queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome {
		if acked.Add(1) == int64(n) {
			close(done)
		}
		return queue.Done()
	})

	if cpuprofile != "" {
		f, err := os.Create(cpuprofile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	ran := make(chan error, 1)
	start := time.Now()
	go func() { ran <- consumer.Run(runCtx, handler) }()
	select {
	case <-done:
	case <-time.After(10 * time.Minute):
		return fmt.Errorf("timed out with %d of %d acked", acked.Load(), n)
	}
	elapsed := time.Since(start)
	if cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	stop()
	if err := <-ran; err != nil {
		return err
	}

	if left := rdb.LLen(ctx, keys.Queue("builds")).Val(); left != 0 {
		return fmt.Errorf("%d jobs left in the queue", left)
	}
	if got := rdb.Get(ctx, keys.StatProcessed()).Val(); got != strconv.Itoa(n) {
		return fmt.Errorf("stat:processed is %q, want %d", got, n)
	}
	fmt.Printf("RESULT ours %d %d %.4f %.1f\n", n, c, elapsed.Seconds(), float64(n)/elapsed.Seconds())
	return nil
}

// Sentinel marks a DB as the benchmark's own, so flushing it again is safe.
const Sentinel = "queue-worker-bench"

// flushOwnDB empties db, refusing when it holds keys and no sentinel: then
// it is someone else's data.
func flushOwnDB(ctx context.Context, rdb *redis.Client, db int) error {
	size, err := rdb.DBSize(ctx).Result()
	if err != nil {
		return err
	}
	if size > 0 && rdb.Exists(ctx, Sentinel).Val() == 0 {
		return fmt.Errorf("redis DB %d holds %d keys the benchmark did not write; choose an empty DB with -db", db, size)
	}
	if err := rdb.FlushDB(ctx).Err(); err != nil {
		return err
	}
	return rdb.Set(ctx, Sentinel, "1", 0).Err()
}

// enqueue writes n jobs as node-resque does (SADD queues + RPUSH), pipelined.
func enqueue(ctx context.Context, rdb *redis.Client, keys queue.Keys, n int) error {
	const batch = 1000
	for i := 0; i < n; i += batch {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.SAdd(ctx, keys.Queues(), "builds")
			for j := i; j < i+batch && j < n; j++ {
				p.RPush(ctx, keys.Queue("builds"), Job(j))
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Job is the benchmark's job: a Screwdriver ids-only start job.
func Job(i int) string {
	return fmt.Sprintf(`{"class":"start","queue":"builds","args":[{"buildId":%d,"jobId":%d,"blockedBy":"%d","blockedBySameJob":true,"blockedBySameJobWaitTime":5,"virtualJob":false}]}`, 100000+i, 1+i%50, 1+i%50)
}
