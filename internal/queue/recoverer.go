package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// defaultMaxRecoveries is how many returns from dead slots a job gets before
// it is dead-lettered as a suspected poison job.
const defaultMaxRecoveries = 3

// recoveryCountTTL is how long a job's count of returns from dead slots
// lives after its last return: deaths further apart than that are not
// counted together.
const recoveryCountTTL = 24 * time.Hour

// poisonBatch bounds the poison entries one pass writes to the failed list.
const poisonBatch = 100

// Recoverer returns the jobs of dead slots to the head of their queues: slots
// whose lease expired, slots registered without a lease, and in-flight lists
// no slot registration knows about. Every replica runs one; the recovery of a
// slot is one script that re-checks the lease, so two recoverers (or a slot
// that revives) never move a job twice.
//
// A job that keeps killing the process handling it would otherwise go round
// every replica for ever: each return is counted in Redis, per job, and a job
// found in a dead slot more than MaxRecoveries times is written to the failed
// list as a PoisonJob instead.
type Recoverer struct {
	rdb     redis.UniversalClient
	keys    Keys
	opts    RecovererOptions
	log     *zap.Logger
	metrics *Metrics
}

// RecovererOptions configure a Recoverer.
type RecovererOptions struct {
	// Fallback is the queue for an orphaned job that names none.
	Fallback string
	// OperationTimeout bounds one pass.
	OperationTimeout time.Duration
	// MaxRecoveries is how many times a job may be returned from dead slots
	// (default 3).
	MaxRecoveries int
	// Limits are applied to poison jobs before their failed entry is
	// written (a job beyond them is written with its payload omitted).
	Limits Limits
	// Notices name, per job class, the class of a notice job queued with
	// the failed entry of a poison job of that class, as a handler's
	// ReportDeadLetter would: args [the job's args[0], {"message": why}].
	// A start that can never run must still be reported, even when it was
	// never handled to the end.
	Notices map[string]string
}

// NewRecoverer returns a recoverer (deps.Metrics may be nil).
func NewRecoverer(deps Deps, opts RecovererOptions) *Recoverer {
	if deps.Metrics == nil {
		deps.Metrics = NewMetrics(nil)
	}
	if opts.MaxRecoveries <= 0 {
		opts.MaxRecoveries = defaultMaxRecoveries
	}
	opts.Limits = opts.Limits.withDefaults()
	return &Recoverer{rdb: deps.Redis, keys: deps.Keys, opts: opts, log: deps.Log, metrics: deps.Metrics}
}

// Run recovers every interval until ctx is done.
func (r *Recoverer) Run(ctx context.Context, interval time.Duration) {
	runEvery(ctx, interval, "recover", "recovering expired leases", r.metrics, r.log, func(ctx context.Context) error {
		_, err := r.RecoverOnce(ctx)
		return err
	})
}

// RecoverOnce makes one pass and returns the number of jobs returned to
// their queues (poison jobs are not counted).
func (r *Recoverer) RecoverOnce(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, r.opts.OperationTimeout)
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
		n, poisoned, err := r.recover(ctx, name, queue)
		if n > 0 {
			total += n
			r.metrics.Recovered.Add(float64(n))
			r.log.Warn("returned the job of a dead worker slot to its queue", zap.String("slot", name), zap.String("queue", queue), zap.Int("jobs", n))
		}
		if poisoned > 0 {
			r.log.Error("a job found in a dead worker slot once too often goes to the failed list (suspected poison job)",
				zap.String("slot", name), zap.String("queue", queue), zap.Int("jobs", poisoned), zap.Int("max_recoveries", r.opts.MaxRecoveries))
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
	// Poison jobs of this pass, and of any earlier pass cut short.
	if _, err := r.failPoison(ctx); err != nil {
		return total, fmt.Errorf("writing poison jobs to the failed list: %w", err)
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
	if r.opts.Limits.check(raw) == nil {
		if j, err := ParseJob([]byte(raw), ""); err == nil && j.Queue != "" {
			return j.Queue, nil
		}
	}
	// An unparseable job names no queue: it goes back to the fallback queue,
	// where the next take dead-letters it with the reason.
	return r.opts.Fallback, nil
}

func (r *Recoverer) recover(ctx context.Context, slot, queue string) (returned, poisoned int, err error) {
	keys := []string{
		r.keys.Leases(), r.keys.Slots(), r.keys.InFlight(slot), r.keys.Queue(queue), r.keys.Workers(),
		r.keys.Worker(slot, queue), r.keys.WorkerPing(slot), r.keys.WorkerStarted(slot, queue),
		r.keys.WorkerStatProcessed(slot), r.keys.WorkerStatFailed(slot), r.keys.Poison(),
	}
	res, err := recoverScript.Run(ctx, r.rdb, keys, slot, slot+":"+queue, r.opts.MaxRecoveries,
		r.keys.RecoveriesPrefix(), recoveryCountTTL.Milliseconds(), queue).Slice()
	if err != nil {
		return 0, 0, err
	}
	n, p, err := settleReply(res)
	if err != nil || n < 0 {
		return 0, 0, err
	}
	return n, p, nil
}

// failPoison writes the jobs of the poison list to the failed list, each in
// one script that also removes it from the poison list, oldest first.
func (r *Recoverer) failPoison(ctx context.Context) (int, error) {
	done := 0
	for done < poisonBatch {
		entry, err := r.rdb.LIndex(ctx, r.keys.Poison(), -1).Result()
		if errors.Is(err, redis.Nil) {
			return done, nil
		}
		if err != nil {
			return done, err
		}
		slot, queue, count, job := splitPoison(entry)
		reason := fmt.Sprintf("suspected poison job: found in a dead worker slot %d times (queue.maxRecoveries is %d): "+
			"each time, the worker holding it died or lost its lease; last in %s", count, r.opts.MaxRecoveries, slot)
		f := Failure{Worker: slot, Queue: queue, Exception: "PoisonJob", Error: reason, FailedAt: time.Now()}
		if rej := r.opts.Limits.check(job); rej != nil {
			f.PayloadOmitted = rej.Reason
		} else {
			f.Payload = failedPayload([]byte(job), r.opts.Limits)
		}
		notice, noticeQueue := r.notice(job, queue, reason)
		n, err := poisonFailScript.Run(ctx, r.rdb,
			[]string{r.keys.Poison(), r.keys.Failed(), r.keys.StatFailed(), r.keys.RecoveriesPrefix() + sha1Hex(job), r.keys.Queue(noticeQueue)},
			entry, f.Encode(), string(notice)).Int()
		if err != nil {
			return done, err
		}
		if n == 1 {
			done++
			r.metrics.Poisoned.Inc()
			r.metrics.DeadLettered.WithLabelValues(queue).Inc()
			r.log.Error("poison job written to the failed list", zap.String("exception", "PoisonJob"),
				zap.String("slot", slot), zap.String("queue", queue), zap.Int("recoveries", count))
		}
	}
	return done, nil
}

// splitPoison reads a poison-list entry: "<slot>\n<queue>\n<count>\n<job>".
func splitPoison(entry string) (slot, queue string, count int, job string) {
	parts := strings.SplitN(entry, "\n", 4)
	for len(parts) < 4 {
		parts = append(parts, "")
	}
	count, _ = strconv.Atoi(parts[2])
	return parts[0], parts[1], count, parts[3]
}

// forEachMaster runs fn on every master of a cluster client, or on the one
// server (possibly found through Sentinel) of any other client.
func forEachMaster(ctx context.Context, rdb redis.UniversalClient, fn func(context.Context, redis.Cmdable) error) error {
	if c, ok := rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return fn(ctx, m) })
	}
	return fn(ctx, rdb)
}

// notice is the dead-letter notice of a poison job (nil if its class has
// none, or the job cannot be read within the limits), and its queue.
func (r *Recoverer) notice(job, queue, reason string) ([]byte, string) {
	if r.opts.Limits.check(job) != nil {
		return nil, queue
	}
	j, err := ParseJob([]byte(job), queue)
	if err != nil || len(j.Args) == 0 {
		return nil, queue
	}
	class, ok := r.opts.Notices[j.Class]
	if !ok {
		return nil, queue
	}
	b, err := NewJob{Class: class, Args: []any{j.Args[0], map[string]string{"message": "Build failed to start: " + reason}}}.encode(j.Queue)
	if err != nil {
		r.log.Warn("encoding the dead-letter notice of a poison job failed; failing it without one", zap.String("queue", queue), zap.Error(err))
		return nil, queue
	}
	return b, j.Queue
}
