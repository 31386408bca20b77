package worker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/breaker"
	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// Job classes of the builds queue.
const (
	ClassStart = "start"
	ClassStop  = "stop"
)

// Executor is what the worker needs from the Kubernetes side.
type Executor interface {
	Start(ctx context.Context, b *build.Config, d weightage.Decision) (*executor.StartResult, error)
	Stop(ctx context.Context, buildID int64) error
}

// ConfigStore is queue-service's buildConfigs hash.
type ConfigStore interface {
	Get(ctx context.Context, buildID int64) ([]byte, error)
	Delete(ctx context.Context, buildID int64) error
}

// RulesSource returns the routing rules in force.
type RulesSource interface {
	Current() *weightage.Rules
}

// StopMarks record stops so that a start never outlives its build's stop,
// whichever replica or slot handles each.
type StopMarks interface {
	MarkStopped(ctx context.Context, buildID int64) error
	Stopped(ctx context.Context, buildID, jobID int64) (bool, error)
}

// Worker handles deliveries from the queue.
type Worker struct {
	exec    Executor
	configs ConfigStore
	rules   RulesSource
	marks   StopMarks
	// inflight counts pods for the routing budgets; nil = not enforced.
	inflight InFlightCounter
	// verify, CI API reporting and fallback; nil verifier = off (SetVerify).
	verifier   Verifier
	reporter   Reporter
	learned    Learned
	verifyOpts VerifyOptions
	log        *zap.Logger
	metrics    *Metrics
}

type queueJob = queue.Job

// New returns a worker. metrics may be nil.
func New(exec Executor, configs ConfigStore, rules RulesSource, marks StopMarks, log *zap.Logger, metrics *Metrics) *Worker {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	return &Worker{exec: exec, configs: configs, rules: rules, marks: marks, log: log, metrics: metrics}
}

// permanentError is a failure no retry can fix; exception becomes the
// failed-list entry's exception name.
type permanentError struct {
	exception string
	err       error
}

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

func permanent(exception string, err error) error {
	return &permanentError{exception: exception, err: err}
}

// Handle works one job and settles it.
func (w *Worker) Handle(ctx context.Context, d *queue.Delivery) {
	start := time.Now()
	class := classLabel(d.Job.Class)
	log := w.log.With(zap.String("class", d.Job.Class), zap.String("queue", d.Job.Queue))

	next, err := w.dispatch(ctx, d.Job, log)
	w.metrics.Duration.WithLabelValues(class).Observe(time.Since(start).Seconds())

	if err == nil && next != nil {
		if ferr := d.FollowUp(ctx, next.class, next.args, next.delay); ferr != nil {
			log.Error("scheduling the follow-up failed; the job stays in flight for recovery", zap.String("follow_up", next.class), zap.Error(ferr))
			return
		}
		w.metrics.Jobs.WithLabelValues(class, "succeeded").Inc()
		return
	}
	if err == nil {
		if aerr := d.Ack(ctx); aerr != nil {
			log.Error("job done but ack failed; it will be redelivered (idempotent)", zap.Error(aerr))
		}
		w.metrics.Jobs.WithLabelValues(class, "succeeded").Inc()
		return
	}
	if ctx.Err() != nil {
		// Shutting down past the grace period: the job goes back, not to the failed list.
		if rerr := d.Requeue(context.WithoutCancel(ctx)); rerr != nil {
			log.Error("returning an interrupted job failed; it stays in flight", zap.Error(rerr))
		}
		w.metrics.Jobs.WithLabelValues(class, "requeued").Inc()
		return
	}
	if errors.Is(err, breaker.ErrOpen) {
		// A dependency is down: the job waits, it is not failed.
		err = &delayError{reason: "dependency-unavailable", msg: err.Error()}
	}
	var held *delayError
	if errors.As(err, &held) {
		w.delay(ctx, d, held, class, log)
		return
	}
	var perm *permanentError
	if errors.As(err, &perm) {
		log.Error("job cannot succeed; writing it to the failed list", zap.String("reason", err.Error()), zap.String("exception", perm.exception))
		if ferr := d.Fail(ctx, perm.exception, err); ferr != nil {
			log.Error("writing the failed job failed; it stays in flight for recovery", zap.Error(ferr))
		}
		w.metrics.Jobs.WithLabelValues(class, "failed").Inc()
		return
	}
	retried, rerr := d.Retry(ctx, "Error", err)
	switch {
	case rerr != nil:
		log.Error("re-queueing a failed attempt failed; it stays in flight for recovery", zap.String("reason", err.Error()), zap.Error(rerr))
	case retried:
		log.Warn("job attempt failed; re-queued with backoff", zap.String("reason", err.Error()), zap.Int("attempt", d.Job.Attempt+1))
		w.metrics.Jobs.WithLabelValues(class, "retried").Inc()
	default:
		log.Error("job failed after its last retry; written to the failed list", zap.String("reason", err.Error()))
		w.metrics.Jobs.WithLabelValues(class, "failed").Inc()
	}
}

func (w *Worker) dispatch(ctx context.Context, j *queue.Job, log *zap.Logger) (*followUp, error) {
	switch j.Class {
	case ClassStart:
		return w.start(ctx, j, log)
	case ClassStop:
		return nil, w.stop(ctx, j, log)
	case ClassVerify:
		payload, err := j.Payload()
		if err != nil {
			return nil, permanent("InvalidPayload", err)
		}
		return w.verify(ctx, payload, log)
	default:
		// node-resque's own message for a class it has no job for.
		//lint:ignore ST1005 resque tooling users know this exact wording
		return nil, permanent("Error", fmt.Errorf("No job defined for class %q", j.Class))
	}
}

// buildConfig decodes args[0] and, for queue-service's ids-only form, loads
// the full config from the buildConfigs hash. forStart: a missing hash entry
// is fatal for start; stop can work from the ids alone.
func (w *Worker) buildConfig(ctx context.Context, j *queue.Job, forStart bool) (*build.Config, error) {
	payload, err := j.Payload()
	if err != nil {
		return nil, permanent("InvalidPayload", err)
	}
	args, err := build.Decode(payload)
	if err != nil {
		return nil, permanent("InvalidPayload", fmt.Errorf("decoding args[0]: %w", err))
	}
	if !args.IDsOnly() || args.BuildID <= 0 {
		return args, nil
	}
	raw, err := w.configs.Get(ctx, args.BuildID)
	switch {
	case errors.Is(err, queue.ErrNoBuildConfig):
		if !forStart {
			return args, nil
		}
		return nil, permanent("MissingBuildConfig", err)
	case err != nil:
		return nil, err
	}
	full, err := build.Decode(raw)
	if err != nil {
		return nil, permanent("InvalidBuildConfig", fmt.Errorf("decoding buildConfigs entry of build %d: %w", args.BuildID, err))
	}
	full.MergeIDs(args)
	return full, nil
}

func (w *Worker) start(ctx context.Context, j *queue.Job, log *zap.Logger) (*followUp, error) {
	b, err := w.buildConfig(ctx, j, true)
	if err != nil {
		return nil, err
	}
	if err := b.ValidateStart(); err != nil {
		return nil, permanent("InvalidPayload", err)
	}
	log = log.With(zap.Int64("build_id", b.BuildID), zap.Int64("job_id", b.JobID))
	if stopped, err := w.marks.Stopped(ctx, b.BuildID, b.JobID); err != nil {
		return nil, err
	} else if stopped {
		log.Info("build was stopped before it started; not launching it")
		return nil, nil
	}
	if b.VirtualJob {
		// queue-service's consumer skips the executor for virtual jobs.
		if w.reporter != nil {
			if err := w.classifyReport(w.reporter.ReportSuccessSkipped(ctx, b.APIURI, b.BuildID, b.Token)); err != nil {
				return nil, err
			}
		}
		log.Info("virtual job: nothing to launch")
		return nil, nil
	}
	in := routing.Input(b)
	if w.learned != nil {
		if in.LearnedExcluded, err = w.learned.Excluded(ctx, b.Container); err != nil {
			return nil, err
		}
	}
	rules := w.rules.Current() // one rule set for the route and its budget
	d := weightage.Route(in, rules)
	if d.IgnoredExecutor != "" {
		log.Warn("executor annotation names no known executor; routing by the other rules", zap.String("executor", d.IgnoredExecutor))
	}
	if err := w.admit(ctx, rules, d); err != nil {
		return nil, err
	}
	res, err := w.exec.Start(ctx, b, d)
	if err != nil {
		if executor.Permanent(err) {
			return nil, permanent("PodRejected", err)
		}
		return nil, err
	}
	if res.Created {
		w.metrics.Decisions.WithLabelValues(string(d.Runtime), string(d.Rule)).Inc()
		if d.Rule == weightage.RuleExcluded {
			w.metrics.ExclusionHits.WithLabelValues(d.Pattern).Inc()
		}
		// A stop handled while we were creating may have found no pod to
		// delete: look again now that the pod exists.
		if stopped, err := w.undoIfStopped(ctx, b.BuildID, b.JobID, log); stopped || err != nil {
			return nil, err
		}
	}
	log.Info("build started",
		zap.String("runtime", string(res.Runtime)),
		zap.String("rule", string(d.Rule)),
		zap.String("matched_pattern", d.Pattern),
		zap.Int("bucket", d.Bucket),
		zap.String("pod", res.Pod.Name),
		zap.Bool("created", res.Created))
	return w.verifyAfterStart(b, res, 0), nil
}

func (w *Worker) stop(ctx context.Context, j *queue.Job, log *zap.Logger) error {
	b, err := w.buildConfig(ctx, j, false)
	if err != nil {
		return err
	}
	if err := b.ValidateStop(); err != nil {
		return permanent("InvalidPayload", err)
	}
	log = log.With(zap.Int64("build_id", b.BuildID))
	// Mark first: a start of this build handled from now on, anywhere, sees it.
	if err := w.marks.MarkStopped(ctx, b.BuildID); err != nil {
		return err
	}
	if b.Started != nil && !*b.Started {
		log.Info("stop of a build that never started; nothing to delete")
	} else if err := w.exec.Stop(ctx, b.BuildID); err != nil {
		if executor.Permanent(err) {
			return permanent("StopRejected", err)
		}
		return err
	}
	// queue-service's stop drops the build's config; we own that consumer role.
	if err := w.configs.Delete(ctx, b.BuildID); err != nil {
		log.Warn("build stopped but its buildConfigs entry could not be deleted", zap.Error(err))
	}
	log.Info("build stopped")
	return nil
}

// undoIfStopped deletes a build's pods if the build was stopped meanwhile:
// a stop handled while we were creating a pod may have found none to
// delete, so look again once the pod exists.
func (w *Worker) undoIfStopped(ctx context.Context, buildID, jobID int64, log *zap.Logger) (bool, error) {
	stopped, err := w.marks.Stopped(ctx, buildID, jobID)
	if err != nil || !stopped {
		return false, err
	}
	log.Info("build was stopped while its pod was being created; deleting its pods")
	return true, w.exec.Stop(ctx, buildID)
}

// classLabel keeps the class metric label bounded.
func classLabel(c string) string {
	if c == ClassStart || c == ClassStop || c == ClassVerify {
		return c
	}
	return "other"
}

// Metrics are the worker's collectors.
type Metrics struct {
	Jobs      *prometheus.CounterVec
	Decisions *prometheus.CounterVec
	Duration  *prometheus.HistogramVec
	// ExclusionHits counts created pods per matched exclusion pattern.
	ExclusionHits *prometheus.CounterVec
	// Delayed counts starts put back because their runtime was paused or
	// at its budget.
	Delayed *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Jobs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "jobs_total",
			Help: "Jobs handled by class (start, stop, verify, other) and outcome (succeeded, retried, delayed, failed, requeued).",
		}, []string{"class", "outcome"}),
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "routing_decisions_total",
			Help: "Routing decisions that created a pod, by runtime and rule.",
		}, []string{"runtime", "rule"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "queue_worker", Name: "job_duration_seconds",
			Help:    "Time to handle one attempt of a job.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
		}, []string{"class"}),
		ExclusionHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "routing_exclusion_hits_total",
			Help: "Pods created on hyperd because the image matched an exclusion, by pattern.",
		}, []string{"pattern"}),
		Delayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "routing_delayed_total",
			Help: "Jobs delayed, not failed: runtime paused (reason paused), at its budget of pods in flight (budget), or a dependency unavailable (dependency-unavailable, ci-api-unavailable; runtime empty).",
		}, []string{"runtime", "reason"}),
	}
	for _, c := range []string{ClassStart, ClassStop, ClassVerify, "other"} {
		for _, o := range []string{"succeeded", "retried", "failed", "requeued", "delayed"} {
			m.Jobs.WithLabelValues(c, o)
		}
	}
	for _, rt := range weightage.AllRuntimes {
		for _, r := range weightage.AllRules {
			m.Decisions.WithLabelValues(string(rt), string(r))
		}
		for _, reason := range []string{"paused", "budget"} {
			m.Delayed.WithLabelValues(string(rt), reason)
		}
	}
	if reg != nil {
		reg.MustRegister(m.Jobs, m.Decisions, m.Duration, m.ExclusionHits, m.Delayed)
	}
	return m
}
