package queue

import (
	"context"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Mover moves due delayed jobs into their queues, compatible with
// node-resque's scheduler: the same delayed_queue_schedule zset, per-second
// delayed:<ts> lists and timestamps:<job> sets. Each timestamp is moved by
// one script, so any number of replicas, and a node-resque scheduler, can run
// at once without moving a job twice; no leader lock is needed.
type Mover struct {
	rdb      redis.UniversalClient
	keys     Keys
	fallback string
	timeout  time.Duration
	log      *zap.Logger
	metrics  *Metrics
}

// NewMover returns a mover; fallback is the queue for a delayed job that
// names none. metrics may be nil.
func NewMover(rdb redis.UniversalClient, keys Keys, fallback string, timeout time.Duration, log *zap.Logger, metrics *Metrics) *Mover {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	return &Mover{rdb: rdb, keys: keys, fallback: fallback, timeout: timeout, log: log, metrics: metrics}
}

// moveBatch bounds one script run, so a huge timestamp cannot stall Redis.
const moveBatch = 500

// Run moves due jobs every interval until ctx is done.
func (m *Mover) Run(ctx context.Context, interval time.Duration) {
	runEvery(ctx, interval, "move_delayed", "moving due delayed jobs", m.metrics, m.log, func(ctx context.Context) error {
		_, err := m.MoveDue(ctx)
		return err
	})
}

// MoveDue moves every job due by now and returns how many it moved.
func (m *Mover) MoveDue(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	// Due by Redis's clock (TIME, rounded to the second as node-resque
	// rounds its own), as the delayed timestamps are written: replicas with
	// skewed clocks agree on what is due.
	due, err := dueScript.Run(ctx, m.rdb, []string{m.keys.DelayedSchedule()}, 100).StringSlice()
	if err != nil {
		return 0, err
	}
	total := 0
	for _, tsStr := range due {
		ts, err := strconv.ParseInt(tsStr, 10, 64)
		if err != nil {
			m.log.Warn("ignoring a non-numeric delayed timestamp", zap.String("member", tsStr))
			continue
		}
		for {
			n, err := moveDueScript.Run(ctx, m.rdb,
				[]string{m.keys.DelayedSchedule(), m.keys.Delayed(ts), m.keys.Queues()},
				tsStr, m.keys.Namespace(), m.fallback, moveBatch).Int()
			if err != nil {
				return total, err
			}
			total += n
			m.metrics.DelayedMoved.Add(float64(n))
			if n < moveBatch {
				break
			}
		}
	}
	return total, nil
}
