package autopilot

import (
	"math"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sdkata/queue-worker/internal/weightage"
)

// Metrics are the autopilot's collectors. Every replica shows the share it
// routes with; only the leader decides, so only its decision counter and
// window gauges move.
type Metrics struct {
	Percent   prometheus.Gauge
	Paused    prometheus.Gauge
	Pinned    prometheus.Gauge
	Decisions *prometheus.CounterVec
	// The last evaluated window, per runtime.
	WindowBuilds      *prometheus.GaugeVec
	WindowFailureRate *prometheus.GaugeVec
	WindowSetupP90    *prometheus.GaugeVec
	LastDecision      prometheus.Gauge
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	g := func(name, help string) prometheus.Gauge {
		return prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "queue_worker", Subsystem: "autopilot", Name: name, Help: help})
	}
	m := &Metrics{
		Percent: g("percent", "Kata percentage of weighted builds the autopilot has in force; -1 when the autopilot is disabled."),
		Paused:  g("paused", "1 while an operator has paused the autopilot."),
		Pinned:  g("pinned", "1 while an operator has pinned the Kata percentage."),
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "autopilot", Name: "decisions_total",
			Help: "Autopilot decisions by outcome (promote, hold, step-back) and reason."}, []string{"outcome", "reason"}),
		WindowBuilds: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "queue_worker", Subsystem: "autopilot", Name: "window_builds",
			Help: "Weighted builds per runtime the last decision compared (hyperd: its baseline when its own window was too thin)."}, []string{"runtime"}),
		WindowFailureRate: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "queue_worker", Subsystem: "autopilot", Name: "window_failure_rate",
			Help: "Start failure rate per runtime in the last evaluated window; kind runtime (failures the runtime caused) or all."}, []string{"runtime", "kind"}),
		WindowSetupP90: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "queue_worker", Subsystem: "autopilot", Name: "window_setup_p90_seconds",
			Help: "p90 of pod creation to running per runtime in the last evaluated window."}, []string{"runtime"}),
		LastDecision: g("last_decision_timestamp_seconds", "Time of this replica's last autopilot decision (0 before any)."),
	}
	m.Percent.Set(-1)
	for _, o := range Outcomes {
		for _, r := range Reasons {
			if validPair(o, r) {
				m.Decisions.WithLabelValues(string(o), string(r))
			}
		}
	}
	for _, rt := range weightage.AllRuntimes {
		m.WindowBuilds.WithLabelValues(string(rt))
		m.WindowSetupP90.WithLabelValues(string(rt))
		for _, k := range []string{"runtime", "all"} {
			m.WindowFailureRate.WithLabelValues(string(rt), k)
		}
	}
	if reg != nil {
		reg.MustRegister(m.Percent, m.Paused, m.Pinned, m.Decisions, m.WindowBuilds, m.WindowFailureRate, m.WindowSetupP90, m.LastDecision)
	}
	return m
}

// validPair says which outcome a reason goes with.
func validPair(o Outcome, r Reason) bool {
	switch r {
	case ReasonHealthy:
		return o == Promote
	case ReasonRegression, ReasonRegressionTwice:
		return o == StepBack
	}
	return o == Hold
}

// observe publishes a decision and the figures it compared: for hyperd,
// the baseline when one stood in for a thin window.
func (m *Metrics) observe(d Decision) {
	m.Decisions.WithLabelValues(string(d.Outcome), string(d.Reason)).Inc()
	m.LastDecision.Set(float64(d.At.UnixNano()) / 1e9)
	hyperd := d.Figures.Hyperd
	if d.Baseline != nil {
		hyperd = d.Baseline.Hyperd
	}
	for rt, f := range map[weightage.Runtime]RuntimeFigures{weightage.Kata: d.Figures.Kata, weightage.Hyperd: hyperd} {
		m.WindowBuilds.WithLabelValues(string(rt)).Set(float64(f.Builds))
		m.WindowFailureRate.WithLabelValues(string(rt), "runtime").Set(f.RuntimeFailureRate())
		m.WindowFailureRate.WithLabelValues(string(rt), "all").Set(f.FailureRate())
		p90 := f.SetupP90Seconds
		if f.SetupSamples == 0 {
			p90 = math.NaN() // no start ran: no setup time, not a zero one
		}
		m.WindowSetupP90.WithLabelValues(string(rt)).Set(p90)
	}
}
