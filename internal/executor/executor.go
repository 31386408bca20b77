package executor

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// Executor creates and deletes build pods through the typed clientset.
type Executor struct {
	client  kubernetes.Interface
	opts    Options
	timeout time.Duration
	metrics *Metrics
	now     func() time.Time
	watcher *Watcher
	assess  AssessOptions
}

// New returns an executor. timeout bounds each API call; metrics may be nil.
func New(client kubernetes.Interface, opts Options, timeout time.Duration, metrics *Metrics) *Executor {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	return &Executor{client: client, opts: opts, timeout: timeout, metrics: metrics, now: time.Now}
}

// StartResult says what Start found or made.
type StartResult struct {
	Pod *corev1.Pod
	// Created is false when the build's pod already existed (a redelivered
	// or raced start): the existing pod, and its runtime, stand.
	Created bool
	// Runtime is the runtime of the pod that exists now.
	Runtime weightage.Runtime
}

// Start makes sure the build's pod exists. It is idempotent: the pod name is
// deterministic and AlreadyExists is success.
//
// Order: token Secret, then pod, then the Secret's ownerReference to the
// pod, so that garbage collection removes the Secret with the pod. A crash
// between the steps leaves at most a labelled Secret that the next start
// adopts or the build's stop deletes.
func (e *Executor) Start(ctx context.Context, b *build.Config, d weightage.Decision) (*StartResult, error) {
	return e.StartAttempt(ctx, b, d, 0)
}

// StartAttempt is Start for a relaunch: attempt > 0 names a distinct pod
// (<name>-r<attempt>), itself deterministic, so a relaunch is idempotent too.
func (e *Executor) StartAttempt(ctx context.Context, b *build.Config, d weightage.Decision, attempt int) (*StartResult, error) {
	pod := PodSpec(&e.opts, b, d, attempt)
	if err := e.ensureTokenSecret(ctx, pod, b.Token); err != nil {
		return nil, err
	}
	start := e.now()
	created, err := e.createPod(ctx, pod)
	e.metrics.observeCreate(d.Runtime, e.now().Sub(start), created == nil, err)
	if err != nil {
		return nil, err
	}
	res := &StartResult{Pod: created, Created: true, Runtime: d.Runtime}
	if created == nil {
		existing, err := e.getPod(ctx, pod.Name)
		if err != nil {
			return nil, err
		}
		res.Pod, res.Created = existing, false
		res.Runtime = weightage.Runtime(existing.Labels[LabelRuntime])
	}
	if err := e.adoptTokenSecret(ctx, res.Pod); err != nil {
		return nil, err
	}
	return res, nil
}

// createPod returns (nil, nil) when the pod already exists.
func (e *Executor) createPod(ctx context.Context, pod *corev1.Pod) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	created, err := e.client.CoreV1().Pods(e.opts.Namespace).Create(ctx, pod, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", e.opts.Namespace, pod.Name, err)
	}
	return created, nil
}

func (e *Executor) getPod(ctx context.Context, name string) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	p, err := e.client.CoreV1().Pods(e.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading existing pod %s/%s: %w", e.opts.Namespace, name, err)
	}
	return p, nil
}

func (e *Executor) ensureTokenSecret(ctx context.Context, pod *corev1.Pod, token string) error {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:      TokenSecretName(pod.Name),
			Namespace: e.opts.Namespace,
			Labels:    map[string]string{LabelBuild: pod.Labels[LabelBuild], LabelManaged: managedBy},
		},
		Type:       corev1.SecretTypeOpaque,
		StringData: map[string]string{tokenSecretKey: token},
	}
	_, err := e.client.CoreV1().Secrets(e.opts.Namespace).Create(ctx, s, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating token secret %s/%s: %w", e.opts.Namespace, s.Name, err)
	}
	return nil
}

// adoptTokenSecret points the Secret's ownerReference at the pod (a no-op
// when it already does).
func (e *Executor) adoptTokenSecret(ctx context.Context, pod *corev1.Pod) error {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	patch := fmt.Sprintf(`{"metadata":{"ownerReferences":[{"apiVersion":"v1","kind":"Pod","name":%q,"uid":%q}]}}`, pod.Name, pod.UID)
	_, err := e.client.CoreV1().Secrets(e.opts.Namespace).Patch(ctx, TokenSecretName(pod.Name), types.MergePatchType, []byte(patch), metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("linking token secret to pod %s/%s: %w", e.opts.Namespace, pod.Name, err)
	}
	return nil
}

// Watch makes Verify read pods and events from w's watch cache.
func (e *Executor) Watch(w *Watcher, o AssessOptions) {
	e.watcher, e.assess = w, o
}

// Verify judges a build pod. It reads the watch cache, and the API server
// only when the cache does not have the pod yet (right after its create).
// Only a NotFound answer means the pod is missing: any other API error is
// returned, so the caller retries instead of reporting a vanished build.
func (e *Executor) Verify(ctx context.Context, podName string) (Verdict, *corev1.Pod, error) {
	var pod *corev1.Pod
	var events []*corev1.Event
	if e.watcher != nil {
		pod, events = e.watcher.Pod(podName), e.watcher.Events(podName)
	}
	if pod == nil {
		getCtx, cancel := context.WithTimeout(ctx, e.timeout)
		p, err := e.client.CoreV1().Pods(e.opts.Namespace).Get(getCtx, podName, metav1.GetOptions{})
		cancel()
		switch {
		case err == nil:
			pod = p
		case !apierrors.IsNotFound(err):
			return Verdict{}, nil, fmt.Errorf("reading pod %s/%s: %w", e.opts.Namespace, podName, err)
		}
	}
	return Assess(pod, events, e.now(), e.assess), pod, nil
}

// PodName is the deterministic name of a build's pod for an attempt.
func (e *Executor) PodName(buildID int64, attempt int) string {
	return PodName(e.opts.Prefix, buildID, attempt)
}

// ObserveStart records how a pod start went: setup phases when it runs,
// the failure class or Kata signature when it failed.
func (e *Executor) ObserveStart(rt weightage.Runtime, v Verdict, pod *corev1.Pod) {
	switch v.State {
	case StateRunning, StateSucceeded:
		e.metrics.Starts.WithLabelValues(string(rt), "running", "").Inc()
		if pod != nil {
			e.metrics.ObserveSetup(rt, pod)
		}
	case StateFailed:
		reason := string(v.Class)
		if v.Signature != SigNone {
			reason = string(v.Signature)
		}
		e.metrics.Starts.WithLabelValues(string(rt), "failed", reason).Inc()
	}
}

// ObserveFallback counts a Kata→hyperd relaunch.
func (e *Executor) ObserveFallback(sig Signature) {
	e.metrics.Fallbacks.WithLabelValues(string(sig)).Inc()
}

// DeletePod deletes one pod (its token Secret goes with it, by owner
// reference). A pod already gone is not an error.
func (e *Executor) DeletePod(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	err := e.client.CoreV1().Pods(e.opts.Namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s/%s: %w", e.opts.Namespace, name, err)
	}
	return nil
}

// Token reads the build token back from a pod's Secret, for CI API calls
// about a build whose job carries no token.
func (e *Executor) Token(ctx context.Context, podName string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	s, err := e.client.CoreV1().Secrets(e.opts.Namespace).Get(ctx, TokenSecretName(podName), metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("reading the token secret of pod %s/%s: %w", e.opts.Namespace, podName, err)
	}
	return string(s.Data[tokenSecretKey]), nil
}

// Stop deletes every pod and token Secret of a build, whatever runtime it
// ran on, by the sdbuild label. Deleting a build with no pods succeeds.
func (e *Executor) Stop(ctx context.Context, buildID int64) error {
	sel := metav1.ListOptions{LabelSelector: LabelBuild + "=" + BuildLabel(e.opts.Prefix, buildID)}
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	var errs []error
	if err := e.client.CoreV1().Pods(e.opts.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		errs = append(errs, fmt.Errorf("deleting pods of build %d: %w", buildID, err))
	}
	if err := e.client.CoreV1().Secrets(e.opts.Namespace).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		errs = append(errs, fmt.Errorf("deleting token secrets of build %d: %w", buildID, err))
	}
	e.metrics.Stops.WithLabelValues(outcome(errors.Join(errs...))).Inc()
	return errors.Join(errs...)
}

// Permanent reports whether a Kubernetes error will not go away by retrying
// the same request (a rejected or invalid object, missing permissions).
func Permanent(err error) bool {
	return apierrors.IsInvalid(err) || apierrors.IsForbidden(err) || apierrors.IsBadRequest(err) ||
		apierrors.IsUnauthorized(err) || apierrors.IsNotFound(err) || apierrors.IsMethodNotSupported(err)
}

func outcome(err error) string {
	if err != nil {
		return "error"
	}
	return "ok"
}

// Metrics are the executor's collectors; runtime is kata|hyperd.
type Metrics struct {
	CreateSeconds *prometheus.HistogramVec
	Creates       *prometheus.CounterVec
	Stops         *prometheus.CounterVec
	// SetupSeconds is pod setup per runtime and phase (see SetupPhases).
	SetupSeconds *prometheus.HistogramVec
	// Starts counts pod start outcomes: outcome running|failed, reason the
	// failure class or Kata signature ("" when running).
	Starts    *prometheus.CounterVec
	Fallbacks *prometheus.CounterVec
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		CreateSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "queue_worker", Subsystem: "executor", Name: "pod_create_seconds",
			Help:    "Latency of the pod create call, by runtime.",
			Buckets: prometheus.ExponentialBuckets(0.005, 2, 12),
		}, []string{"runtime"}),
		Creates: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Subsystem: "executor", Name: "pod_creates_total",
			Help: "Pod create calls by runtime and outcome (created, exists, error).",
		}, []string{"runtime", "outcome"}),
		Stops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Subsystem: "executor", Name: "stops_total",
			Help: "Build stops (pod and secret deletion) by outcome.",
		}, []string{"outcome"}),
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
	}
	for _, rt := range []weightage.Runtime{weightage.Kata, weightage.Hyperd} {
		for _, o := range []string{"created", "exists", "error"} {
			m.Creates.WithLabelValues(string(rt), o)
		}
	}
	if reg != nil {
		reg.MustRegister(m.CreateSeconds, m.Creates, m.Stops, m.SetupSeconds, m.Starts, m.Fallbacks)
	}
	return m
}

// ObserveSetup records a started pod's setup phases.
func (m *Metrics) ObserveSetup(rt weightage.Runtime, pod *corev1.Pod) {
	for phase, d := range SetupPhases(pod) {
		m.SetupSeconds.WithLabelValues(string(rt), phase).Observe(d.Seconds())
	}
}

func (m *Metrics) observeCreate(rt weightage.Runtime, took time.Duration, existed bool, err error) {
	m.CreateSeconds.WithLabelValues(string(rt)).Observe(took.Seconds())
	o := "created"
	switch {
	case err != nil:
		o = "error"
	case existed:
		o = "exists"
	}
	m.Creates.WithLabelValues(string(rt), o).Inc()
}
