package supervisor

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"go.uber.org/zap"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/ciapi"
	"github.com/sdkata/queue-worker/internal/exclusion"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// Pods is what supervision needs from the executor.
type Pods interface {
	StartAttempt(ctx context.Context, b *build.Config, d weightage.Decision, attempt int) (*executor.StartResult, error)
	DeletePod(ctx context.Context, name string) error
	BuildRecord(ctx context.Context, podName string) (*build.Config, error)
}

// Reporter sends build updates to the CI API.
type Reporter interface {
	ReportScheduled(ctx context.Context, apiURI string, buildID int64, token, node string, at time.Time) error
	ReportWaiting(ctx context.Context, apiURI string, buildID int64, token, msg string) error
	ReportFailure(ctx context.Context, apiURI string, buildID int64, token, msg string) error
	GetBuild(ctx context.Context, apiURI string, buildID int64, token string) (*ciapi.Build, error)
}

// Learner counts images that failed on Kata and learns them as excluded
// once enough nodes have seen it (learned exclusions).
type Learner interface {
	Strike(ctx context.Context, e exclusion.Entry) (strikes int, learned bool, err error)
}

// StopMarks tell whether a build was stopped (a fallback must not relaunch
// a stopped build).
type StopMarks interface {
	Stopped(ctx context.Context, buildID, jobID int64) (bool, error)
}

// BuildConfigs is queue-service's buildConfigs hash: the build config of a
// pod whose Secret predates build records (a rolling upgrade).
type BuildConfigs interface {
	Get(ctx context.Context, buildID int64) ([]byte, error)
}

// Records keep what supervision has done for each pod (see
// AnnotationReportedNode), so whichever replica leads next carries on.
type Records interface {
	Of(ctx context.Context, uids []types.UID) ([]map[string]string, error)
	Add(ctx context.Context, uid types.UID, rec map[string]string) error
	Forget(ctx context.Context, uids []types.UID) error
}

// RulesSource returns the routing rules in force (their version is
// recorded on a relaunched pod).
type RulesSource interface {
	Current() *weightage.Rules
}

// Deps are what the supervisor works with.
type Deps struct {
	// Client watches events and holds the leader Lease.
	Client   kubernetes.Interface
	Cache    *Cache
	Records  Records
	Pods     Pods
	Reporter Reporter
	Learner  Learner
	Marks    StopMarks
	Configs  BuildConfigs
	Rules    RulesSource
	Log      *zap.Logger
	// Metrics may be nil (collectors not registered anywhere).
	Metrics *Metrics
	// Starts, if set, is told how every supervised start went (the
	// autopilot compares runtimes with it).
	Starts StartObserver
	// AlsoLead, if set, runs for each leadership term, beside the workers:
	// its context ends with the term, and the term waits for it to return.
	// Work that must run on one replica only, with this replica's view of
	// the builds (the autopilot), runs here.
	AlsoLead func(ctx context.Context)
}

// StartOutcome is how one build pod's start went.
type StartOutcome struct {
	Pod     types.UID
	Runtime weightage.Runtime
	// Rule is the routing rule that chose the runtime (from the pod).
	Rule      weightage.Rule
	Failed    bool
	Class     FailureClass
	Signature Signature
	// Setup is creation to ContainersReady, when SetupKnown (a start
	// that ran, with the conditions' timestamps).
	Setup      time.Duration
	SetupKnown bool
}

// StartObserver is told of start outcomes, possibly more than once for a
// pod (a retried sync): it must count a pod once.
type StartObserver interface {
	ObserveStart(StartOutcome)
}

// Options tune the supervisor.
type Options struct {
	// Namespace is the jobs namespace (pods, events, the Lease).
	Namespace string
	// Workers bound the syncs, and so the CI API calls, in flight.
	Workers int
	Assess  AssessOptions
	// Fallback relaunches a Kata runtime failure once on hyperd.
	Fallback bool
	// DefaultAPIURI is used for pods whose build record has no apiUri
	// (Secrets written by an older version): ecosystem.api.
	DefaultAPIURI string
	// RequestTimeout bounds each Kubernetes call; ReportTimeout each CI
	// API report (its retries included).
	RequestTimeout time.Duration
	ReportTimeout  time.Duration
	// RetryBase and RetryMax bound the per-build backoff of failed syncs.
	RetryBase, RetryMax time.Duration
	// Leader configures leader election; nil runs the supervisor without
	// it (one replica, or tests).
	Leader *LeaderOptions
}

// Supervisor watches build pods and acts on what it sees, one build at a
// time: a level-triggered sync(build) per key of a rate-limited workqueue,
// fed by the pod and event informers (kubernetes/sample-controller's shape).
type Supervisor struct {
	deps Deps
	opts Options
	log  *zap.Logger
	m    *Metrics

	// term is held for a whole leadership term: a new term waits until
	// the previous one has stopped everything it started.
	term sync.Mutex

	mu    sync.Mutex
	queue workqueue.TypedRateLimitingInterface[string] // nil unless leading

	// termMu guards what one term keeps in memory. finished holds the pods
	// this term saw past the early-exit window (their setup was looked at
	// once); termStart is when the term began; gone holds, per build, the
	// pods deleted since its last sync, whose records that sync deletes;
	// unrecorded holds records whose write failed after their action
	// succeeded (Redis down): the plan sees them, so the action is not
	// repeated while the write is retried.
	termMu     sync.Mutex
	finished   map[types.UID]bool
	termStart  time.Time
	gone       map[string][]types.UID
	unrecorded map[types.UID]map[string]string
}

// New returns a supervisor; Run starts it.
func New(deps Deps, opts Options) *Supervisor {
	if deps.Metrics == nil {
		deps.Metrics = NewMetrics(nil)
	}
	if opts.Workers <= 0 {
		opts.Workers = 4
	}
	if opts.RequestTimeout <= 0 {
		opts.RequestTimeout = 10 * time.Second
	}
	if opts.ReportTimeout <= 0 {
		opts.ReportTimeout = 30 * time.Second
	}
	if opts.RetryBase <= 0 {
		opts.RetryBase = 500 * time.Millisecond
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = 2 * time.Minute
	}
	return &Supervisor{deps: deps, opts: opts, log: deps.Log, m: deps.Metrics,
		finished: map[types.UID]bool{}, gone: map[string][]types.UID{}, unrecorded: map[types.UID]map[string]string{}}
}

// Resync asks for a sync of a build, if this replica supervises now (an
// old version's verify job lands here during a rolling upgrade). Any other
// replica ignores it: the leader syncs every build it sees anyway.
func (s *Supervisor) Resync(buildKey string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.queue != nil {
		s.queue.Add(buildKey)
	}
}

// Run supervises until ctx is done: under leader election, whenever this
// replica leads; otherwise at once.
func (s *Supervisor) Run(ctx context.Context) error {
	if s.opts.Leader == nil {
		s.lead(ctx)
		return nil
	}
	return s.runElected(ctx)
}

// lead runs one leadership term: fresh queue and event cache, a handler on
// the shared pod informer (which replays every cached pod, so the new
// leader syncs every build), and the workers. When ctx ends, everything it
// started is stopped and waited for before it returns.
func (s *Supervisor) lead(ctx context.Context) {
	s.term.Lock()
	defer s.term.Unlock()
	if ctx.Err() != nil {
		return
	}
	s.m.Leader.Set(1)
	defer s.m.Leader.Set(0)
	const queueName = "supervisor"
	q := workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](s.opts.RetryBase, s.opts.RetryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{Name: queueName, MetricsProvider: s.m.workqueue})
	defer func() {
		// A stopped queue leaves its gauges where they were; the next term's
		// queue counts from zero.
		s.m.workqueue.depth.WithLabelValues(queueName).Set(0)
		s.m.workqueue.unfinished.WithLabelValues(queueName).Set(0)
		s.m.workqueue.longestRunningProcessor.WithLabelValues(queueName).Set(0)
	}()

	termCtx, cancel := context.WithCancel(ctx)
	events := newEventCache(s.deps.Client, s.opts.Namespace)
	events.start(termCtx)
	defer func() {
		cancel() // the cache stops only once its context is done
		events.shutdown()
	}()
	if _, err := events.addHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.enqueueEvent(q, obj) },
		UpdateFunc: func(_, obj any) { s.enqueueEvent(q, obj) },
	}); err != nil {
		s.log.Error("watching pod events failed; sandbox failures are caught by the pending timeout only", zap.Error(err))
	}
	reg, err := s.deps.Cache.addHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.enqueuePod(q, obj) },
		UpdateFunc: func(_, obj any) { s.enqueuePod(q, obj) },
		DeleteFunc: func(obj any) { s.forget(obj); s.enqueuePod(q, obj) },
	})
	if err != nil {
		s.log.Error("watching build pods failed; not supervising", zap.Error(err))
		q.ShutDown()
		return
	}
	defer func() {
		if err := s.deps.Cache.removeHandler(reg); err != nil {
			s.log.Warn("removing the pod handler failed", zap.Error(err))
		}
	}()
	if !cache.WaitForCacheSync(termCtx.Done(), events.hasSynced) {
		q.ShutDown()
		return
	}
	s.m.Synced.WithLabelValues("events").Set(1)
	defer s.m.Synced.WithLabelValues("events").Set(0)

	s.mu.Lock()
	s.queue = q
	s.mu.Unlock()
	s.termMu.Lock()
	s.termStart = time.Now()
	s.termMu.Unlock()
	defer func() {
		s.mu.Lock()
		s.queue = nil
		s.mu.Unlock()
		s.termMu.Lock()
		clear(s.finished)
		clear(s.gone)
		clear(s.unrecorded)
		s.termMu.Unlock()
	}()
	s.log.Info("supervising build pods", zap.Int("workers", s.opts.Workers), zap.Int("cached_pods", s.deps.Cache.Len()))

	var wg sync.WaitGroup
	if s.deps.AlsoLead != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.deps.AlsoLead(termCtx)
		}()
	}
	for range s.opts.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s.processNext(termCtx, q, events) {
			}
		}()
	}
	<-termCtx.Done()
	q.ShutDown()
	wg.Wait()
	s.log.Info("stopped supervising build pods")
}

// settleNew is how old a pod must be before its first sync: a new pod is
// scheduled, started and given its Secret within this time, so one sync
// sees all of it instead of one sync per step (the delaying queue keeps a
// single entry per build however many events arrive meanwhile).
const settleNew = time.Second

func (s *Supervisor) enqueuePod(q workqueue.TypedRateLimitingInterface[string], obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok || p.Labels[executor.LabelBuild] == "" {
		return
	}
	if wait := settleNew - time.Since(p.CreationTimestamp.Time); wait > 0 {
		q.AddAfter(p.Labels[executor.LabelBuild], wait)
		return
	}
	q.Add(p.Labels[executor.LabelBuild])
}

func (s *Supervisor) enqueueEvent(q workqueue.TypedRateLimitingInterface[string], obj any) {
	e, ok := obj.(*corev1.Event)
	if !ok {
		return
	}
	// Before the pod is cached there is nothing to judge; its add syncs the
	// build and reads this event from the event cache then.
	if p := s.deps.Cache.Pod(e.InvolvedObject.Name); p != nil {
		q.Add(p.Labels[executor.LabelBuild])
	}
}

func (s *Supervisor) processNext(ctx context.Context, q workqueue.TypedRateLimitingInterface[string], events *eventCache) bool {
	key, shutdown := q.Get()
	if shutdown {
		return false
	}
	defer q.Done(key)
	recheck, err := s.sync(ctx, key, events)
	var wait *notYet
	switch {
	case err != nil && ctx.Err() != nil:
		// Leadership ended mid-sync: the next leader syncs this build.
	case errors.As(err, &wait):
		s.log.Debug("build not ready for its next step; looking again soon", zap.String("build_key", key), zap.String("reason", wait.why))
		q.Forget(key)
		q.AddAfter(key, wait.after)
	case err != nil:
		s.m.Syncs.WithLabelValues("error").Inc()
		s.log.Warn("build sync failed; retrying with backoff", zap.String("build_key", key),
			zap.Int("retries", q.NumRequeues(key)), zap.Error(err))
		q.AddRateLimited(key)
	default:
		s.m.Syncs.WithLabelValues("ok").Inc()
		q.Forget(key)
		if recheck > 0 {
			q.AddAfter(key, recheck)
		}
	}
	return true
}

// errCannotRelaunch: the build config to relaunch is nowhere to be found.
var errCannotRelaunch = errors.New("no build config to relaunch from")

// notYet is a sync that cannot act yet and should look again soon, without
// counting as a failure (the pod's Secret is created right after the pod,
// and the informer can show the pod first).
type notYet struct {
	after time.Duration
	why   string
}

func (e *notYet) Error() string { return e.why }

// sync plans a build from the cache and its records and carries the plan
// out. The records of what was done are written after the actions, once per
// pod; deletes come last.
func (s *Supervisor) sync(ctx context.Context, key string, events *eventCache) (time.Duration, error) {
	s.forgetGone(ctx, key)
	pods, err := s.view(ctx, s.deps.Cache.PodsOfBuild(key))
	if err != nil {
		return 0, err
	}
	// Records owed from an earlier sync of this term go first.
	for _, p := range pods {
		s.termMu.Lock()
		owed := len(s.unrecorded[p.UID]) > 0
		s.termMu.Unlock()
		if owed {
			if err := s.record(ctx, p, nil); err != nil {
				return 0, err
			}
		}
	}
	p := planBuild(pods, events.of, time.Now(), planOptions{
		assess: s.opts.Assess, earlyExit: s.opts.Assess.Exit139Window, fallback: s.opts.Fallback,
	})
	records := map[*corev1.Pod]map[string]string{}
	var recs []*corev1.Pod // patch order
	var firstErr error
	for _, st := range p.steps {
		if st.kind == stepDelete {
			continue
		}
		log := s.log.With(zap.Int64("build_id", buildIDOf(st.pod)), zap.String("pod", st.pod.Name), zap.String("runtime", string(runtimeOf(st.pod))))
		if err := s.act(ctx, st, log); err != nil {
			firstErr = fmt.Errorf("%s for pod %s: %w", st.kind.action(), st.pod.Name, err)
			break
		}
		if st.kind != stepFinish { // counted by finish itself, once
			s.m.Actions.WithLabelValues(st.kind.action()).Inc()
		}
		if st.record != nil {
			if records[st.pod] == nil {
				records[st.pod] = map[string]string{}
				recs = append(recs, st.pod)
			}
			for k, v := range st.record {
				records[st.pod][k] = v
			}
		}
	}
	for _, pod := range recs {
		if err := s.record(ctx, pod, records[pod]); err != nil && firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return 0, firstErr
	}
	for _, st := range p.steps {
		if st.kind != stepDelete {
			continue
		}
		if err := s.deps.Pods.DeletePod(ctx, st.pod.Name); err != nil {
			return 0, err
		}
		s.m.Actions.WithLabelValues(actDeletePod).Inc()
		s.log.Info("deleted build pod", zap.Int64("build_id", buildIDOf(st.pod)), zap.String("pod", st.pod.Name), zap.String("reason", st.why))
	}
	return p.recheck, nil
}

// act carries out one step.
func (s *Supervisor) act(ctx context.Context, st step, log *zap.Logger) error {
	v := st.verdict
	switch st.kind {
	case stepReportNode:
		return s.report(ctx, st.pod, update{
			intent: AnnotationReportingNode, value: v.Node,
			send: func(ctx context.Context, api string, id int64, tok string) error {
				return s.deps.Reporter.ReportScheduled(ctx, api, id, tok, v.Node, time.Now())
			},
			arrived: func(b *ciapi.Build) bool { return b.Stats.Hostname == v.Node },
		}, log.With(zap.String("node", v.Node)), "reported the build's node")
	case stepReportWaiting:
		return s.report(ctx, st.pod, update{
			intent: AnnotationReportingWaiting, value: string(v.State),
			send: func(ctx context.Context, api string, id int64, tok string) error {
				return s.deps.Reporter.ReportWaiting(ctx, api, id, tok, ciapi.MsgWaiting)
			},
			arrived: func(b *ciapi.Build) bool { return b.StatusMessage == ciapi.MsgWaiting },
		}, log.With(zap.String("reason", v.Message)), "reported the build as waiting")
	case stepReportFailure:
		// Counted once the report is through (or given up): a report that
		// fails is retried by the next sync, which would count it again.
		err := s.report(ctx, st.pod, update{
			intent: AnnotationReportingFailure, value: outcomeFailed,
			send: func(ctx context.Context, api string, id int64, tok string) error {
				return s.deps.Reporter.ReportFailure(ctx, api, id, tok, v.Message)
			},
			arrived: func(b *ciapi.Build) bool { return b.Status == ciapi.StatusFailure },
		}, log.With(zap.String("class", string(v.Class)), zap.String("reason", v.Reason), zap.String("message", v.Message)),
			"build failed to start; reported FAILURE")
		if err == nil {
			s.observeStart(runtimeOf(st.pod), v, st.pod)
		}
		return err
	case stepFinish:
		s.finish(st.pod, v, log)
		return nil
	case stepFallback:
		err := s.fallback(ctx, st.pod, v, log)
		if errors.Is(err, errCannotRelaunch) {
			log.Warn("cannot relaunch on hyperd; reporting the Kata failure instead", zap.Error(err))
			return s.act(ctx, step{kind: stepReportFailure, pod: st.pod, verdict: v}, log)
		}
		return err
	}
	return fmt.Errorf("unknown step %d", st.kind)
}

// report sends one CI API update with the build's token from its Secret.
// An unavailable API is an error (the build is retried with backoff); a
// rejected update (401/403/404) is logged and counted done, since no retry
// can make it pass.
// update is one CI API update of a pod's build, sent at most once per
// crash: intent (with value) is recorded before the update goes out; a sync
// that finds the intent without the done record (a leader died while the
// update was in flight, or it failed) reads the build first and sends the
// update only if it has not arrived.
type update struct {
	intent, value string
	send          func(ctx context.Context, api string, id int64, tok string) error
	arrived       func(*ciapi.Build) bool
}

func (s *Supervisor) report(ctx context.Context, pod *corev1.Pod, u update, log *zap.Logger, done string) error {
	rec, err := s.buildRecord(ctx, pod)
	switch {
	case apierrors.IsNotFound(err) && time.Since(pod.CreationTimestamp.Time) < tokenSecretGrace:
		return &notYet{after: 250 * time.Millisecond, why: "the pod's Secret does not exist yet"}
	case apierrors.IsNotFound(err) && u.intent != AnnotationReportingFailure:
		// The start that made the pod has not made its Secret yet: it was
		// interrupted between the two and waits its turn in the queue (after
		// an apiserver outage that can be minutes). Its update waits too.
		return &notYet{after: 30 * time.Second, why: "the pod's Secret does not exist yet: its start has not finished"}
	case apierrors.IsNotFound(err):
		// A pod that failed without ever getting its Secret: no token to
		// report with (its start job's own dead-letter report tells the CI).
		log.Error("the pod's Secret does not exist; cannot report its failure to the CI API", zap.Error(err))
		return nil
	case err != nil:
		return err
	}
	api := rec.APIURI
	if api == "" {
		api = s.opts.DefaultAPIURI
	}
	rctx, cancel := context.WithTimeout(ctx, s.opts.ReportTimeout)
	defer cancel()
	if pod.Annotations[u.intent] == u.value {
		// It may have arrived: a read is cheaper than a duplicate. A read
		// that fails says nothing, and the update goes out again.
		if b, err := s.deps.Reporter.GetBuild(rctx, api, rec.BuildID, rec.Token); err == nil && u.arrived(b) {
			log.Info(done + " (an earlier attempt had delivered it)")
			return nil
		}
	} else if err := s.deps.Records.Add(ctx, pod.UID, map[string]string{u.intent: u.value}); err != nil {
		return fmt.Errorf("recording the intent to report build %d: %w", rec.BuildID, err)
	}
	err = u.send(rctx, api, rec.BuildID, rec.Token)
	switch {
	case err == nil:
		log.Info(done)
		return nil
	case ciapi.IsRejected(err):
		log.Error("the CI API rejected the update; not retrying", zap.Error(err))
		return nil
	}
	return fmt.Errorf("reporting build %d: %w", rec.BuildID, err)
}

// buildRecord is the pod's build config and token, from its Secret; the
// build id falls back to the pod's own label value.
func (s *Supervisor) buildRecord(ctx context.Context, pod *corev1.Pod) (*build.Config, error) {
	rec, err := s.deps.Pods.BuildRecord(ctx, pod.Name)
	if err != nil {
		return nil, err
	}
	if rec.BuildID == 0 {
		rec.BuildID = buildIDOf(pod)
	}
	return rec, nil
}

// fallback relaunches a Kata runtime failure on hyperd and strikes the
// image: once enough nodes have seen it fail, it is learned as excluded and
// its next builds go straight to hyperd. A strike repeated after a crash
// (same node) counts once.
func (s *Supervisor) fallback(ctx context.Context, pod *corev1.Pod, v Verdict, log *zap.Logger) error {
	b, err := s.buildRecord(ctx, pod)
	if err != nil {
		return err
	}
	if b.Container == "" {
		// A Secret from before build records: try queue-service's copy.
		raw, err := s.deps.Configs.Get(ctx, b.BuildID)
		if err != nil {
			return fmt.Errorf("%w: build %d: %v", errCannotRelaunch, b.BuildID, err)
		}
		full, err := build.Decode(raw)
		if err != nil {
			return fmt.Errorf("%w: build %d: %v", errCannotRelaunch, b.BuildID, err)
		}
		full.Token = b.Token
		b = full
	}
	if stopped, err := s.deps.Marks.Stopped(ctx, b.BuildID, b.JobID); err != nil || stopped {
		return err // a stopped build is not relaunched; its stop deletes the pod
	}
	strikes, learned, err := s.deps.Learner.Strike(ctx, exclusion.Entry{Image: b.Container, Signature: string(v.Signature),
		BuildID: b.BuildID, Node: v.Node, At: time.Now()})
	if err != nil {
		return err
	}
	d := weightage.Decision{Runtime: weightage.Hyperd, Rule: weightage.RuleFallback, Bucket: -1, RulesVersion: s.deps.Rules.Current().Version}
	res, err := s.deps.Pods.StartAttempt(ctx, b, d, attemptOf(pod)+1)
	if err != nil {
		return err
	}
	// A stop handled while relaunching may have found no relaunch to delete.
	if stopped, err := s.deps.Marks.Stopped(ctx, b.BuildID, b.JobID); err != nil {
		return err
	} else if stopped {
		log.Info("build was stopped during its fallback; deleting the relaunch")
		return s.deps.Pods.DeletePod(ctx, res.Pod)
	}
	if res.Created {
		s.m.observeStart(weightage.Kata, v, pod)
		s.m.Fallbacks.WithLabelValues(string(v.Signature)).Inc()
	}
	// The observer counts a pod once: told on every pass, so a retried
	// fallback whose relaunch already existed still counts the Kata failure.
	s.tellStart(weightage.Kata, v, pod)
	log.Warn("Kata runtime failure: relaunched the build on hyperd",
		zap.String("signature", string(v.Signature)), zap.String("reason", v.Reason),
		zap.String("message", v.Message), zap.String("relaunch", res.Pod), zap.String("image", b.Container),
		zap.Int("image_strikes", strikes), zap.Bool("image_learned_excluded", learned))
	return nil
}

// finish ends supervision of a pod that ran past the early-exit window (or
// succeeded within it), once per term. Its setup is observed only if it
// crossed the window during this term: a pod the previous leader already
// saw through is not counted twice (one that crossed while no replica led
// is not counted at all).
func (s *Supervisor) finish(pod *corev1.Pod, v Verdict, log *zap.Logger) {
	s.termMu.Lock()
	done := s.finished[pod.UID]
	s.finished[pod.UID] = true
	termStart := s.termStart
	s.termMu.Unlock()
	if done {
		return
	}
	s.m.Actions.WithLabelValues(actFinish).Inc()
	now := time.Now()
	crossed := now.Add(s.opts.Assess.Exit139Window - ranFor(pod, now))
	if v.State == StateSucceeded || !crossed.Before(termStart) {
		s.observeStart(runtimeOf(pod), v, pod)
		log.Info("build pod is running", zap.String("node", pod.Spec.NodeName))
	}
}

// view is what the plan sees of a build's pods: each pod with its
// records merged into its annotations (copies: the cache's objects are
// shared and never modified).
func (s *Supervisor) view(ctx context.Context, pods []*corev1.Pod) ([]*corev1.Pod, error) {
	if len(pods) == 0 {
		return pods, nil
	}
	uids := make([]types.UID, len(pods))
	for i, p := range pods {
		uids[i] = p.UID
	}
	recs, err := s.deps.Records.Of(ctx, uids)
	if err != nil {
		return nil, err
	}
	s.termMu.Lock()
	defer s.termMu.Unlock()
	for i, p := range pods {
		pending := s.unrecorded[p.UID]
		if len(recs[i]) == 0 && len(pending) == 0 {
			continue
		}
		c := *p
		c.Annotations = make(map[string]string, len(p.Annotations)+len(recs[i])+len(pending))
		for _, m := range []map[string]string{p.Annotations, recs[i], pending} {
			for k, v := range m {
				c.Annotations[k] = v
			}
		}
		pods[i] = &c
	}
	return pods, nil
}

// forget notes a deleted pod: the next sync of its build deletes its
// records.
func (s *Supervisor) forget(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	if p, ok := obj.(*corev1.Pod); ok {
		s.termMu.Lock()
		delete(s.finished, p.UID)
		delete(s.unrecorded, p.UID)
		key := p.Labels[executor.LabelBuild]
		s.gone[key] = append(s.gone[key], p.UID)
		s.termMu.Unlock()
	}
}

// forgetGone deletes the records of a build's deleted pods. A failure is
// only logged: the records' TTL removes them anyway.
func (s *Supervisor) forgetGone(ctx context.Context, key string) {
	s.termMu.Lock()
	uids := s.gone[key]
	delete(s.gone, key)
	s.termMu.Unlock()
	if len(uids) == 0 {
		return
	}
	if err := s.deps.Records.Forget(ctx, uids); err != nil {
		s.log.Warn("deleting the records of deleted pods failed; they expire on their own", zap.String("build_key", key), zap.Error(err))
	}
}

// record writes supervision records of a pod, after their actions, with
// any earlier ones whose write failed. A failed write is kept for the next
// sync of this term (the action is done; only its record is owed).
func (s *Supervisor) record(ctx context.Context, pod *corev1.Pod, rec map[string]string) error {
	s.termMu.Lock()
	all := maps.Clone(s.unrecorded[pod.UID])
	s.termMu.Unlock()
	if all == nil {
		all = map[string]string{}
	}
	maps.Copy(all, rec)
	err := s.deps.Records.Add(ctx, pod.UID, all)
	s.termMu.Lock()
	defer s.termMu.Unlock()
	if err != nil {
		s.unrecorded[pod.UID] = all
		return fmt.Errorf("pod %s: %w", pod.Name, err)
	}
	delete(s.unrecorded, pod.UID)
	return nil
}

// observeStart counts a start's outcome in the metrics and tells the
// observer, if any.
func (s *Supervisor) observeStart(rt weightage.Runtime, v Verdict, pod *corev1.Pod) {
	s.m.observeStart(rt, v, pod)
	s.tellStart(rt, v, pod)
}

// tellStart tells the observer, if any, how a start went.
func (s *Supervisor) tellStart(rt weightage.Runtime, v Verdict, pod *corev1.Pod) {
	if s.deps.Starts == nil {
		return
	}
	o := StartOutcome{Pod: pod.UID, Runtime: rt, Rule: weightage.Rule(pod.Annotations[executor.AnnotationRule]),
		Failed: v.State == StateFailed, Class: v.Class, Signature: v.Signature}
	if !o.Failed {
		o.Setup, o.SetupKnown = SetupPhases(pod)[PhaseTotal]
	}
	s.deps.Starts.ObserveStart(o)
}
