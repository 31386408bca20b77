package supervisor

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// eventCache watches the pod events verdicts read: Warning
// FailedCreatePodSandBox, the only trace a sandbox (Kata VM) failure leaves.
// The field selector keeps every other event off the wire and out of memory.
// Only the leader runs it.
type eventCache struct {
	factory  informers.SharedInformerFactory
	informer cache.SharedIndexInformer
}

const eventsByPod = "byPod"

// sandboxEvents selects the events Assess looks at.
var sandboxEvents = fields.Set{
	"involvedObject.kind": "Pod",
	"type":                corev1.EventTypeWarning,
	"reason":              "FailedCreatePodSandBox",
}.AsSelector().String()

func newEventCache(client kubernetes.Interface, ns string) *eventCache {
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(ns),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.FieldSelector = sandboxEvents }),
		informers.WithTransform(trimEvent))
	inf := factory.Core().V1().Events().Informer()
	_ = inf.AddIndexers(cache.Indexers{eventsByPod: func(obj any) ([]string, error) {
		if e, ok := obj.(*corev1.Event); ok {
			return []string{e.InvolvedObject.Name}, nil
		}
		return nil, nil
	}})
	return &eventCache{factory: factory, informer: inf}
}

func (c *eventCache) start(ctx context.Context) { c.factory.Start(ctx.Done()) }

func (c *eventCache) shutdown() { c.factory.Shutdown() }

func (c *eventCache) hasSynced() bool { return c.informer.HasSynced() }

func (c *eventCache) addHandler(h cache.ResourceEventHandler) (cache.ResourceEventHandlerRegistration, error) {
	return c.informer.AddEventHandler(h)
}

// of returns the cached events of a pod (by name; Assess matches the UID).
func (c *eventCache) of(pod *corev1.Pod) []*corev1.Event {
	objs, _ := c.informer.GetIndexer().ByIndex(eventsByPod, pod.Name)
	out := make([]*corev1.Event, 0, len(objs))
	for _, o := range objs {
		if e, ok := o.(*corev1.Event); ok {
			out = append(out, e)
		}
	}
	return out
}

// trimEvent keeps what Assess reads.
func trimEvent(obj any) (any, error) {
	e, ok := obj.(*corev1.Event)
	if !ok {
		return obj, nil
	}
	return &corev1.Event{
		ObjectMeta: metav1.ObjectMeta{Name: e.Name, Namespace: e.Namespace, UID: e.UID, ResourceVersion: e.ResourceVersion,
			CreationTimestamp: e.CreationTimestamp},
		InvolvedObject: corev1.ObjectReference{Kind: e.InvolvedObject.Kind, Name: e.InvolvedObject.Name,
			Namespace: e.InvolvedObject.Namespace, UID: e.InvolvedObject.UID},
		Reason: e.Reason, Message: e.Message, Type: e.Type, Count: e.Count,
		FirstTimestamp: e.FirstTimestamp, LastTimestamp: e.LastTimestamp, EventTime: e.EventTime,
	}, nil
}
