package breaker

import "github.com/prometheus/client_golang/prometheus"

// Metrics are the collectors shared by every breaker in the process; the
// name label is the dependency, so its values are a small fixed set.
type Metrics struct {
	// State is 0 closed, 1 half-open, 2 open. An open breaker becomes
	// half-open lazily, on the next call or State read after its timeout.
	State *prometheus.GaugeVec
	// Transitions counts state changes by the state entered.
	Transitions *prometheus.CounterVec
	// Rejected counts calls refused without running (ErrOpen).
	Rejected *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		State: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "queue_worker", Name: "breaker_state",
			Help: "Circuit breaker state per dependency: 0 closed, 1 half-open, 2 open.",
		}, []string{"name"}),
		Transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "breaker_transitions_total",
			Help: "Circuit breaker state changes per dependency, by the state entered (closed, half-open, open).",
		}, []string{"name", "to"}),
		Rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "breaker_rejected_total",
			Help: "Calls refused by an open (or saturated half-open) circuit breaker, per dependency.",
		}, []string{"name"}),
	}
	if reg != nil {
		reg.MustRegister(m.State, m.Transitions, m.Rejected)
	}
	return m
}

func (m *Metrics) init(name string) {
	m.State.WithLabelValues(name).Set(float64(StateClosed))
	for _, s := range []State{StateClosed, StateHalfOpen, StateOpen} {
		m.Transitions.WithLabelValues(name, s.String())
	}
	m.Rejected.WithLabelValues(name)
}

func (m *Metrics) observeTransition(name string, to State) {
	m.State.WithLabelValues(name).Set(float64(to))
	m.Transitions.WithLabelValues(name, to.String()).Inc()
}
