package executor

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	listersv1 "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Watcher keeps a watched cache of this daemon's build pods and of pod
// events in the jobs namespace, so verify reads state without polling the
// API server.
type Watcher struct {
	factory       informers.SharedInformerFactory
	eventFactory  informers.SharedInformerFactory
	pods          listersv1.PodLister
	podInformer   cache.SharedIndexInformer
	eventInformer cache.SharedIndexInformer
	ns            string
}

const eventsByPod = "byPod"

// NewWatcher watches pods labelled as ours and pod events in ns.
func NewWatcher(client kubernetes.Interface, ns string) *Watcher {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelManaged + "=" + managedBy }))
	eventFactory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("involvedObject.kind", "Pod").String()
		}))
	w := &Watcher{factory: factory, eventFactory: eventFactory, ns: ns}
	w.podInformer = factory.Core().V1().Pods().Informer()
	w.pods = factory.Core().V1().Pods().Lister()
	w.eventInformer = eventFactory.Core().V1().Events().Informer()
	_ = w.eventInformer.AddIndexers(cache.Indexers{eventsByPod: func(obj any) ([]string, error) {
		if e, ok := obj.(*corev1.Event); ok {
			return []string{e.InvolvedObject.Name}, nil
		}
		return nil, nil
	}})
	return w
}

// Start runs the informers until ctx is done and waits for the first sync.
func (w *Watcher) Start(ctx context.Context, timeout time.Duration) error {
	w.factory.Start(ctx.Done())
	w.eventFactory.Start(ctx.Done())
	syncCtx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if !cache.WaitForCacheSync(syncCtx.Done(), w.podInformer.HasSynced, w.eventInformer.HasSynced) {
		return fmt.Errorf("watching build pods in %s: caches did not sync within %s", w.ns, timeout)
	}
	return nil
}

// Shutdown stops the informers' goroutines (after ctx is done).
func (w *Watcher) Shutdown() {
	w.factory.Shutdown()
	w.eventFactory.Shutdown()
}

// Pod returns a build pod by name from the cache (nil if absent).
func (w *Watcher) Pod(name string) *corev1.Pod {
	p, err := w.pods.Pods(w.ns).Get(name)
	if err != nil {
		return nil
	}
	return p
}

// Events returns the cached events of a pod.
func (w *Watcher) Events(podName string) []*corev1.Event {
	objs, _ := w.eventInformer.GetIndexer().ByIndex(eventsByPod, podName)
	out := make([]*corev1.Event, 0, len(objs))
	for _, o := range objs {
		if e, ok := o.(*corev1.Event); ok {
			out = append(out, e)
		}
	}
	return out
}

// InFlight counts pods of a runtime that are not finished, from the cache.
func (w *Watcher) InFlight(runtime string) (int, error) {
	pods, err := w.pods.Pods(w.ns).List(labels.SelectorFromSet(labels.Set{LabelRuntime: runtime}))
	if err != nil {
		return 0, err
	}
	n := 0
	for _, p := range pods {
		if p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed && p.DeletionTimestamp == nil {
			n++
		}
	}
	return n, nil
}
