package queue

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the queue's collectors. Labels are bounded: queue names come
// from config, ops from this package.
type Metrics struct {
	Taken        *prometheus.CounterVec
	Acked        *prometheus.CounterVec
	DeadLettered *prometheus.CounterVec
	RedisErrors  *prometheus.CounterVec
	TakeToSettle prometheus.Histogram
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Taken: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Subsystem: "queue", Name: "taken_total",
			Help: "Jobs taken from a resque queue.",
		}, []string{"queue"}),
		Acked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Subsystem: "queue", Name: "acked_total",
			Help: "Jobs acknowledged (done) and removed from flight.",
		}, []string{"queue"}),
		DeadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Subsystem: "queue", Name: "dead_lettered_total",
			Help: "Jobs written to the resque failed list.",
		}, []string{"queue"}),
		RedisErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Subsystem: "queue", Name: "redis_errors_total",
			Help: "Redis calls that failed, by operation.",
		}, []string{"op"}),
		TakeToSettle: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "queue_worker", Subsystem: "queue", Name: "take_to_settle_seconds",
			Help:    "Time from taking a job to acking or dead-lettering it.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Taken, m.Acked, m.DeadLettered, m.RedisErrors, m.TakeToSettle)
	}
	return m
}
