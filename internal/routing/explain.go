package routing

import (
	"fmt"
	"strings"
	"time"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// Explanation is a decision with everything an operator needs to see why it
// was taken. `queue-worker explain -o json` and GET /debug/route print it;
// the worker logs it.
type Explanation struct {
	BuildID    int64  `json:"buildId"`
	JobID      int64  `json:"jobId,omitempty"`
	PipelineID int64  `json:"pipelineId,omitempty"`
	Image      string `json:"image"`
	// ExecutorAnnotation is the screwdriver.cd/executor value, if any.
	ExecutorAnnotation string `json:"executorAnnotation,omitempty"`

	Runtime weightage.Runtime `json:"runtime"`
	Rule    weightage.Rule    `json:"rule"`
	// PausedRule is the rule that chose the paused runtime (rule paused).
	PausedRule weightage.Rule `json:"pausedRule,omitempty"`
	// Held: the runtime is paused and the build cannot move; it waits.
	Held           bool   `json:"held,omitempty"`
	MatchedPattern string `json:"matchedPattern,omitempty"`
	// Bucket, KataPercent and the sticky key are set when the draw was made.
	Bucket      *int                 `json:"bucket,omitempty"`
	KataPercent *float64             `json:"kataPercent,omitempty"`
	StickyBy    weightage.Stickiness `json:"stickyBy,omitempty"`
	StickyKey   int64                `json:"stickyKey,omitempty"`
	// Budget is the runtime's cap of pods in flight (0 = none). InFlight is
	// the runtime's pods in flight when the budget was checked (the daemon
	// checks it; the offline explain cannot).
	Budget   int  `json:"budget,omitempty"`
	InFlight *int `json:"inFlight,omitempty"`
	// Wait is why the start must wait (paused or budget), if it must.
	Wait            string `json:"wait,omitempty"`
	IgnoredExecutor string `json:"ignoredExecutor,omitempty"`
	RulesVersion    string `json:"rulesVersion"`
	// Autopilot is where the autopilot stands, when it is on: with the
	// weighted rule, its percentage is the one the draw used.
	Autopilot *AutopilotView `json:"autopilot,omitempty"`
	// Reason is the decision in words.
	Reason string `json:"reason"`
}

// explain describes decision d of build b under r; inflight is the
// runtime's pods in flight if the budget was checked (else -1).
func explain(b weightage.Build, d weightage.Decision, r *weightage.Rules, inflight int, wait *Wait) Explanation {
	e := Explanation{
		BuildID: b.BuildID, JobID: b.JobID, PipelineID: b.PipelineID, Image: b.Image,
		ExecutorAnnotation: b.Executor,
		Runtime:            d.Runtime, Rule: d.Rule, PausedRule: d.PausedRule, Held: d.Held,
		MatchedPattern:  d.Pattern,
		Budget:          r.Budget(d.Runtime),
		IgnoredExecutor: d.IgnoredExecutor,
		RulesVersion:    d.RulesVersion,
	}
	if inflight >= 0 {
		e.InFlight = &inflight
	}
	if wait != nil {
		e.Wait = wait.Reason
	}
	if d.Bucket >= 0 {
		bucket, pct := d.Bucket, float64(d.KataBasisPoints)/100
		e.Bucket, e.KataPercent = &bucket, &pct
		e.StickyBy, e.StickyKey = weightage.StickyKey(b, r.Stickiness)
	}
	e.Reason = reason(b, d, &e)
	return e
}

func reason(b weightage.Build, d weightage.Decision, e *Explanation) string {
	rule := d.Rule
	if rule == weightage.RulePaused {
		rule = d.PausedRule
	}
	var s string
	switch rule {
	case weightage.RuleAnnotation:
		s = fmt.Sprintf("annotation screwdriver.cd/executor=%s", b.Executor)
	case weightage.RuleExcluded:
		s = fmt.Sprintf("image %q matches exclusion %q", b.Image, d.Pattern)
	case weightage.RuleLearnedExclusion:
		s = fmt.Sprintf("image %q is a learned exclusion (it failed on Kata before)", b.Image)
	case weightage.RuleWeighted:
		cmp := "<"
		if d.Bucket >= d.KataBasisPoints {
			cmp = "≥"
		}
		s = fmt.Sprintf("bucket %d %s %d (%.2f%% to Kata, sticky by %s %d)",
			d.Bucket, cmp, d.KataBasisPoints, *e.KataPercent, e.StickyBy, e.StickyKey)
	case weightage.RuleDefault:
		s = fmt.Sprintf("no weight configured; the default runtime is %s", d.Runtime)
		if d.Rule == weightage.RulePaused {
			s = fmt.Sprintf("no weight configured; the default runtime is %s", d.Runtime.Other())
		}
	}
	if d.Rule == weightage.RulePaused {
		s = fmt.Sprintf("%s is paused; rule %s had chosen it: %s", d.Runtime.Other(), d.PausedRule, s)
	}
	var extra []string
	if d.Held {
		extra = append(extra, fmt.Sprintf("HELD: %s is paused and the build cannot move, so the start waits in the queue", d.Runtime))
	}
	if d.IgnoredExecutor != "" {
		extra = append(extra, fmt.Sprintf("annotation executor=%q names no runtime and was ignored", d.IgnoredExecutor))
	}
	switch {
	case e.Budget > 0 && e.InFlight == nil:
		extra = append(extra, fmt.Sprintf("%s budget %d pods in flight (checked by the daemon, not here)", d.Runtime, e.Budget))
	case e.Budget > 0 && *e.InFlight >= e.Budget:
		extra = append(extra, fmt.Sprintf("WAITS: %s has %d pods in flight, at its budget of %d", d.Runtime, *e.InFlight, e.Budget))
	case e.Budget > 0:
		extra = append(extra, fmt.Sprintf("%s has %d of its budget of %d pods in flight", d.Runtime, *e.InFlight, e.Budget))
	}
	for _, x := range extra {
		s += "; " + x
	}
	return s
}

// String is the one-line human form: build 42 → hyperd (rule excluded: …; rules v=…).
func (e Explanation) String() string {
	rule := string(e.Rule)
	if e.Rule == weightage.RulePaused {
		rule += " after " + string(e.PausedRule)
	}
	s := fmt.Sprintf("build %d → %s (rule %s: %s; rules v=%s)", e.BuildID, e.Runtime, rule, e.Reason, e.RulesVersion)
	if a := e.Autopilot; a != nil {
		s += fmt.Sprintf("\n  autopilot: %s at %g%% Kata", a.Mode, a.Percent)
		if a.LastDecision != "" {
			s += fmt.Sprintf("; last decision %s: %s", a.LastDecisionAt.UTC().Format(time.RFC3339), a.LastDecision)
		}
	}
	return s
}

// ParseAnnotation reads KEY=VALUE into a screwdriver annotation; a KEY
// without a domain is taken as screwdriver.cd/KEY, so "executor=k8s-vm" works.
func ParseAnnotation(kv string) (key, value string, err error) {
	key, value, ok := strings.Cut(kv, "=")
	if !ok || key == "" {
		return "", "", fmt.Errorf("annotation %q is not key=value", kv)
	}
	if !strings.Contains(key, "/") {
		key = "screwdriver.cd/" + key
	}
	return key, value, nil
}

// BuildFromFields makes the build config an explain request describes.
func BuildFromFields(buildID, jobID, pipelineID int64, image string, annotations []string) (*build.Config, error) {
	b := &build.Config{BuildID: buildID, JobID: jobID, PipelineID: pipelineID, Container: image}
	for _, kv := range annotations {
		k, v, err := ParseAnnotation(kv)
		if err != nil {
			return nil, err
		}
		if b.Annotations == nil {
			b.Annotations = map[string]any{}
		}
		b.Annotations[k] = v
	}
	return b, nil
}
