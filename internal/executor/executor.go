package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// Executor creates and deletes build pods through the typed clientset.
type Executor struct {
	client  kubernetes.Interface
	opts    Options
	metrics *Metrics
	now     func() time.Time
}

// Deps are what an Executor works with.
type Deps struct {
	Client kubernetes.Interface
	// Metrics may be nil (collectors not registered anywhere).
	Metrics *Metrics
}

// New returns an executor.
func New(deps Deps, opts Options) *Executor {
	m := deps.Metrics
	if m == nil {
		m = NewMetrics(nil)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	return &Executor{client: deps.Client, opts: opts, metrics: m, now: time.Now}
}

// StartResult says what Start found or made.
type StartResult struct {
	// Pod is the build's pod name.
	Pod string
	// Created is false when the build's pod already existed (a redelivered
	// or raced start): the existing pod, and its runtime, stand.
	Created bool
	// Runtime is the runtime of the pod that exists now.
	Runtime weightage.Runtime
	// TimeoutMinutes is the build timeout its launcher enforces.
	TimeoutMinutes int
}

// Start makes sure the build's pod and its token Secret exist. It is
// idempotent: the pod name is deterministic and AlreadyExists is success.
//
// Pod first, then the Secret, created with an ownerReference to the pod, so
// garbage collection removes the Secret with the pod and a Secret whose pod
// is gone (a stop raced the start) is collected too: two calls, no orphans.
// The pod reads the Secret only when its build container starts, after
// scheduling, sandbox and the launcher init container; a start that dies
// between the two calls is redelivered and creates the Secret then (the
// supervisor gives the kubelet's "secret not found" a grace meanwhile).
func (e *Executor) Start(ctx context.Context, b *build.Config, d weightage.Decision) (*StartResult, error) {
	return e.StartAttempt(ctx, b, d, 0)
}

// StartAttempt is Start for a relaunch: attempt > 0 names a distinct pod
// (<name>-r<attempt>), itself deterministic, so a relaunch is idempotent too.
func (e *Executor) StartAttempt(ctx context.Context, b *build.Config, d weightage.Decision, attempt int) (*StartResult, error) {
	return e.StartWith(ctx, b, d, attempt, nil)
}

// StartWith is StartAttempt with a check that runs once the pod exists,
// alongside the Secret's create (one round trip saved on the start path).
// The check is how a start notices a stop that ran while the pod was being
// made; its error is returned once the Secret is done.
func (e *Executor) StartWith(ctx context.Context, b *build.Config, d weightage.Decision, attempt int, afterPod func(context.Context) error) (*StartResult, error) {
	pod := PodSpec(&e.opts, b, d, attempt)
	start := e.now()
	created, err := e.createPod(ctx, pod)
	e.metrics.observeCreate(d.Runtime, e.now().Sub(start), created == nil, err)
	if err != nil {
		return nil, err
	}
	res := &StartResult{Pod: pod.Name, Created: true, Runtime: d.Runtime}
	if created == nil {
		if created, err = e.getPod(ctx, pod.Name); err != nil {
			return nil, err
		}
		res.Created = false
		res.Runtime = weightage.Runtime(created.Labels[LabelRuntime])
	}
	res.TimeoutMinutes = TimeoutFor(&e.opts, b, res.Runtime)
	checked := make(chan error, 1)
	if afterPod != nil {
		go func() { checked <- afterPod(ctx) }()
	} else {
		checked <- nil
	}
	secretErr := e.ensureBuildSecret(ctx, created, b)
	if err := <-checked; err != nil {
		return res, err
	}
	if secretErr != nil {
		return nil, secretErr
	}
	return res, nil
}

// createPod returns (nil, nil) when the pod already exists.
func (e *Executor) createPod(ctx context.Context, pod *corev1.Pod) (*corev1.Pod, error) {
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
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
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()
	p, err := e.client.CoreV1().Pods(e.opts.Namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("reading existing pod %s/%s: %w", e.opts.Namespace, name, err)
	}
	return p, nil
}

// ensureBuildSecret creates the pod's Secret: the build token (read by the
// pod) and the build config without its token (read back by a fallback
// relaunch, so builds enqueued inline can be relaunched too).
func (e *Executor) ensureBuildSecret(ctx context.Context, pod *corev1.Pod, b *build.Config) error {
	rec := *b
	rec.Token = ""
	cfg, err := json.Marshal(&rec)
	if err != nil {
		return fmt.Errorf("encoding the build record of build %d: %w", b.BuildID, err)
	}
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Name:            TokenSecretName(pod.Name),
			Namespace:       e.opts.Namespace,
			Labels:          map[string]string{LabelBuild: pod.Labels[LabelBuild], LabelManaged: managedBy},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}},
		},
		Type: corev1.SecretTypeOpaque,
		Data: map[string][]byte{tokenSecretKey: []byte(b.Token), buildSecretKey: cfg},
	}
	_, err = e.client.CoreV1().Secrets(e.opts.Namespace).Create(ctx, s, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating token secret %s/%s: %w", e.opts.Namespace, s.Name, err)
	}
	return nil
}

// BuildRecord reads back what a pod's Secret holds: the build config with
// its token, for CI API calls and a fallback relaunch of a build whose job
// is long gone. A Secret from an older version holds only the token: the
// config then has no fields but the token (Config.Container is empty).
func (e *Executor) BuildRecord(ctx context.Context, podName string) (*build.Config, error) {
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()
	// From the apiserver's watch cache (resourceVersion 0), not etcd: the
	// Secret never changes after its create, and one that is not cached
	// yet reads as NotFound, which the caller retries shortly.
	s, err := e.client.CoreV1().Secrets(e.opts.Namespace).Get(ctx, TokenSecretName(podName), metav1.GetOptions{ResourceVersion: "0"})
	if err != nil {
		return nil, fmt.Errorf("reading the build secret of pod %s/%s: %w", e.opts.Namespace, podName, err)
	}
	b := &build.Config{}
	if raw := s.Data[buildSecretKey]; len(raw) > 0 {
		if b, err = build.Decode(raw); err != nil {
			return nil, fmt.Errorf("decoding the build record of pod %s/%s: %w", e.opts.Namespace, podName, err)
		}
	}
	b.Token = string(s.Data[tokenSecretKey])
	return b, nil
}

// DeletePod deletes one pod (its Secret goes with it, by owner reference).
// A pod already gone is not an error.
func (e *Executor) DeletePod(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()
	err := e.client.CoreV1().Pods(e.opts.Namespace).Delete(ctx, name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("deleting pod %s/%s: %w", e.opts.Namespace, name, err)
	}
	return nil
}

// Stop deletes every pod and Secret of a build, whatever runtime it ran on,
// by the sdbuild label. Deleting a build with no pods succeeds.
func (e *Executor) Stop(ctx context.Context, buildID int64) error {
	sel := metav1.ListOptions{LabelSelector: LabelBuild + "=" + BuildLabel(e.opts.Prefix, buildID)}
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
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

// BuildStartedAt is when the build container of a build's newest pod
// started running (zero if none has): the moment its launcher's own timer
// starts, after scheduling, image pulls and the launcher init container.
func (e *Executor) BuildStartedAt(ctx context.Context, buildID int64) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()
	l, err := e.client.CoreV1().Pods(e.opts.Namespace).List(ctx, metav1.ListOptions{
		LabelSelector: LabelBuild + "=" + BuildLabel(e.opts.Prefix, buildID), ResourceVersion: "0"})
	if err != nil {
		return time.Time{}, fmt.Errorf("listing the pods of build %d: %w", buildID, err)
	}
	var started time.Time
	for _, p := range l.Items {
		for _, cs := range p.Status.ContainerStatuses {
			if !isBuildContainer(&p, cs.Name) {
				continue
			}
			var at metav1.Time
			switch {
			case cs.State.Running != nil:
				at = cs.State.Running.StartedAt
			case cs.State.Terminated != nil:
				at = cs.State.Terminated.StartedAt
			}
			if at.Time.After(started) {
				started = at.Time
			}
		}
	}
	return started, nil
}

// isBuildContainer: the pod's first container is the build (the Kata build
// container or hyperd's vm-launcher); sidecars follow it.
func isBuildContainer(p *corev1.Pod, name string) bool {
	return len(p.Spec.Containers) > 0 && p.Spec.Containers[0].Name == name
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
	}
	for _, rt := range weightage.AllRuntimes {
		for _, o := range []string{"created", "exists", "error"} {
			m.Creates.WithLabelValues(string(rt), o)
		}
	}
	if reg != nil {
		reg.MustRegister(m.CreateSeconds, m.Creates, m.Stops)
	}
	return m
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
