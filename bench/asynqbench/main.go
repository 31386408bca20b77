// Command asynqbench is the asynq side of bench/run.sh: N tasks are
// pre-enqueued with asynq's Client, then an asynq Server with Concurrency C
// and a no-op handler drains them, timed from Server.Start until asynq has
// marked all N done (its per-queue processed counter reaches N). Prints:
//
//	RESULT asynq <n> <c> <seconds> <jobs/s>
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

func main() {
	addr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	db := flag.Int("db", 14, "Redis DB; it is FLUSHDBed before the run")
	n := flag.Int("n", 20000, "tasks")
	c := flag.Int("c", 8, "server concurrency")
	flag.Parse()
	if err := run(*addr, *db, *n, *c); err != nil {
		log.Fatal(err)
	}
}

func run(addr string, db, n, c int) error {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: addr, DB: db})
	defer rdb.Close()
	if err := flushOwnDB(ctx, rdb, db); err != nil {
		return err
	}
	opt := asynq.RedisClientOpt{Addr: addr, DB: db}
	if err := enqueue(opt, n); err != nil {
		return err
	}

	srv := asynq.NewServer(opt, asynq.Config{
		Concurrency:     c,
		Queues:          map[string]int{"default": 1},
		LogLevel:        asynq.ErrorLevel,
		ShutdownTimeout: 5 * time.Second,
	})
	var handled atomic.Int64
	allHandled := make(chan struct{})
	handler := asynq.HandlerFunc(func(context.Context, *asynq.Task) error {
		if handled.Add(1) == int64(n) {
			close(allHandled)
		}
		return nil
	})

	processed := "asynq:{default}:processed"
	start := time.Now()
	if err := srv.Start(handler); err != nil {
		return err
	}
	select {
	case <-allHandled:
	case <-time.After(10 * time.Minute):
		return fmt.Errorf("timed out with %d of %d handled", handled.Load(), n)
	}
	// The handler returning is not the end: asynq then removes the task from
	// its active list and counts it processed. Wait for the last of those.
	for {
		got, err := rdb.Get(ctx, processed).Int()
		if err != nil && err != redis.Nil {
			return err
		}
		if got >= n {
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	elapsed := time.Since(start)
	srv.Shutdown()

	if left := rdb.LLen(ctx, "asynq:{default}:pending").Val() + rdb.LLen(ctx, "asynq:{default}:active").Val(); left != 0 {
		return fmt.Errorf("%d tasks still pending or active", left)
	}
	fmt.Printf("RESULT asynq %d %d %.4f %.1f\n", n, c, elapsed.Seconds(), float64(n)/elapsed.Seconds())
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

// enqueue pre-enqueues n tasks through asynq's Client (one Lua call per
// task), from 16 goroutines so setup stays short. Not timed.
func enqueue(opt asynq.RedisClientOpt, n int) error {
	client := asynq.NewClient(opt)
	defer client.Close()
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
	)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				task := asynq.NewTask("start", []byte(Payload(i)))
				if _, err := client.Enqueue(task, asynq.MaxRetry(0)); err != nil {
					errOnce.Do(func() { first = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	return first
}

// Payload is the same ids-only start payload the other drivers enqueue.
func Payload(i int) string {
	job := strconv.Itoa(1 + i%50)
	return `{"buildId":` + strconv.Itoa(100000+i) + `,"jobId":` + job + `,"blockedBy":"` + job + `","blockedBySameJob":true,"blockedBySameJobWaitTime":5,"virtualJob":false}`
}
