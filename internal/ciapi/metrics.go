package ciapi

import "github.com/prometheus/client_golang/prometheus"

// Request kinds: the kind label of the request metrics.
const (
	KindScheduled = "scheduled"
	// KindRead is a GET of the build: what the API already has, read
	// before repeating an update an earlier attempt may have delivered.
	KindRead    = "read"
	KindWaiting = "waiting"
	KindFailure = "failure"
	KindSkipped = "skipped"
	KindOther   = "other"
)

var (
	allKinds      = []string{KindScheduled, KindWaiting, KindFailure, KindSkipped, KindOther, KindStep, KindRead}
	allCodeClass  = []string{"2xx", "4xx", "5xx", "error"}
	allRejectCode = []string{"401", "403", "404", "other"}
)

// Metrics are the client's collectors.
type Metrics struct {
	// Requests counts HTTP attempts (each retry is one) by kind and by
	// code_class: 2xx, 4xx, 5xx, or error (no answer: transport error or
	// timeout). Calls refused by the open breaker are not attempts; see
	// queue_worker_breaker_rejected_total.
	Requests *prometheus.CounterVec
	// Duration is the time of one HTTP attempt, by kind.
	Duration *prometheus.HistogramVec
	// Rejected counts updates the API refused with a non-retryable 4xx, by
	// code: 401, 403, 404, or other.
	Rejected *prometheus.CounterVec
	// Untrusted counts updates whose build apiUri was not a trusted CI API
	// and that went to ecosystem.api instead.
	Untrusted prometheus.Counter
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "ciapi_requests_total",
			Help: "CI API build-update attempts by kind (scheduled, waiting, failure, skipped, other) and code class (2xx, 4xx, 5xx, error).",
		}, []string{"kind", "code_class"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "queue_worker", Name: "ciapi_request_seconds",
			Help:    "Duration of one CI API build-update attempt, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"kind"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "ciapi_rejected_total",
			Help: "CI API build updates refused with a non-retryable 4xx, by code (401, 403, 404, other).",
		}, []string{"code"}),
		Untrusted: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "ciapi_untrusted_api_uri_total",
			Help: "CI API build updates whose build apiUri was neither ecosystem.api nor a trusted CI API; they went to ecosystem.api instead.",
		}),
	}
	for _, k := range allKinds {
		m.Duration.WithLabelValues(k)
		for _, c := range allCodeClass {
			m.Requests.WithLabelValues(k, c)
		}
	}
	for _, c := range allRejectCode {
		m.Rejected.WithLabelValues(c)
	}
	if reg != nil {
		reg.MustRegister(m.Requests, m.Duration, m.Rejected, m.Untrusted)
	}
	return m
}

func codeClass(code int) string {
	switch {
	case code == 0:
		return "error"
	case code < 300:
		return "2xx"
	case code < 500:
		return "4xx"
	}
	return "5xx"
}
