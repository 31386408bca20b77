package supervisor

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/sdkata/queue-worker/internal/executor"
)

// The plan is pure: pods (with their records), events and the time decide
// the steps. Each row is one situation a leader can find a build in.
func TestPlanBuild(t *testing.T) {
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	opts := planOptions{assess: AssessOptions{PendingTimeout: 15 * time.Minute, ImagePullGrace: 30 * time.Second, Exit139Window: 10 * time.Second},
		earlyExit: 10 * time.Second, fallback: true}
	type podOpt func(*corev1.Pod)
	mk := func(name, runtime string, phase corev1.PodPhase, opts ...podOpt) *corev1.Pod {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, UID: "uid-" + "name", CreationTimestamp: metav1.NewTime(now.Add(-time.Minute)),
			Labels: map[string]string{executor.LabelRuntime: runtime}, Annotations: map[string]string{}},
			Status: corev1.PodStatus{Phase: phase}}
		for _, o := range opts {
			o(p)
		}
		return p
	}
	on := func(node string) podOpt { return func(p *corev1.Pod) { p.Spec.NodeName = node } }
	rec := func(k, v string) podOpt { return func(p *corev1.Pod) { p.Annotations[k] = v } }
	runningFor := func(d time.Duration) podOpt {
		return func(p *corev1.Pod) {
			p.Status.StartTime = &metav1.Time{Time: now.Add(-d)}
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "build", State: corev1.ContainerState{
				Running: &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(now.Add(-d))}}}}
		}
	}
	unschedulable := func(p *corev1.Pod) {
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse, Reason: "Unschedulable", Message: "0/4 nodes"}}
	}
	exit139 := func(p *corev1.Pod) {
		start := metav1.NewTime(now.Add(-5 * time.Second))
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "build", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: 139, StartedAt: start, FinishedAt: metav1.NewTime(start.Add(time.Second))}}}}
	}
	userExitAfter := func(ran time.Duration) podOpt {
		return func(p *corev1.Pod) {
			start := metav1.NewTime(now.Add(-5 * time.Minute))
			p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "build", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
				ExitCode: 2, StartedAt: start, FinishedAt: metav1.NewTime(start.Add(ran))}}}}
		}
	}
	userExit := userExitAfter(2 * time.Second)
	imagePull := func(p *corev1.Pod) {
		p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: "build", State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ErrImagePull"}}}}
	}
	deleting := func(p *corev1.Pod) { p.DeletionTimestamp = &metav1.Time{Time: now} }
	const kata, hyperd = "kata", "hyperd"
	tests := []struct {
		name    string
		pods    []*corev1.Pod
		steps   string // kind:pod, space separated
		recheck time.Duration
	}{
		{name: "NoPodsNothingToDo"},
		{name: "DeletingPodIsLeftAlone", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodRunning, on("n1"), deleting)}},
		{name: "FreshPendingPodWaitsForThePendingTimeout", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodPending)},
			recheck: 14 * time.Minute},
		{name: "ScheduledPodReportsItsNodeOnce", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodPending, on("n1"))},
			steps: "report-node:sdbuild-1", recheck: 14 * time.Minute},
		{name: "NodeAlreadyReportedIsNotReportedAgain", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodPending, on("n1"), rec(AnnotationReportedNode, "n1"))},
			recheck: 14 * time.Minute},
		{name: "UnschedulableReportsWaitingOnce", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodPending, unschedulable)},
			steps: "report-waiting:sdbuild-1", recheck: 14 * time.Minute},
		{name: "UnschedulableAlreadyReported", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodPending, unschedulable, rec(AnnotationReportedWaiting, string(StatePendingUnschedulable)))},
			recheck: 14 * time.Minute},
		{name: "ImagePullWithinGraceRechecksAtTheGraceEnd", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodPending, on("n1"), rec(AnnotationReportedNode, "n1"), imagePull,
			func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(now.Add(-10 * time.Second)) })},
			recheck: 20 * time.Second},
		{name: "FreshRunningPodIsWatchedThroughTheEarlyExitWindow", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodRunning, on("n1"), runningFor(4*time.Second))},
			steps: "report-node:sdbuild-1", recheck: 6 * time.Second},
		{name: "RunningPastTheWindowFinishes", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodRunning, on("n1"), runningFor(time.Minute), rec(AnnotationReportedNode, "n1"))},
			steps: "finish:sdbuild-1"},
		{name: "RunningPastTheWindowOwesItsNodeReport", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodRunning, on("n1"), runningFor(time.Minute))},
			steps: "report-node:sdbuild-1 finish:sdbuild-1"},
		{name: "LateFailureIsTheBuildsOwn", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodFailed, on("n1"), userExitAfter(time.Minute), rec(AnnotationReportedNode, "n1"))},
			steps: "finish:sdbuild-1"},
		{name: "Exit139OnKataFallsBackThenDeletes", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodFailed, on("n1"), exit139, rec(AnnotationReportedNode, "n1"))},
			steps: "fallback:sdbuild-1 delete-pod:sdbuild-1"},
		{name: "Exit139OnHyperdIsAFailure", pods: []*corev1.Pod{mk("sdbuild-1", hyperd, corev1.PodFailed, on("n1"), exit139, rec(AnnotationReportedNode, "n1"))},
			steps: "report-failure:sdbuild-1"},
		{name: "RelaunchNeverFallsBackAgain", pods: []*corev1.Pod{mk("sdbuild-1-r1", kata, corev1.PodFailed, on("n1"), exit139, rec(AnnotationReportedNode, "n1"))},
			steps: "report-failure:sdbuild-1-r1"},
		{name: "UserExitIsReportedAndThePodKept", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodFailed, on("n1"), userExit, rec(AnnotationReportedNode, "n1"))},
			steps: "report-failure:sdbuild-1"},
		{name: "PendingTimeoutReportsAndDeletesThePendingPod", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodPending, unschedulable,
			func(p *corev1.Pod) { p.CreationTimestamp = metav1.NewTime(now.Add(-time.Hour)) })},
			steps: "report-failure:sdbuild-1 delete-pod:sdbuild-1"},
		{name: "ReportedFailedButStillPendingIsDeleted", pods: []*corev1.Pod{mk("sdbuild-1", kata, corev1.PodPending, rec(AnnotationOutcome, outcomeFailed))},
			steps: "delete-pod:sdbuild-1"},
		{name: "InterruptedFallbackDeletesTheSupersededKataPod", pods: []*corev1.Pod{
			mk("sdbuild-1", kata, corev1.PodFailed, on("n1"), exit139, rec(AnnotationReportedNode, "n1")),
			mk("sdbuild-1-r1", hyperd, corev1.PodPending)},
			steps: "delete-pod:sdbuild-1", recheck: 14 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := planBuild(tt.pods, func(*corev1.Pod) []*corev1.Event { return nil }, now, opts)
			var got []string
			for _, s := range p.steps {
				got = append(got, s.kind.action()+":"+s.pod.Name)
			}
			if g := strings.Join(got, " "); g != tt.steps {
				t.Errorf("steps %q, want %q", g, tt.steps)
			}
			if p.recheck != tt.recheck {
				t.Errorf("recheck %v, want %v", p.recheck, tt.recheck)
			}
		})
	}
}

// Every recorded step names what it records, so a later leader skips it.
func TestPlanBuild_RecordsWhatItReports(t *testing.T) {
	now := time.Now()
	events := func(*corev1.Pod) []*corev1.Event { return nil }
	opts := planOptions{earlyExit: 10 * time.Second}
	scheduled := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sdbuild-2", CreationTimestamp: metav1.NewTime(now)},
		Spec: corev1.PodSpec{NodeName: "n7"}, Status: corev1.PodStatus{Phase: corev1.PodPending}}
	if p := planBuild([]*corev1.Pod{scheduled}, events, now, opts); len(p.steps) != 1 || p.steps[0].record[AnnotationReportedNode] != "n7" {
		t.Fatalf("node report steps %+v", p.steps)
	}
	waiting := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sdbuild-3", CreationTimestamp: metav1.NewTime(now)},
		Status: corev1.PodStatus{Phase: corev1.PodPending, Conditions: []corev1.PodCondition{{Type: corev1.PodScheduled,
			Status: corev1.ConditionFalse, Reason: "Unschedulable"}}}}
	if p := planBuild([]*corev1.Pod{waiting}, events, now, opts); len(p.steps) != 1 || p.steps[0].record[AnnotationReportedWaiting] != string(StatePendingUnschedulable) {
		t.Fatalf("waiting report steps %+v", p.steps)
	}
	failed := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "sdbuild-4", CreationTimestamp: metav1.NewTime(now.Add(-time.Hour))},
		Status: corev1.PodStatus{Phase: corev1.PodPending}}
	if p := planBuild([]*corev1.Pod{failed}, events, now, planOptions{assess: AssessOptions{PendingTimeout: time.Minute}}); len(p.steps) != 2 ||
		p.steps[0].record[AnnotationOutcome] != outcomeFailed {
		t.Fatalf("failure steps %+v", p.steps)
	}
}
