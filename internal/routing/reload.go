package routing

import (
	"fmt"
	"reflect"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// Metrics describe the rules in force and their reloads.
type Metrics struct {
	// ConfigInfo is 1 for the version of the rules in force, 0 for older ones.
	ConfigInfo      *prometheus.GaugeVec
	ReloadSuccess   prometheus.Gauge
	ReloadTimestamp prometheus.Gauge
	// Weight is the share of weighted builds per runtime, in percent
	// (hyperd = 100 - kata); -1 when no weight is configured.
	Weight *prometheus.GaugeVec
	Paused *prometheus.GaugeVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		ConfigInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "queue_worker", Name: "routing_config_info",
			Help: "1 for the version (hash) of the routing rules in force.",
		}, []string{"version"}),
		ReloadSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "queue_worker", Name: "routing_reload_success",
			Help: "Whether the last routing config reload succeeded (1) or was refused (0).",
		}),
		ReloadTimestamp: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "queue_worker", Name: "routing_reload_timestamp_seconds",
			Help: "Time of the last routing config load or reload attempt.",
		}),
		Weight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "queue_worker", Name: "routing_weight_percent",
			Help: "Percentage of weighted builds sent to each runtime; -1 when no weight is configured.",
		}, []string{"runtime"}),
		Paused: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "queue_worker", Name: "routing_runtime_paused",
			Help: "Whether a runtime is paused (1) for new starts.",
		}, []string{"runtime"}),
	}
	if reg != nil {
		reg.MustRegister(m.ConfigInfo, m.ReloadSuccess, m.ReloadTimestamp, m.Weight, m.Paused)
	}
	return m
}

func (m *Metrics) publish(r *weightage.Rules, prev string) {
	if prev != "" && prev != r.Version {
		m.ConfigInfo.WithLabelValues(prev).Set(0)
	}
	m.ConfigInfo.WithLabelValues(r.Version).Set(1)
	kata, hyperd := -1.0, -1.0
	if r.Weighted {
		kata = r.KataPercent()
		hyperd = 100 - kata
	}
	m.Weight.WithLabelValues(string(weightage.Kata)).Set(kata)
	m.Weight.WithLabelValues(string(weightage.Hyperd)).Set(hyperd)
	for _, rt := range weightage.AllRuntimes {
		v := 0.0
		if r.Paused[rt] {
			v = 1
		}
		m.Paused.WithLabelValues(string(rt)).Set(v)
	}
}

// Reloader applies reloaded configs to a Holder: on a valid config whose
// routing rules changed, it swaps them in; on an invalid one it keeps the
// rules in force. Its Apply is config.Watch's onChange.
type Reloader struct {
	holder  *weightage.Holder
	log     *zap.Logger
	metrics *Metrics
	now     func() time.Time

	mu  sync.Mutex
	cfg *config.Config // the last applied config, to spot non-routing changes
}

// NewReloader starts from cfg and the rules built from it, already in holder.
func NewReloader(holder *weightage.Holder, cfg *config.Config, log *zap.Logger, metrics *Metrics) *Reloader {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	r := &Reloader{holder: holder, log: log, metrics: metrics, now: time.Now, cfg: cfg}
	metrics.publish(holder.Current(), "")
	metrics.ReloadSuccess.Set(1)
	metrics.ReloadTimestamp.Set(float64(r.now().UnixNano()) / 1e9)
	return r
}

// Apply takes the outcome of a reload. It never panics and never leaves the
// holder without rules.
func (r *Reloader) Apply(cfg *config.Config, loadErr error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.metrics.ReloadTimestamp.Set(float64(r.now().UnixNano()) / 1e9)
	old := r.holder.Current()
	if loadErr != nil {
		r.metrics.ReloadSuccess.Set(0)
		r.log.Error("config reload refused; the routing rules in force stay",
			zap.String("rules_version", old.Version), zap.Error(loadErr))
		return
	}
	rules, err := Rules(cfg)
	if err != nil {
		r.metrics.ReloadSuccess.Set(0)
		r.log.Error("config reload refused; the routing rules in force stay",
			zap.String("rules_version", old.Version), zap.Error(err))
		return
	}
	if changed := nonRoutingChanges(r.cfg, cfg); len(changed) > 0 {
		r.log.Warn("config reload changed settings that only apply at start; restart to apply them",
			zap.Strings("sections", changed))
	}
	r.cfg = cfg
	r.metrics.ReloadSuccess.Set(1)
	if rules.Version == old.Version {
		r.log.Info("config reloaded; routing rules unchanged", zap.String("rules_version", old.Version))
		return
	}
	r.holder.Swap(rules)
	r.metrics.publish(rules, old.Version)
	fields := append(RulesFields(cfg, rules), zap.String("previous_rules_version", old.Version))
	r.log.Info("routing rules reloaded", fields...)
}

// RulesFields describes rules for a log line, with the derivation of the
// Kata percentage when it came from the reference's relative weights.
func RulesFields(cfg *config.Config, r *weightage.Rules) []zap.Field {
	fields := []zap.Field{
		zap.String("rules_version", r.Version),
		zap.String("default_runtime", string(r.Default)),
		zap.Strings("exclusions", r.Patterns()),
		zap.String("stickiness", string(r.Stickiness)),
	}
	if p := r.PausedRuntimes(); len(p) > 0 {
		fields = append(fields, zap.Any("paused", p))
	}
	if len(r.Budgets) > 0 {
		fields = append(fields, zap.Any("budgets", r.Budgets))
	}
	pct, derived := KataPercent(cfg)
	switch {
	case pct == nil:
		fields = append(fields, zap.String("weighted", "off: builds without annotation or exclusion go to the default runtime"))
	case derived:
		fields = append(fields, zap.Float64("kata_percent", *pct),
			zap.String("derived_from", fmt.Sprintf("relative weights k8s=%v k8s-vm=%v: k8s/(k8s+k8s-vm)",
				*cfg.Executor.K8s.Weightage, *cfg.Executor.K8sVM.Weightage)))
	default:
		fields = append(fields, zap.Float64("kata_percent", *pct))
	}
	return fields
}

// nonRoutingChanges names the top-level sections that differ between two
// configs once the routing inputs are set aside: those need a restart.
func nonRoutingChanges(a, b *config.Config) []string {
	strip := func(c *config.Config) config.Executor {
		e := c.Executor
		e.Plugin = ""
		e.K8s.Weightage, e.K8sVM.Weightage = nil, nil
		e.K8s.Exclusion, e.K8s.Exclusions = nil, nil
		return e
	}
	var out []string
	for _, s := range []struct {
		name string
		a, b any
	}{
		{"executor", strip(a), strip(b)},
		{"ecosystem", a.Ecosystem, b.Ecosystem},
		{"queue", a.Queue, b.Queue},
		{"worker", a.Worker, b.Worker},
		{"kubernetes", a.Kubernetes, b.Kubernetes},
		{"httpd", a.HTTPD, b.HTTPD},
		{"log", a.Log, b.Log},
	} {
		if !reflect.DeepEqual(s.a, s.b) {
			out = append(out, s.name)
		}
	}
	return out
}
