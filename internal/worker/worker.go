package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/breaker"
	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/ciapi"
	"github.com/sdkata/queue-worker/internal/diskcache"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/gate"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// Job classes of the builds queue.
const (
	ClassStart = "start"
	ClassStop  = "stop"
	// ClassReport is our FAILURE report of a start that will never run,
	// queued by the same script that writes the start to the failed list.
	ClassReport = "report"
	// ClassVerify is the follow-up job older versions queued after every
	// start. Those still in Redis during a rolling upgrade ask the
	// supervisor for a sync of their build and are acked.
	ClassVerify = "verify"
	// ClassClear is queue-service's cache-clear job (cache queue).
	ClassClear = "clear"
)

// Classes are the job classes the worker handles.
var Classes = []string{ClassStart, ClassStop, ClassReport, ClassVerify, ClassClear}

// DeadLetterNotices: a start the queue dead-letters without this worker
// having finished it (a poison job) gets its FAILURE report queued all the
// same, as a report job.
var DeadLetterNotices = map[string]string{ClassStart: ClassReport}

// Executor creates and deletes build pods. StartWith runs afterPod once
// the pod exists, alongside the rest of the start.
type Executor interface {
	StartWith(ctx context.Context, b *build.Config, d weightage.Decision, attempt int, afterPod func(context.Context) error) (*executor.StartResult, error)
	Stop(ctx context.Context, buildID int64) error
}

// ConfigStore is queue-service's buildConfigs hash.
type ConfigStore interface {
	Get(ctx context.Context, buildID int64) ([]byte, error)
	Delete(ctx context.Context, buildID int64) error
}

// Router takes the routing decision of a start.
type Router interface {
	Decide(ctx context.Context, b *build.Config) (routing.Decision, error)
}

// StopMarks record stops so that a start never outlives its build's stop,
// whichever replica or slot handles each.
type StopMarks interface {
	MarkStopped(ctx context.Context, buildID int64) error
	Stopped(ctx context.Context, buildID, jobID int64) (bool, error)
}

// Reporter sends the updates a job itself owes the CI API.
type Reporter interface {
	ReportFailure(ctx context.Context, apiURI string, buildID int64, token, msg string) error
	ReportSuccessSkipped(ctx context.Context, apiURI string, buildID int64, token string) error
	UpdateBuild(ctx context.Context, apiURI string, buildID int64, token string, u ciapi.BuildUpdate) error
}

// Gate is queue-service's blockedBy/collapse state (see package gate).
type Gate interface {
	Decide(ctx context.Context, r gate.Request) (gate.Decision, error)
	Release(ctx context.Context, buildID, jobID int64, cause string) (bool, error)
}

// TimeoutRecorder writes a started build's timeoutConfigs entry.
type TimeoutRecorder interface {
	Record(ctx context.Context, buildID, jobID int64, timeoutMinutes int) error
}

// CacheCleaner removes what a clear job names from the disk cache.
type CacheCleaner interface {
	Clear(r diskcache.Request) (string, error)
}

// Resyncer asks the pod supervisor to look at a build again.
type Resyncer interface {
	Resync(buildKey string)
}

// Deps are what the worker works with.
type Deps struct {
	Executor   Executor
	Configs    ConfigStore
	Router     Router
	Marks      StopMarks
	Reporter   Reporter
	Supervisor Resyncer
	// Gate may be nil: starts are not gated (plugins.blockedBy.enabled off).
	Gate Gate
	// Timeouts may be nil: no timeoutConfigs entry is written.
	Timeouts TimeoutRecorder
	// Cache may be nil: clear jobs are acked without touching any disk.
	Cache CacheCleaner
	Log   *zap.Logger
	// Metrics may be nil (collectors not registered anywhere).
	Metrics *Metrics
}

// Options tune the worker.
type Options struct {
	// Prefix is the executor prefix (EXECUTOR_PREFIX), part of a build's
	// sdbuild label.
	Prefix string
	// HoldDelay is how long a start that cannot run now (its runtime paused
	// or at its budget) waits before it is tried again: short enough that
	// unpausing takes effect within seconds, long enough not to spin.
	HoldDelay time.Duration
	// UnavailableDelay is how long a job waits while a dependency (the
	// Kubernetes API, the CI API) is unavailable.
	UnavailableDelay time.Duration
	// Gate is the blockedBy policy (plugins.blockedBy).
	Gate gate.Policy
	// ReenqueueWait is how long a blocked start waits in the delayed
	// schedule before it is tried again (reenqueueWaitTime).
	ReenqueueWait time.Duration
}

// Worker handles the jobs of the builds queue: it decodes a job, resolves
// ids-only jobs through the buildConfigs hash, routes and launches a start
// (or deletes the build's pods on stop), and says how it went; the queue
// settles. What happens to a pod after it exists is the supervisor's.
type Worker struct {
	deps Deps
	opts Options
	log  *zap.Logger
	m    *Metrics
}

// New returns a worker.
func New(deps Deps, opts Options) *Worker {
	if deps.Metrics == nil {
		deps.Metrics = NewMetrics(nil)
	}
	if opts.HoldDelay <= 0 {
		opts.HoldDelay = 10 * time.Second
	}
	if opts.UnavailableDelay <= 0 {
		opts.UnavailableDelay = 10 * time.Second
	}
	if opts.ReenqueueWait <= 0 {
		opts.ReenqueueWait = time.Minute
	}
	return &Worker{deps: deps, opts: opts, log: deps.Log, m: deps.Metrics}
}

// Handle works one job.
func (w *Worker) Handle(ctx context.Context, j *queue.Job) queue.Outcome {
	log := w.log.With(zap.String("class", j.Class), zap.String("queue", j.Queue))
	switch j.Class {
	case ClassStart:
		return w.start(ctx, j, log)
	case ClassStop:
		return w.stop(ctx, j, log)
	case ClassReport:
		return w.report(ctx, j, log)
	case ClassVerify:
		return w.verify(j)
	case ClassClear:
		return w.clear(j, log)
	}
	// node-resque's own message for a class it has no job for.
	//lint:ignore ST1005 resque tooling users know this exact wording
	return queue.Fail("Error", fmt.Errorf("No job defined for class %q", j.Class))
}

// postpone puts a job back while a dependency is unavailable: nothing is
// wrong with the job itself.
func (w *Worker) postpone(err error) queue.Outcome {
	w.m.Delayed.WithLabelValues("", "dependency-unavailable").Inc()
	return queue.Postpone(w.opts.UnavailableDelay, "dependency unavailable: "+err.Error())
}

// kubeFailed maps a Kubernetes error: an open breaker postpones, a rejected
// object (forbidden, invalid) fails at once, anything else is retried.
func (w *Worker) kubeFailed(err error, exception string) queue.Outcome {
	switch {
	case errors.Is(err, breaker.ErrOpen):
		return w.postpone(err)
	case executor.Permanent(err):
		return queue.Fail(exception, err)
	}
	return queue.Retry(err)
}

// ciFailed maps a CI API error: unavailable (breaker open, transport, 5xx)
// postpones, rejected (401/403/404) fails at once.
func (w *Worker) ciFailed(err error) queue.Outcome {
	switch {
	case ciapi.IsRejected(err):
		return queue.Fail("CIAPIRejected", err)
	case ciapi.IsUnavailable(err):
		return w.postpone(err)
	}
	return queue.Retry(err)
}

// buildConfig decodes args[0] and, for queue-service's ids-only form, loads
// the full config from the buildConfigs hash. forStart: a missing hash entry
// is fatal for start (unless its build was stopped, see start); stop can
// work from the ids alone.
func (w *Worker) buildConfig(ctx context.Context, j *queue.Job, forStart bool) (*build.Config, *queue.Outcome) {
	payload, err := j.Payload()
	if err != nil {
		o := queue.Fail("InvalidPayload", err)
		return nil, &o
	}
	args, err := build.Decode(payload)
	if err != nil {
		o := queue.Fail("InvalidPayload", fmt.Errorf("decoding args[0]: %w", err))
		return nil, &o
	}
	if !args.IDsOnly() || args.BuildID <= 0 {
		return args, nil
	}
	raw, err := w.deps.Configs.Get(ctx, args.BuildID)
	switch {
	case errors.Is(err, queue.ErrNoBuildConfig):
		if !forStart {
			return args, nil
		}
		o := queue.Fail("MissingBuildConfig", err)
		return nil, &o
	case err != nil:
		o := queue.Retry(err)
		return nil, &o
	}
	full, err := build.Decode(raw)
	if err != nil {
		o := queue.Fail("InvalidBuildConfig", fmt.Errorf("decoding buildConfigs entry of build %d: %w", args.BuildID, err))
		return nil, &o
	}
	full.MergeIDs(args)
	return full, nil
}

// tellTimeout bounds a best-effort BLOCKED or COLLAPSED update.
const tellTimeout = 15 * time.Second

// redactedToken is what the failed list writes in place of a token.
const redactedToken = "[redacted]"

func (w *Worker) start(ctx context.Context, j *queue.Job, log *zap.Logger) queue.Outcome {
	b, bad := w.buildConfig(ctx, j, true)
	if bad != nil {
		if errors.Is(bad.Err(), queue.ErrNoBuildConfig) {
			// queue-service's stop drops the build's config: a start of a
			// build aborted while it waited comes back without one.
			return w.startWithoutConfig(ctx, j, *bad, log)
		}
		return *bad
	}
	if b.Token == redactedToken {
		// A start retried from the failed list: the list redacts tokens.
		return queue.Fail("TokenRedacted", fmt.Errorf("build %d: its token is %q: the start was retried from the failed list, which redacts tokens; put the build's token back in args[0].token before retrying it", b.BuildID, redactedToken))
	}
	if err := b.ValidateStart(); err != nil {
		return queue.Fail("InvalidPayload", err)
	}
	out := w.launch(ctx, b, log.With(zap.Int64("build_id", b.BuildID), zap.Int64("job_id", b.JobID)))
	// A valid start that ends in the failed list leaves a build the CI
	// shows as QUEUED: the same settle queues its FAILURE report. (A start
	// without a usable config has no token to report with.)
	msg := "Build failed to start"
	if err := out.Err(); err != nil {
		msg += ": " + err.Error()
	}
	return out.ReportDeadLetter(queue.NewJob{Class: ClassReport, Args: []any{j.Args[0], reportArgs{Message: msg}}})
}

// startWithoutConfig handles an ids-only start whose buildConfigs entry is
// gone: a build that was stopped (queue-service's abort, or ours) is done
// and leaves its job's waiting list; anything else fails as before.
func (w *Worker) startWithoutConfig(ctx context.Context, j *queue.Job, missing queue.Outcome, log *zap.Logger) queue.Outcome {
	payload, _ := j.Payload()
	args, err := build.Decode(payload)
	if err != nil {
		return missing
	}
	stopped, err := w.deps.Marks.Stopped(ctx, args.BuildID, args.JobID)
	if err != nil {
		return queue.Retry(err)
	}
	if !stopped {
		return missing
	}
	log = log.With(zap.Int64("build_id", args.BuildID), zap.Int64("job_id", args.JobID))
	if out := w.release(ctx, args, gate.CauseAborted, log); out != nil {
		return *out
	}
	log.Info("build was aborted before it started (its config is gone); not launching it", zap.String("reason", "aborted"))
	return queue.Done()
}

// release drops the build from its job's start state (package gate); with
// no gate, it drops the build's config as a stop does. nil: done.
func (w *Worker) release(ctx context.Context, b *build.Config, cause string, log *zap.Logger) *queue.Outcome {
	var err error
	if w.deps.Gate != nil {
		var held bool
		held, err = w.deps.Gate.Release(ctx, b.BuildID, b.JobID, cause)
		if err == nil && held {
			log.Info("released the job's running key; its next waiting build can start", zap.String("reason", cause))
		}
	} else if cause == gate.CauseStop {
		err = w.deps.Configs.Delete(ctx, b.BuildID)
	}
	if err != nil {
		o := queue.Retry(err)
		return &o
	}
	return nil
}

// gateStart asks the gate whether the build may start now. ok: go on; else
// the outcome says what became of the start (blocked: back in the delayed
// schedule after the re-enqueue wait, no attempt spent; collapsed: done).
func (w *Worker) gateStart(ctx context.Context, b *build.Config, log *zap.Logger) (out queue.Outcome, ok bool) {
	if w.deps.Gate == nil {
		return queue.Outcome{}, true
	}
	req, err := gate.RequestFor(b, w.opts.Gate)
	if err != nil {
		return queue.Fail("InvalidPayload", err), false
	}
	d, err := w.deps.Gate.Decide(ctx, req)
	if err != nil {
		return queue.Retry(err), false
	}
	switch d.Action {
	case gate.Block:
		log.Info("start blocked; it waits in its job's waiting list and is tried again after the re-enqueue wait",
			zap.String("reason", d.Reason), zap.Int64s("blocking_builds", d.Blocking), zap.Duration("retry_in", w.opts.ReenqueueWait))
		w.tell(ctx, b, d, log)
		return queue.Postpone(w.opts.ReenqueueWait, "blocked"), false
	case gate.Collapse:
		log.Info("build collapsed into a newer build of its job; not launching it",
			zap.String("reason", d.Reason), zap.Int64("collapsed_to", d.CollapsedTo))
		w.tell(ctx, b, d, log)
		if out := w.release(ctx, b, gate.CauseCollapsed, log); out != nil {
			return *out, false
		}
		return queue.Done(), false
	}
	if d.Reason == gate.ReasonAlreadyRunning {
		log.Info("start already past the gate (a retry or redelivery); going on", zap.String("reason", d.Reason))
	}
	return queue.Outcome{}, true
}

// tell sends the CI API a BLOCKED or COLLAPSED status, as queue-service
// does: best effort, a failure is logged and the start goes on.
func (w *Worker) tell(ctx context.Context, b *build.Config, d gate.Decision, log *zap.Logger) {
	// Bounded: a failing CI API must not hold the slot through every retry
	// of a report the next try repeats anyway.
	ctx, cancel := context.WithTimeout(ctx, tellTimeout)
	defer cancel()
	u := ciapi.BuildUpdate{Status: d.Status(), StatusMessage: d.Message()}
	if err := w.deps.Reporter.UpdateBuild(ctx, b.APIURI, b.BuildID, b.Token, u); err != nil {
		log.Warn("telling the CI API the build's status failed", zap.String("status", u.Status), zap.Error(err))
	}
}

func (w *Worker) launch(ctx context.Context, b *build.Config, log *zap.Logger) queue.Outcome {
	// The stop check and the routing decision (which reads the learned
	// exclusions) are independent Redis reads: one round trip for both.
	stopCheck := make(chan error, 1)
	var stopped bool
	go func() {
		var err error
		stopped, err = w.deps.Marks.Stopped(ctx, b.BuildID, b.JobID)
		stopCheck <- err
	}()
	var d routing.Decision
	var decideErr error
	if !b.VirtualJob {
		d, decideErr = w.deps.Router.Decide(ctx, b)
	}
	if err := <-stopCheck; err != nil {
		return queue.Retry(err)
	} else if stopped {
		// An earlier attempt of this start (a retry, or a redelivery after a
		// crash) may have made the pod after the stop found none to delete.
		if err := w.deps.Executor.Stop(ctx, b.BuildID); err != nil {
			return w.kubeFailed(err, "StopRejected")
		}
		if out := w.release(ctx, b, gate.CauseAborted, log); out != nil {
			return *out
		}
		log.Info("build was stopped before it started; not launching it (and deleted any pod an earlier attempt made)", zap.String("reason", "aborted"))
		return queue.Done()
	}
	if b.VirtualJob {
		// queue-service gates virtual jobs too, then skips the executor.
		if out, ok := w.gateStart(ctx, b, log); !ok {
			return out
		}
		if err := w.deps.Reporter.ReportSuccessSkipped(ctx, b.APIURI, b.BuildID, b.Token); err != nil {
			return w.ciFailed(err)
		}
		// Nothing runs, so nothing will stop it: let the job's next build go.
		if out := w.release(ctx, b, gate.CauseVirtual, log); out != nil {
			log.Warn("releasing a virtual job's running key failed; it expires on its own", zap.Error(out.Err()))
		}
		log.Info("virtual job: nothing to launch")
		return queue.Done()
	}
	if decideErr != nil {
		return queue.Retry(decideErr)
	}
	if d.IgnoredExecutor != "" {
		log.Warn("executor annotation names no known executor; routing by the other rules", zap.String("executor", d.IgnoredExecutor))
	}
	if d.Wait != nil {
		w.m.Delayed.WithLabelValues(string(d.Runtime), d.Wait.Reason).Inc()
		log.Info("start waits", zap.String("runtime", string(d.Runtime)), zap.String("reason", d.Wait.Message))
		return queue.Postpone(w.opts.HoldDelay, d.Wait.Message)
	}
	// The gate comes last before the pod: a start held for its runtime does
	// not hold its job's running key. From here the build holds it until
	// its stop, its dead letter's report or the key's TTL releases it; a
	// crash before the pod exists is redelivered and finds the key its own.
	if out, ok := w.gateStart(ctx, b, log); !ok {
		return out
	}
	// A stop handled while we were creating may have found no pod to
	// delete: look again once the pod exists.
	var stoppedMeanwhile bool
	res, err := w.deps.Executor.StartWith(ctx, b, d.Decision, 0, func(ctx context.Context) error {
		var err error
		stoppedMeanwhile, err = w.deps.Marks.Stopped(ctx, b.BuildID, b.JobID)
		return err
	})
	if err != nil && res == nil {
		return w.kubeFailed(err, "PodRejected")
	}
	if err != nil {
		return queue.Retry(err) // the pod exists; the stop re-check failed
	}
	if res.Created {
		w.m.Decisions.WithLabelValues(string(d.Runtime), string(d.Rule)).Inc()
		if d.Rule == weightage.RuleExcluded {
			w.m.ExclusionHits.WithLabelValues(d.Pattern).Inc()
		}
	}
	if stoppedMeanwhile {
		log.Info("build was stopped while its pod was being created; deleting its pods")
		if err := w.deps.Executor.Stop(ctx, b.BuildID); err != nil {
			return w.kubeFailed(err, "StopRejected")
		}
		if out := w.release(ctx, b, gate.CauseAborted, log); out != nil {
			return *out
		}
		return queue.Done()
	}
	if w.deps.Timeouts != nil {
		// Write-if-absent, so queue-service's startTimer (when the build
		// runs) keeps ours; a failure leaves the build without the
		// checker's backstop, which is no reason to fail its start.
		if err := w.deps.Timeouts.Record(ctx, b.BuildID, b.JobID, res.TimeoutMinutes); err != nil {
			log.Warn("recording the build's timeout config failed", zap.Error(err))
		}
	}
	log.Info("build started",
		zap.String("runtime", string(res.Runtime)),
		zap.String("rule", string(d.Rule)),
		zap.String("reason", d.Explanation.Reason),
		zap.String("pod", res.Pod),
		zap.Bool("created", res.Created))
	return queue.Done()
}

func (w *Worker) stop(ctx context.Context, j *queue.Job, log *zap.Logger) queue.Outcome {
	b, bad := w.buildConfig(ctx, j, false)
	if bad != nil {
		return *bad
	}
	if err := b.ValidateStop(); err != nil {
		return queue.Fail("InvalidPayload", err)
	}
	log = log.With(zap.Int64("build_id", b.BuildID))
	// Mark first: a start of this build handled from now on, anywhere, sees it.
	if err := w.deps.Marks.MarkStopped(ctx, b.BuildID); err != nil {
		return queue.Retry(err)
	}
	// Always delete by label, even for started:false: a start redelivered
	// with its original bytes may have made a pod the stop's sender never
	// heard of. Deleting nothing is cheap.
	if err := w.deps.Executor.Stop(ctx, b.BuildID); err != nil {
		return w.kubeFailed(err, "StopRejected")
	}
	// queue-service's stop drops the build's config and releases its job's
	// running key (or its place in the waiting list), so the job's next
	// build can start; we own that consumer role.
	if out := w.release(ctx, b, gate.CauseStop, log); out != nil {
		log.Warn("build stopped but its start state could not be released; retrying", zap.Error(out.Err()))
		return *out
	}
	log.Info("build stopped")
	return queue.Done()
}

// reportArgs is args[1] of a report job; args[0] is the start's own args[0].
type reportArgs struct {
	Message string `json:"message"`
}

// report sends the FAILURE of a start that will never run. While the CI API
// is unavailable it waits; it never gives up silently.
func (w *Worker) report(ctx context.Context, j *queue.Job, log *zap.Logger) queue.Outcome {
	var a reportArgs
	if len(j.Args) != 2 || json.Unmarshal(j.Args[1], &a) != nil || a.Message == "" {
		return queue.Fail("InvalidPayload", errors.New("a report job needs [buildConfig, {\"message\": ...}]"))
	}
	b, bad := w.buildConfig(ctx, j, true)
	if bad != nil {
		return *bad
	}
	log = log.With(zap.Int64("build_id", b.BuildID))
	if stopped, err := w.deps.Marks.Stopped(ctx, b.BuildID, b.JobID); err != nil {
		return queue.Retry(err)
	} else if stopped {
		log.Info("build was stopped; its failed start is not reported")
		return queue.Done()
	}
	if b.Token == "" || b.APIURI == "" {
		return queue.Fail("CannotReport", fmt.Errorf("build %d has no token or apiUri to report its failed start with", b.BuildID))
	}
	if err := w.deps.Reporter.ReportFailure(ctx, b.APIURI, b.BuildID, b.Token, a.Message); err != nil {
		return w.ciFailed(err)
	}
	log.Info("reported the failed start to the CI API", zap.String("reason", a.Message))
	// A start that will never run must not keep its job's running key.
	if out := w.release(ctx, b, gate.CauseDeadLettered, log); out != nil {
		log.Warn("releasing a failed start's running key failed; it expires on its own", zap.Error(out.Err()))
	}
	return queue.Done()
}

// clear handles queue-service's cache-clear job as buildcluster-queue-worker
// does: with the disk strategy it removes the scope's cache directory under
// ecosystem.cache.path (never anything outside it), and the job is acked
// either way, with a log line saying what happened.
func (w *Worker) clear(j *queue.Job, log *zap.Logger) queue.Outcome {
	payload, err := j.Payload()
	if err != nil {
		return queue.Fail("InvalidPayload", err)
	}
	var r diskcache.Request
	if err := json.Unmarshal(payload, &r); err != nil {
		return queue.Fail("InvalidPayload", fmt.Errorf("decoding a clear job's args[0]: %w", err))
	}
	log = log.With(zap.String("scope", r.Scope), zap.String("pipeline_id", string(r.PipelineID)), zap.String("id", string(r.ID)))
	if w.deps.Cache == nil {
		log.Info("cache clear acknowledged: no disk cache here", zap.String("reason", "no-disk-cache"))
		return queue.Done()
	}
	dir, err := w.deps.Cache.Clear(r)
	switch {
	case errors.Is(err, diskcache.ErrNotDisk):
		log.Info("cache clear acknowledged: the cache strategy is not disk, nothing to remove", zap.String("reason", "not-disk"))
	case errors.Is(err, diskcache.ErrRefused):
		log.Warn("cache clear refused and acknowledged", zap.String("reason", "refused"), zap.Error(err))
	case err != nil:
		log.Warn("cache clear failed and acknowledged", zap.String("dir", dir), zap.String("reason", "error"), zap.Error(err))
	default:
		log.Info("cache cleared", zap.String("dir", dir), zap.String("reason", "cleared"))
	}
	return queue.Done()
}

// verify handles an older version's follow-up job: the supervisor now
// watches every build pod, so all that is left is a sync of the build.
func (w *Worker) verify(j *queue.Job) queue.Outcome {
	payload, err := j.Payload()
	if err != nil {
		return queue.Fail("InvalidPayload", err)
	}
	var a struct {
		BuildID int64 `json:"buildId"`
	}
	if err := json.Unmarshal(payload, &a); err != nil || a.BuildID <= 0 {
		return queue.Fail("InvalidPayload", fmt.Errorf("decoding verify args: %v", err))
	}
	w.deps.Supervisor.Resync(executor.BuildLabel(w.opts.Prefix, a.BuildID))
	return queue.Done()
}

// Metrics are the worker's collectors.
type Metrics struct {
	Decisions *prometheus.CounterVec
	// ExclusionHits counts created pods per matched exclusion pattern.
	ExclusionHits *prometheus.CounterVec
	// Delayed counts starts put back because their runtime was paused or
	// at its budget, or a dependency was unavailable.
	Delayed *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "routing_decisions_total",
			Help: "Routing decisions that created a pod, by runtime and rule.",
		}, []string{"runtime", "rule"}),
		ExclusionHits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "routing_exclusion_hits_total",
			Help: "Pods created on hyperd because the image matched an exclusion, by pattern.",
		}, []string{"pattern"}),
		Delayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Name: "routing_delayed_total",
			Help: "Jobs delayed, not failed: runtime paused (reason paused), at its budget of pods in flight (budget), or a dependency unavailable (dependency-unavailable; runtime empty).",
		}, []string{"runtime", "reason"}),
	}
	for _, rt := range weightage.AllRuntimes {
		for _, r := range weightage.AllRules {
			m.Decisions.WithLabelValues(string(rt), string(r))
		}
		for _, reason := range []string{routing.WaitPaused, routing.WaitBudget} {
			m.Delayed.WithLabelValues(string(rt), reason)
		}
	}
	m.Delayed.WithLabelValues("", "dependency-unavailable")
	if reg != nil {
		reg.MustRegister(m.Decisions, m.ExclusionHits, m.Delayed)
	}
	return m
}
