package supervisor

import (
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// What supervision has done for a pod is recorded (Records, kept in Redis
// by RedisRecords) after the action succeeded, so whichever replica leads
// next carries on from there. A crash between an action and its record
// repeats that action once (one more CI report of the same kind). The plan
// reads the records merged into the pod's annotations (Supervisor.view),
// under these keys.
const (
	// AnnotationReportedNode is the node the CI API was told about.
	AnnotationReportedNode = annotationPrefix + "reported-node"
	// AnnotationReportedWaiting is the waiting state last reported.
	AnnotationReportedWaiting = annotationPrefix + "reported-waiting"
	// AnnotationReportingNode, AnnotationReportingWaiting and
	// AnnotationReportingFailure record that an update was about to be sent
	// (see Supervisor.report): without its done record, the next sync reads
	// the build before sending it again.
	AnnotationReportingNode    = annotationPrefix + "reporting-node"
	AnnotationReportingWaiting = annotationPrefix + "reporting-waiting"
	AnnotationReportingFailure = annotationPrefix + "reporting-failure"
	// AnnotationOutcome ends supervision of a pod that failed: FAILURE was
	// reported (outcome "failed"). A pod that ran past the early-exit window
	// needs no record: that it did is in its status, and from then on its
	// build is the launcher's to report.
	AnnotationOutcome = annotationPrefix + "supervision"
)

// outcomeFailed is recorded in AnnotationOutcome once FAILURE was reported.
const outcomeFailed = "failed"

// stepKind is one visible effect of a sync.
type stepKind int

const (
	stepReportNode stepKind = iota
	stepReportWaiting
	stepReportFailure
	stepFallback
	stepFinish
	stepDelete
)

func (k stepKind) action() string {
	return [...]string{actReportNode, actReportWaiting, actReportFailure, actFallback, actFinish, actDeletePod}[k]
}

// step is one action of a plan on one pod; record is what to write on that
// pod once the action succeeded.
type step struct {
	kind    stepKind
	pod     *corev1.Pod
	verdict Verdict
	record  map[string]string
	why     string // for logs
}

// plan is what sync(build) does: steps in order (deletes last, after the
// record is patched), and when to look again if no event comes.
type plan struct {
	steps   []step
	recheck time.Duration // 0: only on the next event
}

// planOptions are the judgement settings of a plan.
type planOptions struct {
	assess AssessOptions
	// earlyExit keeps a fresh Running pod under watch this long (Kata's
	// exit-139 deaths come right after start).
	earlyExit time.Duration
	// fallback relaunches a Kata runtime failure once on hyperd.
	fallback bool
}

// planBuild is the pure, level-triggered decision of sync: given a build's
// pods (as cached), their events and the time, what to do now. It never
// looks at what happened before except through the pods' records.
func planBuild(pods []*corev1.Pod, events func(*corev1.Pod) []*corev1.Event, now time.Time, o planOptions) plan {
	var p plan
	live := make([]*corev1.Pod, 0, len(pods))
	for _, pod := range pods {
		if pod.DeletionTimestamp == nil {
			live = append(live, pod)
		}
	}
	if len(live) == 0 {
		return p
	}
	sort.Slice(live, func(i, j int) bool { return attemptOf(live[i]) < attemptOf(live[j]) })
	cur := live[len(live)-1]
	// A relaunch supersedes earlier attempts: finish a fallback that was
	// interrupted between the relaunch and the delete of the Kata pod.
	var deletes []step
	for _, old := range live[:len(live)-1] {
		deletes = append(deletes, step{kind: stepDelete, pod: old, why: "superseded by relaunch " + cur.Name})
	}

	rec := cur.Annotations
	switch ran := ranFor(cur, now); {
	case ran > 0 && ran >= o.earlyExit:
		// Past the early-exit window: supervision is over, whatever the
		// pod does next. It may still owe its node report (a leader was
		// down) and the one-time look at its setup.
		if cur.Status.Phase == corev1.PodRunning && rec[AnnotationReportedNode] == "" && cur.Spec.NodeName != "" {
			p.steps = append(p.steps, step{kind: stepReportNode, pod: cur, verdict: Verdict{Node: cur.Spec.NodeName, State: StateRunning},
				record: map[string]string{AnnotationReportedNode: cur.Spec.NodeName}})
		}
		p.steps = append(p.steps, step{kind: stepFinish, pod: cur, verdict: Verdict{State: StateRunning, Node: cur.Spec.NodeName}})
		p.steps = append(p.steps, deletes...)
		return p
	case rec[AnnotationOutcome] == outcomeFailed:
		if cur.Status.Phase == corev1.PodPending {
			// Reported failed but the delete did not happen: a pending pod
			// could still start a build the CI shows as failed.
			deletes = append(deletes, step{kind: stepDelete, pod: cur, why: "failed while pending"})
		}
		p.steps = deletes
		return p
	}

	v := Assess(cur, events(cur), now, o.assess)
	reportNode := func() {
		if rec[AnnotationReportedNode] == "" && v.Node != "" {
			p.steps = append(p.steps, step{kind: stepReportNode, pod: cur, verdict: v, record: map[string]string{AnnotationReportedNode: v.Node}})
		}
	}
	untilRecheck := func(t time.Time) {
		if !t.IsZero() {
			p.recheck = max(t.Sub(now), time.Second)
		}
	}
	switch v.State {
	case StateRunning, StateSucceeded:
		reportNode()
		if v.State == StateRunning && !v.Since.IsZero() {
			// Kata's early deaths (exit 139) come right after start: look
			// again when the window has passed (ranFor ends supervision).
			untilRecheck(v.Since.Add(o.earlyExit))
			break
		}
		p.steps = append(p.steps, step{kind: stepFinish, pod: cur, verdict: v})
	case StatePendingPulling:
		reportNode()
		untilRecheck(v.Until)
	case StatePendingUnschedulable, StatePending:
		if v.State == StatePendingUnschedulable && rec[AnnotationReportedWaiting] != string(v.State) {
			p.steps = append(p.steps, step{kind: stepReportWaiting, pod: cur, verdict: v,
				record: map[string]string{AnnotationReportedWaiting: string(v.State)}})
		}
		untilRecheck(v.Until)
	case StateFailed:
		if o.fallback && runtimeOf(cur) == weightage.Kata && v.Class == ClassRuntime && v.Signature != SigNone && attemptOf(cur) == 0 {
			// Relaunch first, delete after: a crash in between leaves two
			// pods for a moment, never none; the next sync deletes the
			// superseded one (above).
			p.steps = append(p.steps, step{kind: stepFallback, pod: cur, verdict: v})
			deletes = append(deletes, step{kind: stepDelete, pod: cur, why: "fell back to hyperd"})
			break
		}
		p.steps = append(p.steps, step{kind: stepReportFailure, pod: cur, verdict: v, record: map[string]string{AnnotationOutcome: outcomeFailed}})
		if cur.Status.Phase == corev1.PodPending {
			// A pending pod reported as failed could still start later (the
			// kubelet keeps retrying a sandbox, an image pull): remove it.
			// Finished pods stay for debugging until the build's stop.
			deletes = append(deletes, step{kind: stepDelete, pod: cur, why: "failed while pending"})
		}
	}
	p.steps = append(p.steps, deletes...)
	return p
}

// ranFor is how long the pod's main containers have all been running (or
// ran, once terminated): the shortest run among them, 0 until every one has
// started. A container that died early keeps this short, so an exit 139
// beside a healthy sidecar is still judged.
func ranFor(p *corev1.Pod, now time.Time) time.Duration {
	if len(p.Status.ContainerStatuses) == 0 {
		return 0
	}
	shortest := time.Duration(-1)
	for _, cs := range p.Status.ContainerStatuses {
		var d time.Duration
		switch {
		case cs.State.Running != nil && !cs.State.Running.StartedAt.IsZero():
			d = now.Sub(cs.State.Running.StartedAt.Time)
		case cs.State.Terminated != nil && !cs.State.Terminated.StartedAt.IsZero():
			d = cs.State.Terminated.FinishedAt.Sub(cs.State.Terminated.StartedAt.Time)
		default:
			return 0 // not started yet
		}
		if shortest < 0 || d < shortest {
			shortest = d
		}
	}
	return shortest
}

// attemptOf is a pod's attempt: 0 for the first pod of a build, N for its
// relaunch <name>-rN.
func attemptOf(p *corev1.Pod) int {
	_, attempt, _ := executor.ParsePodName(p.Name)
	return attempt
}

// buildIDOf is the build id in a pod's name (0 if it has none).
func buildIDOf(p *corev1.Pod) int64 {
	id, _, _ := executor.ParsePodName(p.Name)
	return id
}

func runtimeOf(p *corev1.Pod) weightage.Runtime {
	return weightage.Runtime(p.Labels[executor.LabelRuntime])
}
