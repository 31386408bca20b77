package queue

import (
	"context"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Recoverer returns the jobs of dead slots to the head of their queues: slots
// whose lease expired, slots registered without a lease, and in-flight lists
// no slot registration knows about. Every replica runs one; the recovery of a
// slot is one script that re-checks the lease, so two recoverers (or a slot
// that revives) never move a job twice.
type Recoverer struct {
	rdb      redis.UniversalClient
	keys     Keys
	fallback string
	timeout  time.Duration
	log      *zap.Logger
	metrics  *Metrics
}

// NewRecoverer returns a recoverer; fallback is the queue for an orphaned
// job that names none. metrics may be nil.
func NewRecoverer(rdb redis.UniversalClient, keys Keys, fallback string, timeout time.Duration, log *zap.Logger, metrics *Metrics) *Recoverer {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	return &Recoverer{rdb: rdb, keys: keys, fallback: fallback, timeout: timeout, log: log, metrics: metrics}
}

// Run recovers every interval until ctx is done.
func (r *Recoverer) Run(ctx context.Context, interval time.Duration) {
	runEvery(ctx, interval, "recover", "recovering expired leases", r.metrics, r.log, func(ctx context.Context) error {
		_, err := r.RecoverOnce(ctx)
		return err
	})
}

// RecoverOnce makes one pass and returns the number of jobs returned.
func (r *Recoverer) RecoverOnce(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	slots, err := r.rdb.HGetAll(ctx, r.keys.Slots()).Result()
	if err != nil {
		return 0, err
	}
	// In-flight lists of slots that never registered (or whose registration
	// was lost) are found by name. With a hash-tagged namespace every key is
	// on one node, so a scan of the masters sees them all.
	prefix := strings.TrimSuffix(r.keys.InFlightPattern(), "*")
	orphans := map[string]bool{}
	err = forEachMaster(ctx, r.rdb, func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, r.keys.InFlightPattern(), 500).Iterator()
		for iter.Next(ctx) {
			name := strings.TrimPrefix(iter.Val(), prefix)
			if _, ok := slots[name]; !ok {
				orphans[name] = true
			}
		}
		return iter.Err()
	})
	if err != nil {
		return 0, err
	}
	total := 0
	recoverSlot := func(name, queue string) error {
		n, err := r.recover(ctx, name, queue)
		if n > 0 {
			total += n
			r.metrics.Recovered.Add(float64(n))
			r.log.Warn("returned the job of a dead worker slot to its queue", zap.String("slot", name), zap.String("queue", queue), zap.Int("jobs", n))
		}
		return err
	}
	for name, q := range slots {
		if err := recoverSlot(name, q); err != nil {
			return total, err
		}
	}
	for name := range orphans {
		q, err := r.orphanQueue(ctx, name)
		if err != nil {
			return total, err
		}
		if q == "" {
			continue // emptied meanwhile
		}
		if err := recoverSlot(name, q); err != nil {
			return total, err
		}
	}
	return total, nil
}

// orphanQueue reads the queue an unregistered slot's job came from.
func (r *Recoverer) orphanQueue(ctx context.Context, slot string) (string, error) {
	raw, err := r.rdb.LIndex(ctx, r.keys.InFlight(slot), -1).Result()
	if err == redis.Nil {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if j, err := ParseJob([]byte(raw), ""); err == nil && j.Queue != "" {
		return j.Queue, nil
	}
	// An unparseable job names no queue: it goes back to the fallback queue,
	// where the next take dead-letters it with the reason.
	return r.fallback, nil
}

func (r *Recoverer) recover(ctx context.Context, slot, queue string) (int, error) {
	keys := []string{
		r.keys.Leases(), r.keys.Slots(), r.keys.InFlight(slot), r.keys.Queue(queue), r.keys.Workers(),
		r.keys.Worker(slot, queue), r.keys.WorkerPing(slot), r.keys.WorkerStarted(slot, queue),
		r.keys.WorkerStatProcessed(slot), r.keys.WorkerStatFailed(slot),
	}
	n, err := recoverScript.Run(ctx, r.rdb, keys, slot, slot+":"+queue).Int()
	if err != nil || n < 0 {
		return 0, err
	}
	return n, nil
}

// forEachMaster runs fn on every master of a cluster client, or on the one
// server (possibly found through Sentinel) of any other client.
func forEachMaster(ctx context.Context, rdb redis.UniversalClient, fn func(context.Context, redis.Cmdable) error) error {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return fn(ctx, m) })
	}
	return fn(ctx, rdb)
}
