package supervisor

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Setup phases, in order. Kata's VM boot cost shows in "sandbox"
// (PodScheduled → PodReadyToStartContainers).
const (
	PhaseScheduled   = "scheduled"   // created → PodScheduled
	PhaseSandbox     = "sandbox"     // scheduled → PodReadyToStartContainers
	PhaseInitialized = "initialized" // sandbox ready → Initialized (launcher copied)
	PhaseRunning     = "running"     // initialized → ContainersReady
	PhaseTotal       = "total"       // created → ContainersReady
)

// SetupPhases measures a started pod's setup from its condition timestamps.
// Phases whose timestamps are missing are left out.
func SetupPhases(pod *corev1.Pod) map[string]time.Duration {
	at := map[corev1.PodConditionType]time.Time{}
	for _, c := range pod.Status.Conditions {
		if c.Status == corev1.ConditionTrue && !c.LastTransitionTime.IsZero() {
			at[c.Type] = c.LastTransitionTime.Time
		}
	}
	created := pod.CreationTimestamp.Time
	steps := []struct {
		phase string
		from  time.Time
		to    corev1.PodConditionType
	}{
		{PhaseScheduled, created, corev1.PodScheduled},
		{PhaseSandbox, at[corev1.PodScheduled], corev1.PodReadyToStartContainers},
		{PhaseInitialized, at[corev1.PodReadyToStartContainers], corev1.PodInitialized},
		{PhaseRunning, at[corev1.PodInitialized], corev1.ContainersReady},
		{PhaseTotal, created, corev1.ContainersReady},
	}
	out := map[string]time.Duration{}
	for _, s := range steps {
		to, ok := at[s.to]
		if !ok || s.from.IsZero() || to.Before(s.from) {
			continue
		}
		out[s.phase] = to.Sub(s.from)
	}
	return out
}
