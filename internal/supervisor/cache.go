package supervisor

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// Cache is the watched cache of this daemon's build pods. Every replica
// runs it (the routing budgets count pods in flight from it); the leader's
// supervisor also syncs builds from it. Pods are stored trimmed to what
// supervision reads (see trimPod), which is most of their memory.
type Cache struct {
	informer cache.SharedIndexInformer
	ns       string
	metrics  *Metrics
	done     chan struct{}
	started  atomic.Bool
	// active is when the watch last showed it is alive (unix nanoseconds):
	// a list, a watch (re)started, an event or a bookmark, or an error.
	active atomic.Int64
}

// watchSilence is how long the pod watch may go without any sign of life
// before liveness fails. The apiserver sends a bookmark about every minute
// to a watch that asks for them (client-go's reflector does), and the
// reflector restarts its watch every 5 to 10 minutes; errors count as signs
// of life (the apiserver being down is readiness's business).
const watchSilence = 5 * time.Minute

const byBuild = "byBuild"

// NewCache watches the pods in ns that carry the sdbuild label and our
// managed-by label. metrics may be nil.
func NewCache(client kubernetes.Interface, ns string, metrics *Metrics) *Cache {
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	c := &Cache{ns: ns, metrics: metrics, done: make(chan struct{})}
	sel := executor.LabelBuild + "," + executor.LabelManaged + "=queue-worker"
	pods := client.CoreV1().Pods(ns)
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.LabelSelector = sel
			l, err := pods.List(ctx, o)
			c.alive()
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.LabelSelector = sel
			w, err := pods.Watch(ctx, o)
			c.alive()
			if err != nil {
				return nil, err
			}
			return &aliveWatch{Interface: w, c: c, out: make(chan watch.Event), stopped: make(chan struct{})}, nil
		},
	}
	c.informer = cache.NewSharedIndexInformerWithOptions(lw, &corev1.Pod{}, cache.SharedIndexInformerOptions{
		Indexers: cache.Indexers{byBuild: func(obj any) ([]string, error) {
			if p, ok := obj.(*corev1.Pod); ok {
				return []string{p.Labels[executor.LabelBuild]}, nil
			}
			return nil, nil
		}},
	})
	_ = c.informer.SetTransform(trimPod)
	_ = c.informer.SetWatchErrorHandlerWithContext(func(ctx context.Context, r *cache.Reflector, err error) {
		c.alive()
		cache.DefaultWatchErrorHandler(ctx, r, err)
	})
	return c
}

func (c *Cache) alive() { c.active.Store(time.Now().UnixNano()) }

// aliveWatch passes a watch's events on, noting each (bookmarks included)
// as a sign of life.
type aliveWatch struct {
	watch.Interface
	c       *Cache
	out     chan watch.Event
	once    sync.Once
	stopped chan struct{}
	stop    sync.Once
}

func (w *aliveWatch) ResultChan() <-chan watch.Event {
	w.once.Do(func() {
		go func() {
			defer close(w.out)
			for ev := range w.Interface.ResultChan() {
				w.c.alive()
				select {
				case w.out <- ev:
				case <-w.stopped: // nobody reads any more
					return
				}
			}
		}()
	})
	return w.out
}

// Stop stops the watch; the forwarding goroutine ends with it.
func (w *aliveWatch) Stop() {
	w.stop.Do(func() { close(w.stopped) })
	w.Interface.Stop()
}

// Live is a liveness check: the pod watch has shown a sign of life within
// watchSilence (see there).
func (c *Cache) Live(context.Context) error {
	if !c.HasSynced() {
		return nil // Start has not returned yet; it fails on its own
	}
	last := time.Unix(0, c.active.Load())
	if quiet := time.Since(last); quiet > watchSilence {
		return fmt.Errorf("the build pod watch has shown no event, bookmark, restart or error since %s (%s, bound %s)",
			last.UTC().Format(time.RFC3339), quiet.Round(time.Second), watchSilence)
	}
	return nil
}

// Start runs the informer until ctx is done and waits for its first list.
func (c *Cache) Start(ctx context.Context, timeout time.Duration) error {
	c.started.Store(true)
	go func() {
		defer close(c.done)
		c.informer.RunWithContext(ctx)
	}()
	syncCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), c.informer.HasSynced) {
		return fmt.Errorf("watching build pods in %s: the cache did not sync within %s", c.ns, timeout)
	}
	c.metrics.Synced.WithLabelValues("pods").Set(1)
	return nil
}

// Shutdown stops the informer's goroutines (after the Start context is done).
func (c *Cache) Shutdown() {
	if c.started.Load() {
		<-c.done
	}
	c.metrics.Synced.WithLabelValues("pods").Set(0)
}

// HasSynced reports whether the first list has been stored.
func (c *Cache) HasSynced() bool { return c.informer.HasSynced() }

// PodsOfBuild returns the cached pods of a build (by sdbuild value).
func (c *Cache) PodsOfBuild(key string) []*corev1.Pod {
	objs, _ := c.informer.GetIndexer().ByIndex(byBuild, key)
	out := make([]*corev1.Pod, 0, len(objs))
	for _, o := range objs {
		if p, ok := o.(*corev1.Pod); ok {
			out = append(out, p)
		}
	}
	return out
}

// Pod returns a cached pod by name, or nil.
func (c *Cache) Pod(name string) *corev1.Pod {
	o, ok, _ := c.informer.GetIndexer().GetByKey(c.ns + "/" + name)
	if !ok {
		return nil
	}
	p, _ := o.(*corev1.Pod)
	return p
}

// InFlight counts pods of a runtime that are not finished, for the routing
// budgets.
func (c *Cache) InFlight(rt weightage.Runtime) int {
	n := 0
	for _, o := range c.informer.GetIndexer().List() {
		p, ok := o.(*corev1.Pod)
		if ok && p.Labels[executor.LabelRuntime] == string(rt) && p.DeletionTimestamp == nil &&
			p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			n++
		}
	}
	return n
}

// Len is the number of cached pods.
func (c *Cache) Len() int { return len(c.informer.GetIndexer().ListKeys()) }

var cachedPodsDesc = prometheus.NewDesc("queue_worker_supervisor_cached_pods",
	"Build pods in this replica's watch cache.", nil, nil)

// Describe implements prometheus.Collector (register the cache to export
// its size).
func (c *Cache) Describe(ch chan<- *prometheus.Desc) { ch <- cachedPodsDesc }

// Collect implements prometheus.Collector.
func (c *Cache) Collect(ch chan<- prometheus.Metric) {
	ch <- prometheus.MustNewConstMetric(cachedPodsDesc, prometheus.GaugeValue, float64(c.Len()))
}

// addHandler registers h; the informer replays every cached pod to it as an
// add, so a new leader syncs every build it has.
func (c *Cache) addHandler(h cache.ResourceEventHandler) (cache.ResourceEventHandlerRegistration, error) {
	return c.informer.AddEventHandler(h)
}

func (c *Cache) removeHandler(r cache.ResourceEventHandlerRegistration) error {
	return c.informer.RemoveEventHandler(r)
}

// annotationPrefix marks the annotations supervision reads: the routing
// decision and the supervision record.
const annotationPrefix = "queue-worker.screwdriver.cd/"

// trimPod keeps what supervision and the budgets read: names, the two
// labels they select on, our annotations, the node, and the status without
// what verdicts never look at. A build pod's spec (containers, env,
// volumes, affinity), its other labels and its managedFields are most of
// its size and are never read from the cache.
func trimPod(obj any) (any, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // tombstones and the like pass unchanged
	}
	t := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.Name, Namespace: p.Namespace, UID: p.UID, ResourceVersion: p.ResourceVersion,
			CreationTimestamp: p.CreationTimestamp, DeletionTimestamp: p.DeletionTimestamp,
			Labels: map[string]string{
				executor.LabelBuild:   p.Labels[executor.LabelBuild],
				executor.LabelRuntime: p.Labels[executor.LabelRuntime],
			},
		},
		Spec: corev1.PodSpec{NodeName: p.Spec.NodeName},
		Status: corev1.PodStatus{
			Phase: p.Status.Phase, Reason: p.Status.Reason, Message: p.Status.Message,
			Conditions: trimConditions(p.Status.Conditions), StartTime: p.Status.StartTime,
			InitContainerStatuses: trimStatuses(p.Status.InitContainerStatuses),
			ContainerStatuses:     trimStatuses(p.Status.ContainerStatuses),
		},
	}
	for k, v := range p.Annotations {
		if strings.HasPrefix(k, annotationPrefix) {
			if t.Annotations == nil {
				t.Annotations = map[string]string{}
			}
			t.Annotations[k] = v
		}
	}
	return t, nil
}

// trimConditions keeps the conditions verdicts and setup times read, with
// a message only where one is shown (why a pod is unschedulable).
func trimConditions(in []corev1.PodCondition) []corev1.PodCondition {
	out := make([]corev1.PodCondition, 0, len(in))
	for _, c := range in {
		switch c.Type {
		case corev1.PodScheduled:
			out = append(out, corev1.PodCondition{Type: c.Type, Status: c.Status, Reason: c.Reason, Message: c.Message, LastTransitionTime: c.LastTransitionTime})
		case corev1.PodReadyToStartContainers, corev1.PodInitialized, corev1.ContainersReady:
			out = append(out, corev1.PodCondition{Type: c.Type, Status: c.Status, LastTransitionTime: c.LastTransitionTime})
		}
	}
	return out
}

func trimStatuses(in []corev1.ContainerStatus) []corev1.ContainerStatus {
	if len(in) == 0 {
		return nil
	}
	out := make([]corev1.ContainerStatus, len(in))
	for i, cs := range in {
		out[i] = corev1.ContainerStatus{Name: cs.Name, Image: cs.Image, State: cs.State}
	}
	return out
}
