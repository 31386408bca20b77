package routing

import (
	"context"
	"fmt"
	"time"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// RulesSource returns the rules in force (a *weightage.Holder).
type RulesSource interface {
	Current() *weightage.Rules
}

// Learned tells whether an image is a learned exclusion (failed on Kata).
type Learned interface {
	Excluded(ctx context.Context, image string) (bool, error)
}

// InFlightCounter counts a runtime's build pods that are not finished (from
// the pod watch cache).
type InFlightCounter interface {
	InFlight(rt weightage.Runtime) int
}

// AutopilotStatus tells where the autopilot stands, for explanations.
type AutopilotStatus interface {
	AutopilotView() *AutopilotView
}

// AutopilotView is the autopilot's part of an explanation: nil when it is
// off (the configured weight is in force).
type AutopilotView struct {
	// Percent is the Kata share it has in force; Mode is active, paused or
	// pinned (or unknown when its state could not be read).
	Percent float64 `json:"percent"`
	Mode    string  `json:"mode"`
	// LastDecision is its last decision with its reason and numbers.
	LastDecision   string     `json:"lastDecision,omitempty"`
	LastDecisionAt *time.Time `json:"lastDecisionAt,omitempty"`
}

// DeciderDeps are what a decision reads. Learned, InFlight and Autopilot
// are optional: without them learned exclusions are not consulted, budgets
// are shown but not checked (the offline `explain`), and no autopilot is
// shown.
type DeciderDeps struct {
	Rules     RulesSource
	Learned   Learned
	InFlight  InFlightCounter
	Autopilot AutopilotStatus
}

// Decider takes the one routing decision of a build: the rules in force
// (annotation, exclusions, weight, default, pauses), the learned exclusions
// and the budgets. The worker, `queue-worker explain` and /debug/route all
// go through Decide, so what an operator is shown is what a start does.
type Decider struct {
	deps DeciderDeps
}

// NewDecider returns a decider over deps.
func NewDecider(deps DeciderDeps) *Decider { return &Decider{deps: deps} }

// Wait reasons (metric label values).
const (
	WaitPaused = "paused"
	WaitBudget = "budget"
)

// Decision is where a build goes and why, and whether it must wait.
type Decision struct {
	weightage.Decision
	// Wait is set when the start cannot run now: its runtime is paused
	// with nowhere else to go, or at its budget of pods in flight.
	Wait *Wait
	// Explanation is the decision in full, for logs and operators.
	Explanation Explanation
}

// Wait says why a start must wait; it is never a failure.
type Wait struct {
	Reason  string // WaitPaused | WaitBudget
	Message string
}

// Decide routes b under the rules in force. It fails only when a dependency
// (the learned-exclusion store) cannot be read.
func (d *Decider) Decide(ctx context.Context, b *build.Config) (Decision, error) {
	in := Input(b)
	if d.deps.Learned != nil && in.Image != "" {
		excluded, err := d.deps.Learned.Excluded(ctx, in.Image)
		if err != nil {
			return Decision{}, fmt.Errorf("looking up learned exclusions for %q: %w", in.Image, err)
		}
		in.LearnedExcluded = excluded
	}
	rules := d.deps.Rules.Current() // one rule set for the route and its budget
	out := Decision{Decision: weightage.Route(in, rules)}
	budget := rules.Budget(out.Runtime)
	inflight := -1
	switch {
	case out.Held:
		out.Wait = &Wait{Reason: WaitPaused,
			Message: fmt.Sprintf("%s is paused and the build can only run there (rule %s)", out.Runtime, out.Rule)}
	case budget > 0 && d.deps.InFlight != nil:
		// Soft: slots and replicas that check at the same moment can each
		// start one pod past the budget.
		inflight = d.deps.InFlight.InFlight(out.Runtime)
		if inflight >= budget {
			out.Wait = &Wait{Reason: WaitBudget,
				Message: fmt.Sprintf("%s has %d pods in flight, at its budget of %d", out.Runtime, inflight, budget)}
		}
	}
	out.Explanation = explain(in, out.Decision, rules, inflight, out.Wait)
	if d.deps.Autopilot != nil {
		out.Explanation.Autopilot = d.deps.Autopilot.AutopilotView()
	}
	return out, nil
}
