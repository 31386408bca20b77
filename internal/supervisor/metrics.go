package supervisor

import (
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/util/workqueue"

	"github.com/sdkata/queue-worker/internal/weightage"
)

// Metrics are the supervisor's collectors.
type Metrics struct {
	// Leader is 1 while this replica runs the supervisor.
	Leader prometheus.Gauge
	// Synced is 1 per informer (pods, events) once its cache has synced.
	Synced *prometheus.GaugeVec
	// Syncs counts sync(build) runs by result (ok, error).
	Syncs *prometheus.CounterVec
	// Actions counts the supervisor's visible effects by action.
	Actions *prometheus.CounterVec
	// SetupSeconds is pod setup per runtime and phase (see SetupPhases).
	SetupSeconds *prometheus.HistogramVec
	// Starts counts pod start outcomes: outcome running|failed, reason the
	// failure class or Kata signature ("" when running).
	Starts    *prometheus.CounterVec
	Fallbacks *prometheus.CounterVec
	// workqueue is client-go's workqueue instrumentation, named as in
	// Kubernetes components (workqueue_depth{name}, ...).
	workqueue *workqueueMetrics
}

// Actions (label values of queue_worker_supervisor_actions_total).
const (
	actReportNode    = "report-node"
	actReportWaiting = "report-waiting"
	actReportFailure = "report-failure"
	actFallback      = "fallback"
	actDeletePod     = "delete-pod"
	actFinish        = "finish"
)

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Leader: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "queue_worker", Subsystem: "supervisor", Name: "leader",
			Help: "1 while this replica holds the supervisor lease and supervises build pods."}),
		Synced: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "queue_worker", Name: "informer_synced",
			Help: "1 once an informer's cache (pods, events) has synced, 0 before or after it stopped."}, []string{"informer"}),
		Syncs: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "supervisor", Name: "syncs_total",
			Help: "Build syncs by result (ok; error: requeued with backoff)."}, []string{"result"}),
		Actions: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "supervisor", Name: "actions_total",
			Help: "Supervisor effects done: report-node, report-waiting, report-failure, fallback, delete-pod, finish."}, []string{"action"}),
		SetupSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "queue_worker", Name: "pod_setup_seconds",
			Help:    "Build pod setup time by runtime and phase (scheduled, sandbox, initialized, running, total), from pod condition timestamps.",
			Buckets: []float64{0.5, 1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600},
		}, []string{"runtime", "phase"}),
		Starts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "pod_start_total",
			Help: "Build pod starts by runtime, outcome (running, failed) and reason (failure class or Kata signature).",
		}, []string{"runtime", "outcome", "reason"}),
		Fallbacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "kata_fallbacks_total",
			Help: "Builds relaunched on hyperd after a Kata runtime failure, by signature.",
		}, []string{"signature"}),
		workqueue: newWorkqueueMetrics(),
	}
	for _, r := range []string{"ok", "error"} {
		m.Syncs.WithLabelValues(r)
	}
	for _, a := range []string{actReportNode, actReportWaiting, actReportFailure, actFallback, actDeletePod, actFinish} {
		m.Actions.WithLabelValues(a)
	}
	for _, i := range []string{"pods", "events"} {
		m.Synced.WithLabelValues(i)
	}
	if reg != nil {
		reg.MustRegister(m.Leader, m.Synced, m.Syncs, m.Actions, m.SetupSeconds, m.Starts, m.Fallbacks)
		m.workqueue.register(reg)
	}
	return m
}

// observeStart records how a pod start went: setup phases when it runs,
// the failure class or Kata signature when it failed.
func (m *Metrics) observeStart(rt weightage.Runtime, v Verdict, pod *corev1.Pod) {
	switch v.State {
	case StateRunning, StateSucceeded:
		m.Starts.WithLabelValues(string(rt), "running", "").Inc()
		for phase, d := range SetupPhases(pod) {
			m.SetupSeconds.WithLabelValues(string(rt), phase).Observe(d.Seconds())
		}
	case StateFailed:
		reason := string(v.Class)
		if v.Signature != SigNone {
			reason = string(v.Signature)
		}
		m.Starts.WithLabelValues(string(rt), "failed", reason).Inc()
	}
}

// workqueueMetrics implements client-go's workqueue.MetricsProvider with
// the metric names Kubernetes components use. A new leader term makes a new
// queue of the same name: the provider hands out the same children.
type workqueueMetrics struct {
	depth                   *prometheus.GaugeVec
	adds                    *prometheus.CounterVec
	latency                 *prometheus.HistogramVec
	workDuration            *prometheus.HistogramVec
	unfinished              *prometheus.GaugeVec
	longestRunningProcessor *prometheus.GaugeVec
	retries                 *prometheus.CounterVec
}

func newWorkqueueMetrics() *workqueueMetrics {
	buckets := prometheus.ExponentialBuckets(10e-9, 10, 12) // 10ns .. ~3h, as Kubernetes does
	return &workqueueMetrics{
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: "workqueue", Name: "depth",
			Help: "Current depth of the workqueue (builds waiting for a sync)."}, []string{"name"}),
		adds: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: "workqueue", Name: "adds_total",
			Help: "Adds handled by the workqueue."}, []string{"name"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{Subsystem: "workqueue", Name: "queue_duration_seconds",
			Help: "How long an item stays in the workqueue before being requested.", Buckets: buckets}, []string{"name"}),
		workDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{Subsystem: "workqueue", Name: "work_duration_seconds",
			Help: "How long processing an item from the workqueue takes.", Buckets: buckets}, []string{"name"}),
		unfinished: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: "workqueue", Name: "unfinished_work_seconds",
			Help: "Seconds of work in progress not yet observed by work_duration; large values mean a stuck worker."}, []string{"name"}),
		longestRunningProcessor: prometheus.NewGaugeVec(prometheus.GaugeOpts{Subsystem: "workqueue", Name: "longest_running_processor_seconds",
			Help: "Seconds the longest running processor of the workqueue has been running."}, []string{"name"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Subsystem: "workqueue", Name: "retries_total",
			Help: "Retries (rate-limited re-adds) handled by the workqueue."}, []string{"name"}),
	}
}

func (w *workqueueMetrics) register(reg prometheus.Registerer) {
	reg.MustRegister(w.depth, w.adds, w.latency, w.workDuration, w.unfinished, w.longestRunningProcessor, w.retries)
}

var _ workqueue.MetricsProvider = (*workqueueMetrics)(nil)

func (w *workqueueMetrics) NewDepthMetric(name string) workqueue.GaugeMetric {
	return w.depth.WithLabelValues(name)
}
func (w *workqueueMetrics) NewAddsMetric(name string) workqueue.CounterMetric {
	return w.adds.WithLabelValues(name)
}
func (w *workqueueMetrics) NewLatencyMetric(name string) workqueue.HistogramMetric {
	return w.latency.WithLabelValues(name)
}
func (w *workqueueMetrics) NewWorkDurationMetric(name string) workqueue.HistogramMetric {
	return w.workDuration.WithLabelValues(name)
}
func (w *workqueueMetrics) NewUnfinishedWorkSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return w.unfinished.WithLabelValues(name)
}
func (w *workqueueMetrics) NewLongestRunningProcessorSecondsMetric(name string) workqueue.SettableGaugeMetric {
	return w.longestRunningProcessor.WithLabelValues(name)
}
func (w *workqueueMetrics) NewRetriesMetric(name string) workqueue.CounterMetric {
	return w.retries.WithLabelValues(name)
}
