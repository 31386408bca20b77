package queue

import (
	"context"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Metrics are the queue's collectors. Labels are bounded: queue names come
// from config, ops from this package.
type Metrics struct {
	Taken        *prometheus.CounterVec
	Acked        *prometheus.CounterVec
	Retried      *prometheus.CounterVec
	Postponed    *prometheus.CounterVec
	DeadLettered *prometheus.CounterVec
	Recovered    prometheus.Counter
	DelayedMoved prometheus.Counter
	LeasesLost   prometheus.Counter
	LostSettles  *prometheus.CounterVec
	// Rejected counts jobs dead-lettered without being handled, by reason:
	// too_large, too_deep (the limits at the door), unencodable (a retry or
	// postpone that cannot be written back), panic (deliver itself panicked).
	Rejected *prometheus.CounterVec
	// Poisoned counts jobs the recoverer dead-lettered as PoisonJob.
	Poisoned prometheus.Counter
	// StaleReturned counts in-flight entries a live slot found besides its
	// own job (a settle undone by a failover) and returned to the queue.
	StaleReturned prometheus.Counter
	// Fenced counts jobs abandoned because the slot's lease could not be
	// confirmed in time; Panics counts recovered panics by stage.
	Fenced       prometheus.Counter
	Panics       *prometheus.CounterVec
	InFlight     prometheus.Gauge
	RedisErrors  *prometheus.CounterVec
	TakeToSettle prometheus.Histogram
	// Jobs counts settled jobs by class and outcome (succeeded, retried,
	// delayed, failed, requeued); Duration is the handler's time per class.
	Jobs     *prometheus.CounterVec
	Duration *prometheus.HistogramVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "queue", Name: name, Help: help}, labels)
	}
	m := &Metrics{
		Taken:        counter("taken_total", "Jobs taken from a resque queue.", "queue"),
		Acked:        counter("acked_total", "Jobs acknowledged (done) and removed from flight.", "queue"),
		Retried:      counter("retried_total", "Failed attempts re-queued through the delayed schedule.", "queue"),
		Postponed:    counter("postponed_total", "Jobs put back for later without counting an attempt (paused runtime, budget, open breaker).", "queue"),
		DeadLettered: counter("dead_lettered_total", "Jobs written to the resque failed list.", "queue"),
		Recovered: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "queue", Name: "recovered_total",
			Help: "Jobs of dead or lease-less worker slots returned to their queue."}),
		DelayedMoved: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "queue", Name: "delayed_moved_total",
			Help: "Due delayed jobs moved into their queue."}),
		LeasesLost: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "queue", Name: "leases_lost_total",
			Help: "Slots that found their lease recovered by another replica (missed heartbeats)."}),
		LostSettles: counter("lost_settles_total", "Settles that found the job no longer in flight (recovered elsewhere).", "op"),
		Rejected:    counter("rejected_total", "Jobs written to the failed list without being handled, by reason (too_large, too_deep, unencodable, panic).", "reason"),
		Poisoned: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "queue", Name: "poison_jobs_total",
			Help: "Jobs found in dead worker slots more than queue.maxRecoveries times, written to the failed list as PoisonJob."}),
		StaleReturned: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "queue", Name: "stale_in_flight_returned_total",
			Help: "Entries a live slot found in its in-flight list besides its own job (a settle undone by a failover), returned to the queue."}),
		Fenced: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "queue", Name: "fenced_jobs_total",
			Help: "Jobs abandoned (context cancelled, not settled) because the slot's lease could not be confirmed before it ran out."}),
		Panics: counter("panics_total", "Panics recovered while delivering a job, by stage (handler, deliver).", "stage"),
		InFlight: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "queue_worker", Subsystem: "queue", Name: "in_flight",
			Help: "Jobs taken by this process and not yet settled."}),
		RedisErrors: counter("redis_errors_total", "Redis calls that failed, by operation.", "op"),
		TakeToSettle: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "queue_worker", Subsystem: "queue", Name: "take_to_settle_seconds",
			Help:    "Time from taking a job to settling it (ack, retry, failed list).",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
		Jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "jobs_total",
			Help: "Jobs settled, by class (the handler's classes, else other) and outcome (succeeded, retried, delayed, failed, requeued).",
		}, []string{"class", "outcome"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "queue_worker", Name: "job_duration_seconds",
			Help:    "Time the handler took for one attempt of a job, by class.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"class"}),
	}
	if reg != nil {
		reg.MustRegister(m.Taken, m.Acked, m.Retried, m.Postponed, m.DeadLettered, m.Recovered, m.DelayedMoved,
			m.LeasesLost, m.LostSettles, m.Rejected, m.Poisoned, m.StaleReturned, m.Fenced, m.Panics, m.InFlight, m.RedisErrors, m.TakeToSettle, m.Jobs, m.Duration)
	}
	return m
}

// jobMetrics are the per-class children of Jobs and Duration, created up
// front for the known classes and "other".
type jobMetrics struct {
	known    map[string]bool
	counts   map[[2]string]prometheus.Counter
	handling map[string]prometheus.Observer
}

var jobOutcomes = []string{OutcomeSucceeded, OutcomeRetried, OutcomeDelayed, OutcomeFailed, OutcomeRequeued}

func newJobMetrics(m *Metrics, classes []string) jobMetrics {
	j := jobMetrics{known: map[string]bool{}, counts: map[[2]string]prometheus.Counter{}, handling: map[string]prometheus.Observer{}}
	for _, c := range append(classes[:len(classes):len(classes)], "other") {
		j.known[c] = true
		j.handling[c] = m.Duration.WithLabelValues(c)
		for _, o := range jobOutcomes {
			j.counts[[2]string{c, o}] = m.Jobs.WithLabelValues(c, o)
		}
	}
	return j
}

// class bounds a job class to the known ones.
func (j jobMetrics) class(c string) string {
	if j.known[c] {
		return c
	}
	return "other"
}

func (j jobMetrics) count(class, outcome string) { j.counts[[2]string{class, outcome}].Inc() }

func (j jobMetrics) duration(class string) prometheus.Observer { return j.handling[class] }

// DepthCollector reports queue lengths, the failed list and the delayed
// schedule at scrape time (asynq's exporter pattern), bounded by a timeout.
type DepthCollector struct {
	rdb     redis.UniversalClient
	keys    Keys
	queues  []string
	timeout time.Duration
	now     func() time.Time
	depth   *prometheus.Desc
	oldest  *prometheus.Desc
	failed  *prometheus.Desc
	delayed *prometheus.Desc
	up      *prometheus.Desc
	// heads remembers, per queue, the digest of the job at its head and
	// when a scrape first saw it there (resque jobs carry no enqueue time).
	mu    sync.Mutex
	heads map[string]head
}

type head struct {
	digest string
	since  time.Time
}

// headDigestScript returns the SHA-1 of the job at the head of a queue
// ("" when empty): a 40-byte answer however large the job. KEYS[1] queue.
var headDigestScript = redis.NewScript(`
local j = redis.call('LINDEX', KEYS[1], 0)
if not j then return '' end
return redis.sha1hex(j)`)

// NewDepthCollector returns a collector for the given full queue names.
func NewDepthCollector(rdb redis.UniversalClient, keys Keys, queues []string, timeout time.Duration) *DepthCollector {
	return &DepthCollector{
		rdb: rdb, keys: keys, queues: queues, timeout: timeout, now: time.Now, heads: map[string]head{},
		depth: prometheus.NewDesc("queue_worker_queue_depth", "Jobs waiting in a resque queue.", []string{"queue"}, nil),
		oldest: prometheus.NewDesc("queue_worker_queue_oldest_job_age_seconds",
			"How long the job at the head of a resque queue (the next to be taken) has been there, as this replica's scrapes saw it; 0 when the queue is empty. Resque jobs carry no enqueue time: a job's age counts from the first scrape that saw it at the head.",
			[]string{"queue"}, nil),
		failed:  prometheus.NewDesc("queue_worker_queue_failed_list_length", "Entries in the resque failed list.", nil, nil),
		delayed: prometheus.NewDesc("queue_worker_queue_delayed_timestamps", "Timestamps with delayed jobs scheduled.", nil, nil),
		up:      prometheus.NewDesc("queue_worker_queue_depth_scrape_ok", "1 if the depth scrape reached Redis.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (d *DepthCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- d.depth
	ch <- d.oldest
	ch <- d.failed
	ch <- d.delayed
	ch <- d.up
}

// Collect implements prometheus.Collector.
func (d *DepthCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), d.timeout)
	defer cancel()
	pipe := d.rdb.Pipeline()
	lens := make([]*redis.IntCmd, len(d.queues))
	digests := make([]*redis.Cmd, len(d.queues))
	for i, q := range d.queues {
		lens[i] = pipe.LLen(ctx, d.keys.Queue(q))
		// EVAL, not EVALSHA: a pipeline cannot fall back on NOSCRIPT.
		digests[i] = headDigestScript.Eval(ctx, pipe, []string{d.keys.Queue(q)})
	}
	failed := pipe.LLen(ctx, d.keys.Failed())
	delayed := pipe.ZCard(ctx, d.keys.DelayedSchedule())
	if _, err := pipe.Exec(ctx); err != nil {
		ch <- prometheus.MustNewConstMetric(d.up, prometheus.GaugeValue, 0)
		return
	}
	now := d.now()
	d.mu.Lock()
	for i, q := range d.queues {
		ch <- prometheus.MustNewConstMetric(d.depth, prometheus.GaugeValue, float64(lens[i].Val()), q)
		digest, _ := digests[i].Text()
		h := d.heads[q]
		if digest != h.digest {
			h = head{digest: digest, since: now}
			d.heads[q] = h
		}
		age := 0.0
		if digest != "" {
			age = now.Sub(h.since).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(d.oldest, prometheus.GaugeValue, age, q)
	}
	d.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(d.failed, prometheus.GaugeValue, float64(failed.Val()))
	ch <- prometheus.MustNewConstMetric(d.delayed, prometheus.GaugeValue, float64(delayed.Val()))
	ch <- prometheus.MustNewConstMetric(d.up, prometheus.GaugeValue, 1)
}
