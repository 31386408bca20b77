package supervisor

import (
	"regexp"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestAssess(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	created := metav1.NewTime(now.Add(-time.Minute))
	pod := func(phase corev1.PodPhase, node string, mut func(*corev1.Pod)) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sdbuild-1", CreationTimestamp: created}, Spec: corev1.PodSpec{NodeName: node}, Status: corev1.PodStatus{Phase: phase}}
		if mut != nil {
			mut(p)
		}
		return p
	}
	waiting := func(init bool, reason, msg string) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			cs := corev1.ContainerStatus{Name: "c", Image: "img", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: msg}}}
			if init {
				p.Status.InitContainerStatuses = append(p.Status.InitContainerStatuses, cs)
			} else {
				ok := corev1.ContainerStatus{Name: "build", State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
				p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, ok, cs) // the failing one is a sidecar
			}
		}
	}
	terminatedBy := func(reason string, code int32, msg string, ran time.Duration) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			start := metav1.NewTime(now.Add(-10 * time.Second))
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "build", Image: "centos:6", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: code, Message: msg, Reason: reason, StartedAt: start, FinishedAt: metav1.NewTime(start.Add(ran))}}}}
		}
	}
	// The process ran and exited: its message is its own termination log.
	terminated := func(code int32, msg string, ran time.Duration) func(*corev1.Pod) {
		return terminatedBy("Error", code, msg, ran)
	}
	opts := AssessOptions{PendingTimeout: 15 * time.Minute, ImagePullGrace: 30 * time.Second, Exit139Window: 10 * time.Second,
		RuntimePatterns: []*regexp.Regexp{regexp.MustCompile(`(?i)vsyscall attempted`)}, RuntimeErrorGrace: 30 * time.Second}
	sandboxSince := func(first time.Duration, count int32) []*corev1.Event {
		return []*corev1.Event{{Reason: "FailedCreatePodSandBox", Type: corev1.EventTypeWarning, Message: `rpc error: no runtime for "kata" is configured`,
			FirstTimestamp: metav1.NewTime(now.Add(-first)), Count: count}}
	}
	sandbox := sandboxSince(45*time.Second, 4)
	scheduledAgo := func(d time.Duration) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			p.Status.Conditions = append(p.Status.Conditions, corev1.PodCondition{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue,
				LastTransitionTime: metav1.NewTime(now.Add(-d))})
		}
	}
	both := func(fs ...func(*corev1.Pod)) func(*corev1.Pod) {
		return func(p *corev1.Pod) {
			for _, f := range fs {
				f(p)
			}
		}
	}
	tests := []struct {
		name   string
		pod    *corev1.Pod
		events []*corev1.Event
		state  State
		class  FailureClass
		sig    Signature
	}{
		{"Missing", nil, nil, StateMissing, "", SigNone},
		{"Running", pod(corev1.PodRunning, "n1", nil), nil, StateRunning, "", SigNone},
		{"Succeeded", pod(corev1.PodSucceeded, "n1", nil), nil, StateSucceeded, "", SigNone},
		{"Unschedulable", pod(corev1.PodPending, "", func(p *corev1.Pod) {
			p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable", Message: "0/4 nodes are available"}}
		}), nil, StatePendingUnschedulable, "", SigNone},
		{"ScheduledPulling", pod(corev1.PodPending, "n1", nil), nil, StatePendingPulling, "", SigNone},
		{"PendingTooLong", pod(corev1.PodPending, "", func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(now.Add(-time.Hour)) }), nil, StateFailed, ClassUnknown, SigNone},
		{"ErrImagePullWithinGraceWaits", pod(corev1.PodPending, "n1", func(p *corev1.Pod) {
			p.CreationTimestamp = metav1.NewTime(now.Add(-5 * time.Second))
			waiting(false, "ErrImagePull", "not found")(p)
		}), nil, StatePendingPulling, "", SigNone},
		{"ErrImagePullAfterGraceIsImage", pod(corev1.PodPending, "n1", waiting(false, "ErrImagePull", "not found")), nil, StateFailed, ClassImage, SigNone},
		{"InvalidImageNameAtOnce", pod(corev1.PodPending, "n1", func(p *corev1.Pod) {
			p.CreationTimestamp = metav1.NewTime(now)
			waiting(false, "InvalidImageName", "")(p)
		}), nil, StateFailed, ClassImage, SigNone},
		{"LauncherInitImagePullIsImage", pod(corev1.PodPending, "n1", waiting(true, "ImagePullBackOff", "")), nil, StateFailed, ClassImage, SigNone},
		{"SidecarCrashLoopIsRuntime", pod(corev1.PodRunning, "n1", waiting(false, "CrashLoopBackOff", "back-off")), nil, StateFailed, ClassRuntime, SigNone},
		{"StartErrorExecFormat", pod(corev1.PodPending, "n1", waiting(false, "StartError", "exec /bin/sh: exec format error")), nil, StateFailed, ClassRuntime, SigExecFormat},
		{"SandboxFailureLastingPastTheGraceIsRuntime", pod(corev1.PodPending, "n1", nil), sandbox, StateFailed, ClassRuntime, SigSandbox},
		{"SandboxFailureWithinTheGraceWaitsForTheKubeletsRetry", pod(corev1.PodPending, "n1", nil), sandboxSince(5*time.Second, 1), StatePendingPulling, "", SigNone},
		{"CreateContainerErrorWithinTheGraceWaits", pod(corev1.PodPending, "n1", both(scheduledAgo(5*time.Second), waiting(false, "CreateContainerError", "context deadline exceeded"))),
			nil, StatePendingPulling, "", SigNone},
		{"CreateContainerErrorPastTheGraceIsRuntime", pod(corev1.PodPending, "n1", both(scheduledAgo(45*time.Second), waiting(false, "CreateContainerError", "context deadline exceeded"))),
			nil, StateFailed, ClassRuntime, SigNone},
		{"SandboxEventIgnoredOnceRunning", pod(corev1.PodRunning, "n1", nil), sandbox, StateRunning, "", SigNone},
		{"Exit139SoonAfterStartIsRuntime", pod(corev1.PodFailed, "n1", terminated(139, "", 2*time.Second)), nil, StateFailed, ClassRuntime, SigExit139},
		{"Exit139LateIsUser", pod(corev1.PodFailed, "n1", terminated(139, "", 5*time.Minute)), nil, StateFailed, ClassUser, SigNone},
		{"ExitNonZeroIsUser", pod(corev1.PodFailed, "n1", terminated(1, "", 2*time.Second)), nil, StateFailed, ClassUser, SigNone},
		{"ExecFormatFromTheRuntimeIsRuntime", pod(corev1.PodFailed, "n1", terminatedBy("StartError", 128, "exec /opt/sd/launch: exec format error", 0)), nil, StateFailed, ClassRuntime, SigExecFormat},
		{"ExecFormatInTheBuildsOwnTerminationLogIsUser", pod(corev1.PodFailed, "n1", terminated(1, "exec format error", time.Second)), nil, StateFailed, ClassUser, SigNone},
		{"ConfiguredPatternFromTheRuntime", pod(corev1.PodFailed, "n1", terminatedBy("ContainerCannotRun", 1, "vsyscall attempted with vsyscall=none", 0)), nil, StateFailed, ClassRuntime, SigPattern},
		{"ConfiguredPatternInTheBuildsOwnLogIsUser", pod(corev1.PodFailed, "n1", terminated(1, "vsyscall attempted with vsyscall=none", time.Minute)), nil, StateFailed, ClassUser, SigNone},
		{"TokenSecretNotYetCreatedWaits", pod(corev1.PodPending, "n1", waiting(false, "CreateContainerConfigError", `secret "sdbuild-1-token" not found`)),
			nil, StatePendingPulling, "", SigNone},
		{"TokenSecretMissingPastGraceIsRuntime", pod(corev1.PodPending, "n1", func(p *corev1.Pod) {
			p.CreationTimestamp = metav1.NewTime(now.Add(-5 * time.Minute))
			waiting(false, "CreateContainerConfigError", `secret "sdbuild-1-token" not found`)(p)
		}), nil, StateFailed, ClassRuntime, SigNone},
		{"OtherSecretMissingIsRuntimeAtOnce", pod(corev1.PodPending, "n1", waiting(false, "CreateContainerConfigError", `secret "registry-creds" not found`)),
			nil, StateFailed, ClassRuntime, SigNone},
		{"DeadlineExceededIsUser", pod(corev1.PodFailed, "n1", func(p *corev1.Pod) { p.Status.Reason = "DeadlineExceeded" }), nil, StateFailed, ClassUser, SigNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := Assess(tt.pod, tt.events, now, opts)
			if v.State != tt.state || v.Class != tt.class || v.Signature != tt.sig {
				t.Fatalf("got %s/%s/%q (%s), want %s/%s/%q", v.State, v.Class, v.Signature, v.Message, tt.state, tt.class, tt.sig)
			}
			if v.State == StateFailed && v.Message == "" {
				t.Fatal("a failure without a message")
			}
		})
	}
}

// A pending verdict says when it turns by time alone, so the supervisor
// looks again then instead of polling.
func TestAssess_UntilIsTheNextGraceEnd(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	created := now.Add(-10 * time.Second)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sdbuild-1", CreationTimestamp: metav1.NewTime(created)},
		Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodPending,
			ContainerStatuses: []corev1.ContainerStatus{{Name: "b", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff"}}}}}}
	opts := AssessOptions{PendingTimeout: 15 * time.Minute, ImagePullGrace: 30 * time.Second}
	if v := Assess(p, nil, now, opts); !v.Until.Equal(created.Add(30 * time.Second)) {
		t.Fatalf("until %v, want the image pull grace end", v.Until)
	}
	p.Status.ContainerStatuses = nil
	if v := Assess(p, nil, now, opts); !v.Until.Equal(created.Add(15 * time.Minute)) {
		t.Fatalf("until %v, want the pending timeout", v.Until)
	}
}

// Sandbox and create errors wait out the kubelet's retries: the verdict
// says when the grace ends, so the supervisor looks again then.
func TestAssess_RuntimeErrorGraceEndIsTheRecheck(t *testing.T) {
	now := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	first := now.Add(-5 * time.Second)
	p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sdbuild-1", CreationTimestamp: metav1.NewTime(now.Add(-time.Minute))},
		Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: corev1.PodPending}}
	ev := []*corev1.Event{{Reason: "FailedCreatePodSandBox", Type: corev1.EventTypeWarning, FirstTimestamp: metav1.NewTime(first)}}
	opts := AssessOptions{PendingTimeout: 15 * time.Minute, RuntimeErrorGrace: 30 * time.Second}
	if v := Assess(p, ev, now, opts); v.State != StatePendingPulling || !v.Until.Equal(first.Add(30*time.Second)) {
		t.Fatalf("%s until %v, want pending until the sandbox grace ends", v.State, v.Until)
	}
}
