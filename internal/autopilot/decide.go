package autopilot

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Settings are the routing.autopilot keys.
type Settings struct {
	Enabled bool
	// Step is the percentage points of one promotion.
	Step float64
	// Interval is the evaluation period (and so the window).
	Interval   time.Duration
	MaxPercent float64
	// MinBuilds is the weighted builds each runtime needs in a window.
	MinBuilds int
	// MaxFailureRateDelta is how far Kata's failure rates may exceed
	// hyperd's (a fraction: 0.02 = two points).
	MaxFailureRateDelta float64
	// MaxSetupTimeRatio bounds Kata's p90 setup over hyperd's.
	MaxSetupTimeRatio float64
}

// RuntimeFigures are one runtime's weighted starts in a window.
type RuntimeFigures struct {
	Builds int `json:"builds"`
	// Failures are starts that failed for any reason; RuntimeFailures
	// those the runtime caused (sandbox, exit 139, exec format, a
	// configured pattern: each Kata one is also a fallback).
	Failures        int `json:"failures"`
	RuntimeFailures int `json:"runtimeFailures"`
	// SetupP90 is the p90 of creation → running over the starts that ran
	// (SetupSamples of them).
	SetupP90Seconds float64 `json:"setupP90Seconds"`
	SetupSamples    int     `json:"setupSamples"`
}

// FailureRate is the share of starts that failed.
func (f RuntimeFigures) FailureRate() float64 { return ratio(f.Failures, f.Builds) }

// RuntimeFailureRate is the share of starts the runtime failed.
func (f RuntimeFigures) RuntimeFailureRate() float64 { return ratio(f.RuntimeFailures, f.Builds) }

func ratio(n, d int) float64 {
	if d == 0 {
		return 0
	}
	return float64(n) / float64(d)
}

// Figures are a window's weighted starts per runtime.
type Figures struct {
	From   time.Time      `json:"from"`
	To     time.Time      `json:"to"`
	Kata   RuntimeFigures `json:"kata"`
	Hyperd RuntimeFigures `json:"hyperd"`
}

// Baseline is hyperd's figures from the last window that had enough hyperd
// builds: at a high Kata share hyperd's own window may be too thin to
// compare with, and the last good one stands in.
type Baseline struct {
	WindowEnd time.Time      `json:"windowEnd"`
	Hyperd    RuntimeFigures `json:"hyperd"`
}

// State is the autopilot's shared state (in Redis): every replica routes
// with Percent, and a new leader continues from it.
type State struct {
	// Seq counts commits; a commit names the Seq it read (a deposed leader
	// cannot overwrite its successor's state).
	Seq     int64   `json:"seq"`
	Percent float64 `json:"percent"`
	// Ladder is the percentages promoted from, oldest first: a step back
	// returns to the last one.
	Ladder []float64 `json:"ladder,omitempty"`
	// Regressions counts regressions in a row (a healthy window resets it;
	// a hold for too few builds does not).
	Regressions int       `json:"regressions"`
	Baseline    *Baseline `json:"baseline,omitempty"`
	EvaluatedAt time.Time `json:"evaluatedAt"`
	Last        *Decision `json:"last,omitempty"`
}

// Outcome is what a decision did (metric label).
type Outcome string

// Outcomes.
const (
	Promote  Outcome = "promote"
	Hold     Outcome = "hold"
	StepBack Outcome = "step-back"
)

// Reason is why (metric label).
type Reason string

// Reasons.
const (
	ReasonHealthy           Reason = "healthy"
	ReasonAtMax             Reason = "at-max"
	ReasonTooFewBuilds      Reason = "too-few-builds"
	ReasonRegression        Reason = "regression"
	ReasonRegressionTwice   Reason = "regression-twice"
	ReasonRegressionAtFloor Reason = "regression-at-floor"
	ReasonPaused            Reason = "paused"
	ReasonPinned            Reason = "pinned"
	ReasonBreakerOpen       Reason = "breaker-open"
	// ReasonInconclusive: a failure rate above the bound, by no more than
	// chance could make it in a window of this size.
	ReasonInconclusive Reason = "inconclusive"
)

// Outcomes and Reasons list the label values, for pre-created series.
var (
	Outcomes = []Outcome{Promote, Hold, StepBack}
	Reasons  = []Reason{ReasonHealthy, ReasonAtMax, ReasonTooFewBuilds, ReasonRegression, ReasonRegressionTwice,
		ReasonRegressionAtFloor, ReasonPaused, ReasonPinned, ReasonBreakerOpen, ReasonInconclusive}
)

// Decision is one evaluation: what it did, and the numbers behind it.
type Decision struct {
	At      time.Time `json:"at"`
	Outcome Outcome   `json:"outcome"`
	Reason  Reason    `json:"reason"`
	From    float64   `json:"from"`
	To      float64   `json:"to"`
	Floor   float64   `json:"floor"`
	Max     float64   `json:"max"`
	Figures Figures   `json:"figures"`
	// Baseline is set when hyperd's figures came from an earlier window.
	Baseline *Baseline `json:"baseline,omitempty"`
	// Detail is the decision in words, with its numbers.
	Detail string `json:"detail"`
	// Leader is the replica that decided.
	Leader string `json:"leader,omitempty"`
}

// String is the one-line form: "promote 10% → 15% (healthy: …)".
func (d Decision) String() string {
	return fmt.Sprintf("%s %s → %s (%s: %s)", d.Outcome, pct(d.From), pct(d.To), d.Reason, d.Detail)
}

// Input is everything one evaluation reads.
type Input struct {
	Settings Settings
	// Floor is the configured Kata percentage (executor.k8s.weightage).
	Floor   float64
	State   State
	Figures Figures
	// Paused is the operator's pause reason ("" when not paused).
	Paused string
	// Pin is the operator's pinned percentage, if any.
	Pin *float64
	// Breakers names the breakers that were not closed during the window.
	Breakers []string
	Now      time.Time
}

// InForce is the percentage in force under state s: the state's, kept
// within [floor, max] (either may have been reconfigured since), or the
// floor before any decision.
func InForce(s State, floor, maxPercent float64) float64 {
	if s.Seq == 0 {
		return floor
	}
	return clampPercent(s.Percent, floor, maxPercent)
}

func clampPercent(p, floor, maxPercent float64) float64 {
	return math.Max(floor, math.Min(p, math.Max(maxPercent, floor)))
}

// Decide is one evaluation, pure: promote by Step when Kata's window is
// within the SLO against hyperd's with enough builds on both; hold when the
// window is too thin, at the maximum, paused, pinned or taken during a
// breaker's opening; step back to the previous percentage on a regression,
// or to the floor after two in a row. It returns the decision and the
// state to commit.
func Decide(in Input) (Decision, State) {
	s := in.Settings
	cur := InForce(in.State, in.Floor, s.MaxPercent)
	next := in.State
	next.Percent = cur
	next.Ladder = slices.DeleteFunc(slices.Clone(in.State.Ladder), func(p float64) bool { return p < in.Floor || p >= cur })
	next.EvaluatedAt = in.Now
	d := Decision{At: in.Now, From: cur, To: cur, Floor: in.Floor, Max: s.MaxPercent, Figures: in.Figures}
	done := func(o Outcome, r Reason, detail string, args ...any) (Decision, State) {
		d.Outcome, d.Reason, d.Detail = o, r, fmt.Sprintf(detail, args...)
		next.Percent = d.To
		last := d
		next.Last = &last
		return d, next
	}

	switch {
	case in.Pin != nil:
		// The pin is adopted: unpinned, the autopilot goes on from it, and a
		// regression then steps back to the highest rung below it (where
		// the autopilot had got to, if lower).
		pin := *in.Pin
		if cur < pin {
			next.Ladder = append(next.Ladder, cur)
		}
		next.Ladder = slices.DeleteFunc(next.Ladder, func(p float64) bool { return p >= pin })
		d.To = pin
		return done(Hold, ReasonPinned, "pinned at %s by an operator", pct(pin))
	case in.Paused != "":
		return done(Hold, ReasonPaused, "paused by an operator: %s", in.Paused)
	case len(in.Breakers) > 0:
		return done(Hold, ReasonBreakerOpen, "the %s breaker opened during the window: its failures say nothing about Kata",
			strings.Join(in.Breakers, " and "))
	}

	k, h := in.Figures.Kata, in.Figures.Hyperd
	if k.Builds < s.MinBuilds {
		return done(Hold, ReasonTooFewBuilds, "Kata had %d weighted builds of the %d needed (hyperd %d)", k.Builds, s.MinBuilds, h.Builds)
	}
	if h.Builds >= s.MinBuilds {
		next.Baseline = &Baseline{WindowEnd: in.Figures.To, Hyperd: h}
	} else {
		if in.State.Baseline == nil {
			return done(Hold, ReasonTooFewBuilds, "hyperd had %d weighted builds of the %d needed and there is no earlier baseline", h.Builds, s.MinBuilds)
		}
		b := *in.State.Baseline
		d.Baseline, h = &b, b.Hyperd
	}

	// A failure rate above the bound is a regression only when the excess
	// is more than chance in windows of this size (one-sided test at 95%):
	// at 50 builds a single failure moves a rate by two points. An excess
	// that may be chance holds instead: never a promotion on it, never a
	// step back for it.
	var bad, unsure []string
	for _, c := range []struct {
		name   string
		kr, hr float64
	}{
		{"runtime failures", k.RuntimeFailureRate(), h.RuntimeFailureRate()},
		{"failures", k.FailureRate(), h.FailureRate()},
	} {
		delta := c.kr - c.hr
		if delta <= s.MaxFailureRateDelta {
			continue
		}
		z := excessZ(c.kr, k.Builds, c.hr, h.Builds, s.MaxFailureRateDelta)
		msg := fmt.Sprintf("%s %s vs %s (+%s > %s", c.name, rate(c.kr), rate(c.hr), rate(delta), rate(s.MaxFailureRateDelta))
		if z >= significantZ {
			bad = append(bad, msg+")")
		} else {
			unsure = append(unsure, fmt.Sprintf("%s, z=%.2f < %.3f)", msg, z, significantZ))
		}
	}
	setup := "no setup times to compare"
	if k.SetupSamples > 0 && h.SetupSamples > 0 {
		// Condition timestamps have a one-second resolution: below it,
		// ratios are noise.
		r := math.Max(k.SetupP90Seconds, 1) / math.Max(h.SetupP90Seconds, 1)
		setup = fmt.Sprintf("setup p90 %.1fs vs %.1fs (×%.2f)", k.SetupP90Seconds, h.SetupP90Seconds, r)
		if r > s.MaxSetupTimeRatio {
			bad = append(bad, fmt.Sprintf("%s > ×%.2f", setup, s.MaxSetupTimeRatio))
		}
	}
	against := fmt.Sprintf("%d Kata vs %d hyperd builds", k.Builds, h.Builds)
	if d.Baseline != nil {
		against = fmt.Sprintf("%d Kata builds vs hyperd's baseline of %d builds (window ending %s; hyperd had %d in this one)",
			k.Builds, h.Builds, d.Baseline.WindowEnd.UTC().Format(time.RFC3339), in.Figures.Hyperd.Builds)
	}

	if len(bad) == 0 && len(unsure) > 0 {
		return done(Hold, ReasonInconclusive, "%s: %s: above the bound, but not clearly more than chance in windows this size", against, strings.Join(unsure, "; "))
	}
	if len(bad) == 0 {
		next.Regressions = 0
		summary := fmt.Sprintf("%s: runtime failures %s vs %s, failures %s vs %s, %s", against,
			rate(k.RuntimeFailureRate()), rate(h.RuntimeFailureRate()), rate(k.FailureRate()), rate(h.FailureRate()), setup)
		if cur >= s.MaxPercent {
			return done(Hold, ReasonAtMax, "at the maximum; %s", summary)
		}
		d.To = roundPercent(math.Min(cur+s.Step, s.MaxPercent))
		next.Ladder = append(next.Ladder, cur)
		return done(Promote, ReasonHealthy, "%s", summary)
	}

	next.Regressions++
	why := fmt.Sprintf("%s: %s", against, strings.Join(bad, "; "))
	switch {
	case cur <= in.Floor:
		next.Ladder = nil
		return done(Hold, ReasonRegressionAtFloor, "already at the floor; %s", why)
	case next.Regressions >= 2:
		d.To, next.Ladder = in.Floor, nil
		return done(StepBack, ReasonRegressionTwice, "%d regressions in a row, back to the floor; %s", next.Regressions, why)
	}
	d.To = in.Floor
	if n := len(next.Ladder); n > 0 {
		d.To, next.Ladder = next.Ladder[n-1], next.Ladder[:n-1]
	}
	return done(StepBack, ReasonRegression, "%s", why)
}

// significantZ is the one-sided 95% quantile of the normal distribution.
const significantZ = 1.645

// excessZ is the z statistic of Kata's failure rate exceeding hyperd's by
// more than bound (two proportions, normal approximation). With no
// variance on either side (rates of 0 or 1) the observed excess is taken
// as certain.
func excessZ(kr float64, kn int, hr float64, hn int, bound float64) float64 {
	excess := kr - hr - bound
	se := math.Sqrt(kr*(1-kr)/float64(kn) + hr*(1-hr)/float64(hn))
	if se == 0 {
		if excess > 0 {
			return math.Inf(1)
		}
		return 0
	}
	return excess / se
}

// roundPercent keeps percentages on basis points, so repeated steps do not
// drift (5 + 0.1 + …).
func roundPercent(p float64) float64 { return math.Round(p*100) / 100 }

func pct(p float64) string { return fmt.Sprintf("%g%%", roundPercent(p)) }

func rate(r float64) string { return fmt.Sprintf("%.1f%%", r*100) }
