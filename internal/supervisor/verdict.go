package supervisor

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/sdkata/queue-worker/internal/executor"
)

// State is where a build pod stands, as verify sees it.
type State string

// States.
const (
	StateRunning              State = "running"
	StateSucceeded            State = "succeeded"
	StatePendingUnschedulable State = "pending-unschedulable"
	StatePendingPulling       State = "pending-pulling"
	StatePending              State = "pending"
	StateFailed               State = "failed"
	StateMissing              State = "missing"
)

// FailureClass says whose failure it is: only runtime failures may fall
// back to another runtime.
type FailureClass string

// Failure classes.
const (
	ClassImage   FailureClass = "image"
	ClassRuntime FailureClass = "runtime"
	ClassUser    FailureClass = "user"
	ClassUnknown FailureClass = "unknown"
)

// Signature names a runtime failure known to be Kata's (metric label).
type Signature string

// Kata failure signatures.
const (
	SigNone       Signature = ""
	SigSandbox    Signature = "sandbox"     // FailedCreatePodSandBox
	SigExit139    Signature = "exit-139"    // segfault right after start (rhel6 vsyscall)
	SigExecFormat Signature = "exec-format" // 32-bit binary without IA32 emulation
	SigPattern    Signature = "pattern"     // an operator-configured message pattern
)

// Verdict is the typed result of verify.
type Verdict struct {
	State     State
	Class     FailureClass // set when State is failed
	Signature Signature    // set for runtime failures with a known signature
	Reason    string       // Kubernetes reason (waiting/terminated reason, event reason)
	Message   string       // for the user: what happened and where
	Node      string
	Pod       string
	// Since is when the pod started running (StateRunning).
	Since time.Time
	// Until is when a pending verdict turns by time alone (a grace or the
	// pending timeout ends) with no new event; zero when it cannot.
	Until time.Time
}

// AssessOptions tune the judgement.
type AssessOptions struct {
	// PendingTimeout fails a pod pending longer than this since creation.
	PendingTimeout time.Duration
	// ImagePullGrace lets a transient pull error pass before it counts.
	ImagePullGrace time.Duration
	// Exit139Window: exit 139 this soon after start is Kata's segfault signature.
	Exit139Window time.Duration
	// RuntimePatterns are extra messages (regexes) that mark runtime failures.
	RuntimePatterns []*regexp.Regexp
	// RuntimeErrorGrace is how long a sandbox or container create error may
	// last before it counts: the kubelet retries both.
	RuntimeErrorGrace time.Duration
}

var (
	imageReasons = map[string]bool{"ErrImagePull": true, "ImagePullBackOff": true, "InvalidImageName": true,
		"ErrImageNeverPull": true, "ImageInspectError": true, "RegistryUnavailable": true}
	// Reasons that never pass by waiting.
	immediateImageReasons = map[string]bool{"InvalidImageName": true, "ErrImageNeverPull": true}
	// The kubelet reports a missing Secret as CreateContainerConfigError.
	configErrorReason = "CreateContainerConfigError"
	runtimeReasons    = map[string]bool{"CrashLoopBackOff": true, "CreateContainerConfigError": true, "CreateContainerError": true,
		"RunContainerError": true, "StartError": true, "PreStartHookError": true, "PostStartHookError": true, "ContainerCannotRun": true}
	// Create errors the kubelet retries on its own: they count only once
	// they have outlasted AssessOptions.RuntimeErrorGrace.
	retriedCreateReasons = map[string]bool{"CreateContainerError": true, "RunContainerError": true}
	// Terminations whose message the runtime wrote (the process never
	// started). Any other termination message comes from the container's
	// own termination log: the build can write anything there.
	runtimeTerminationReasons = map[string]bool{"StartError": true, "ContainerCannotRun": true}
)

// tokenSecretGrace is how long a pod may wait for its token Secret: the
// executor creates it right after the pod, and a start that died in between
// creates it when redelivered (retry backoff: seconds); the kubelet retries
// the container on its own.
const tokenSecretGrace = 2 * time.Minute

// Assess judges a build pod from its status and its events. It looks at
// every init container, container and sidecar, the pod conditions and
// sandbox events, never only the first container.
func Assess(pod *corev1.Pod, events []*corev1.Event, now time.Time, o AssessOptions) Verdict {
	if pod == nil {
		return Verdict{State: StateMissing, Message: "Build pod not found."}
	}
	v := Verdict{Pod: pod.Name, Node: pod.Spec.NodeName}
	fail := func(class FailureClass, sig Signature, reason, msg string) Verdict {
		v.State, v.Class, v.Signature, v.Reason, v.Message = StateFailed, class, sig, reason, msg
		return v
	}
	created := pod.CreationTimestamp.Time
	age := now.Sub(created)
	// until collects the graces that end while the pod is pending.
	var until time.Time
	graceEnds := func(t time.Time) {
		if until.IsZero() || t.Before(until) {
			until = t
		}
	}

	statuses := make([]corev1.ContainerStatus, 0, len(pod.Status.InitContainerStatuses)+len(pod.Status.ContainerStatuses))
	statuses = append(statuses, pod.Status.InitContainerStatuses...)
	statuses = append(statuses, pod.Status.ContainerStatuses...)
	for _, cs := range statuses {
		if t := cs.State.Terminated; t != nil && t.ExitCode != 0 {
			return classifyTermination(v, cs, t, o)
		}
		if w := cs.State.Waiting; w != nil {
			where := fmt.Sprintf("container %q (%s)", cs.Name, cs.Image)
			switch {
			case imageReasons[w.Reason] && !immediateImageReasons[w.Reason] && age < o.ImagePullGrace:
				graceEnds(created.Add(o.ImagePullGrace))
			case w.Reason == configErrorReason && age < tokenSecretGrace &&
				strings.Contains(w.Message, `"`+executor.TokenSecretName(pod.Name)+`" not found`):
				graceEnds(created.Add(tokenSecretGrace))
			case retriedCreateReasons[w.Reason] && now.Before(containersSince(pod).Add(o.RuntimeErrorGrace)):
				graceEnds(containersSince(pod).Add(o.RuntimeErrorGrace))
			case imageReasons[w.Reason]:
				return fail(ClassImage, SigNone, w.Reason, fmt.Sprintf("Build failed to start. Please check if your image is valid: %s: %s %s", where, w.Reason, w.Message))
			case runtimeReasons[w.Reason]:
				sig := runtimeSignature(w.Message, o)
				return fail(ClassRuntime, sig, w.Reason, fmt.Sprintf("Build failed to start (%s: %s %s). Please reach out to your cluster admin for help.", where, w.Reason, strings.TrimSpace(w.Message)))
			}
		}
	}
	// Sandbox failures never show in container statuses (Kata VM boot,
	// missing handler, CNI in the guest): only in events.
	if pod.Status.Phase == corev1.PodPending {
		for _, e := range events {
			// Events are found by pod name: ignore those of an earlier pod
			// that had the same name.
			if e.InvolvedObject.UID != "" && pod.UID != "" && e.InvolvedObject.UID != pod.UID {
				continue
			}
			if e.Reason != "FailedCreatePodSandBox" || e.Type != corev1.EventTypeWarning {
				continue
			}
			// The kubelet retries a sandbox: only one that keeps failing
			// for the grace is the runtime's failure.
			if ends := firstSeen(e, now).Add(o.RuntimeErrorGrace); now.Before(ends) {
				graceEnds(ends)
				continue
			}
			return fail(ClassRuntime, SigSandbox, e.Reason, fmt.Sprintf("Build failed to start: the runtime could not create the pod sandbox (%d attempts): %s", max(e.Count, 1), e.Message))
		}
	}

	switch pod.Status.Phase {
	case corev1.PodSucceeded:
		v.State = StateSucceeded
		return v
	case corev1.PodFailed:
		if pod.Status.Reason == "DeadlineExceeded" {
			return fail(ClassUser, SigNone, pod.Status.Reason, "Build exceeded its maximum duration and was stopped.")
		}
		if pod.Status.Reason == "Evicted" {
			return fail(ClassUnknown, SigNone, pod.Status.Reason, "Build pod was evicted: "+pod.Status.Message)
		}
		return fail(ClassUnknown, SigNone, pod.Status.Reason, "Failed to create pod. Pod status is: failed "+strings.TrimSpace(pod.Status.Message))
	case corev1.PodUnknown:
		return fail(ClassUnknown, SigNone, "Unknown", "Failed to create pod. Pod status is: unknown")
	case corev1.PodRunning:
		v.State = StateRunning
		if pod.Status.StartTime != nil {
			v.Since = pod.Status.StartTime.Time
		}
		for _, cs := range pod.Status.ContainerStatuses {
			if r := cs.State.Running; r != nil && r.StartedAt.After(v.Since) {
				v.Since = r.StartedAt.Time
			}
		}
		return v
	}

	// Pending.
	v.State = StatePending
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable {
			v.State, v.Reason, v.Message = StatePendingUnschedulable, c.Reason, "Waiting for resources to be available: "+c.Message
		}
	}
	if v.State == StatePending && pod.Spec.NodeName != "" {
		v.State, v.Message = StatePendingPulling, "Pod is scheduled on "+pod.Spec.NodeName+"; pulling images and starting containers."
	}
	if o.PendingTimeout > 0 && age > o.PendingTimeout {
		msg := fmt.Sprintf("Build pod still pending after %s", o.PendingTimeout.Round(time.Second))
		if v.Message != "" {
			msg += ": " + v.Message
		}
		return fail(ClassUnknown, SigNone, "PendingTimeout", msg)
	}
	if o.PendingTimeout > 0 {
		graceEnds(created.Add(o.PendingTimeout))
	}
	v.Until = until
	return v
}

func classifyTermination(v Verdict, cs corev1.ContainerStatus, t *corev1.ContainerStateTerminated, o AssessOptions) Verdict {
	where := fmt.Sprintf("container %q (%s)", cs.Name, cs.Image)
	v.State, v.Reason = StateFailed, t.Reason
	ran := t.FinishedAt.Sub(t.StartedAt.Time)
	sig := SigNone
	if runtimeTerminationReasons[t.Reason] {
		sig = runtimeSignature(t.Message, o)
	}
	switch {
	case sig != SigNone:
		v.Class, v.Signature = ClassRuntime, sig
	case t.ExitCode == 139 && (t.StartedAt.IsZero() || ran <= o.Exit139Window):
		v.Class, v.Signature = ClassRuntime, SigExit139
	case t.Reason == "StartError" || t.Reason == "ContainerCannotRun":
		v.Class = ClassRuntime
	default:
		// The build itself exited non-zero: its own failure, never a reason
		// to try another runtime.
		v.Class = ClassUser
	}
	msg := fmt.Sprintf("%s exited with code %d", where, t.ExitCode)
	if t.Message != "" {
		msg += ": " + strings.TrimSpace(t.Message)
	}
	if v.Class == ClassRuntime {
		msg = "Build failed to start: " + msg
	}
	v.Message = msg
	return v
}

func runtimeSignature(msg string, o AssessOptions) Signature {
	if strings.Contains(msg, "exec format error") {
		return SigExecFormat
	}
	for _, re := range o.RuntimePatterns {
		if re.MatchString(msg) {
			return SigPattern
		}
	}
	return SigNone
}

// firstSeen is when an event first happened: events from the core API
// carry FirstTimestamp, those from events.k8s.io EventTime, and every
// stored event its creation time; now only for an event never stored.
func firstSeen(e *corev1.Event, now time.Time) time.Time {
	switch {
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	case !e.CreationTimestamp.IsZero():
		return e.CreationTimestamp.Time
	}
	return now
}

// containersSince is when the kubelet could first try to create the pod's
// containers: the latest of its sandbox becoming ready, its init containers
// finishing and its scheduling, or its creation. A create error is judged
// from then, not from creation: a long image pull must not use up its grace.
func containersSince(p *corev1.Pod) time.Time {
	t := p.CreationTimestamp.Time
	for _, c := range p.Status.Conditions {
		switch c.Type {
		case corev1.PodScheduled, corev1.PodInitialized, corev1.PodReadyToStartContainers:
			if c.Status == corev1.ConditionTrue && c.LastTransitionTime.After(t) {
				t = c.LastTransitionTime.Time
			}
		}
	}
	return t
}
