package supervisor

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// The cache keeps what verdicts read and drops the rest: a verdict on the
// trimmed pod is the verdict on the full one.
func TestTrimPod_KeepsWhatVerdictsRead(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	start := metav1.NewTime(now.Add(-time.Minute))
	full := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "sdbuild-9", Namespace: "ns", UID: "u", CreationTimestamp: start,
			Labels:        map[string]string{executor.LabelBuild: "9", executor.LabelRuntime: "kata", "app": "screwdriver", "screwdriver.cd/job": "main"},
			Annotations:   map[string]string{AnnotationReportedNode: "n1", "kwok.x-k8s.io/whatever": "x"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kube-scheduler"}}},
		Spec: corev1.PodSpec{NodeName: "n1", Containers: []corev1.Container{{Name: "build", Image: "node:18", Env: []corev1.EnvVar{{Name: "A", Value: "B"}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodFailed, StartTime: &start,
			Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: start},
				{Type: corev1.PodReady, Status: corev1.ConditionFalse, Message: "dropped"}},
			ContainerStatuses: []corev1.ContainerStatus{{Name: "build", Image: "centos:6", ImageID: "sha256:x", State: corev1.ContainerState{
				Terminated: &corev1.ContainerStateTerminated{ExitCode: 139, StartedAt: start, FinishedAt: metav1.NewTime(start.Add(time.Second))}}}}},
	}
	obj, err := trimPod(full)
	if err != nil {
		t.Fatal(err)
	}
	trimmed := obj.(*corev1.Pod)
	opts := AssessOptions{Exit139Window: 10 * time.Second, PendingTimeout: time.Hour}
	if got, want := Assess(trimmed, nil, now, opts), Assess(full, nil, now, opts); got != want {
		t.Fatalf("verdict on the trimmed pod %+v, on the full pod %+v", got, want)
	}
	if len(trimmed.Labels) != 2 || len(trimmed.Annotations) != 1 || trimmed.ManagedFields != nil || len(trimmed.Spec.Containers) != 0 || len(trimmed.Status.Conditions) != 1 {
		t.Fatalf("kept too much: %+v", trimmed)
	}
}

// The pod watch counts as alive while it shows events (or bookmarks,
// restarts, errors); one silent past watchSilence fails liveness, and the
// next event on the real apiserver's watch brings it back.
func TestCache_SilentWatchFailsLivenessUntilTheNextEvent(t *testing.T) {
	kube, ns := testbed.Kube(t)
	c := NewCache(kube, ns, nil)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); c.Shutdown() })
	if err := c.Start(ctx, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := c.Live(ctx); err != nil {
		t.Fatalf("fresh watch: %v", err)
	}
	c.active.Store(time.Now().Add(-watchSilence - time.Minute).UnixNano())
	err := c.Live(ctx)
	if err == nil || !strings.Contains(err.Error(), "build pod watch has shown no event") {
		t.Fatalf("silent watch: %v", err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sdbuild-1", Labels: map[string]string{executor.LabelBuild: "1", executor.LabelManaged: "queue-worker"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}, NodeSelector: map[string]string{"nowhere": "x"}}}
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, "alive again after the pod's event", func() bool { return c.Live(ctx) == nil })
}
