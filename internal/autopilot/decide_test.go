package autopilot

import (
	"slices"
	"strings"
	"testing"
	"time"
)

var settings = Settings{Enabled: true, Step: 5, Interval: 10 * time.Minute, MaxPercent: 50, MinBuilds: 50,
	MaxFailureRateDelta: 0.02, MaxSetupTimeRatio: 1.5}

// figs makes a window: builds, failures, runtime failures and setup p90
// (seconds) per runtime.
func figs(kb, kf, kr int, ks float64, hb, hf, hr int, hs float64) Figures {
	t0 := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	rf := func(b, f, r int, s float64) RuntimeFigures {
		return RuntimeFigures{Builds: b, Failures: f, RuntimeFailures: r, SetupP90Seconds: s, SetupSamples: b - f}
	}
	return Figures{From: t0, To: t0.Add(10 * time.Minute), Kata: rf(kb, kf, kr, ks), Hyperd: rf(hb, hf, hr, hs)}
}

func pinAt(p float64) *float64 { return &p }

func TestDecide(t *testing.T) {
	healthy := figs(100, 2, 0, 12, 400, 6, 0, 10)
	baseline := &Baseline{WindowEnd: time.Date(2026, 12, 6, 9, 0, 0, 0, time.UTC), Hyperd: RuntimeFigures{Builds: 300, Failures: 3, SetupP90Seconds: 10, SetupSamples: 297}}
	tests := []struct {
		name      string
		state     State
		floor     float64
		figures   Figures
		paused    string
		pin       *float64
		breakers  []string
		outcome   Outcome
		reason    Reason
		to        float64
		ladder    []float64
		regress   int
		baseline  bool // the decision compared with an earlier baseline
		detailHas string
	}{
		{name: "first decision starts at the floor and promotes a healthy window",
			floor: 5, figures: healthy, outcome: Promote, reason: ReasonHealthy, to: 10, ladder: []float64{5}},
		{name: "promotes from the state's percentage",
			state: State{Seq: 3, Percent: 20, Ladder: []float64{10, 15}}, floor: 10, figures: healthy,
			outcome: Promote, reason: ReasonHealthy, to: 25, ladder: []float64{10, 15, 20}},
		{name: "a promotion never passes the maximum",
			state: State{Seq: 3, Percent: 48}, floor: 5, figures: healthy, outcome: Promote, reason: ReasonHealthy, to: 50, ladder: []float64{48}},
		{name: "holds at the maximum",
			state: State{Seq: 3, Percent: 50, Regressions: 1}, floor: 5, figures: healthy, outcome: Hold, reason: ReasonAtMax, to: 50},
		{name: "a lowered maximum pulls the share down",
			state: State{Seq: 3, Percent: 80}, floor: 5, figures: healthy, outcome: Hold, reason: ReasonAtMax, to: 50},
		{name: "a raised floor pulls the share up and drops rungs below it",
			state: State{Seq: 3, Percent: 15, Ladder: []float64{5, 10}}, floor: 20, figures: healthy,
			outcome: Promote, reason: ReasonHealthy, to: 25, ladder: []float64{20}},
		{name: "holds when Kata has too few builds",
			state: State{Seq: 3, Percent: 20, Regressions: 1}, floor: 5, figures: figs(49, 0, 0, 1, 400, 0, 0, 1),
			outcome: Hold, reason: ReasonTooFewBuilds, to: 20, regress: 1, detailHas: "Kata had 49 weighted builds of the 50 needed"},
		{name: "holds when hyperd has too few builds and no baseline",
			state: State{Seq: 3, Percent: 20}, floor: 5, figures: figs(100, 0, 0, 1, 10, 0, 0, 1),
			outcome: Hold, reason: ReasonTooFewBuilds, to: 20},
		{name: "compares with hyperd's baseline when hyperd's window is thin",
			state: State{Seq: 3, Percent: 45, Baseline: baseline}, floor: 5, figures: figs(900, 9, 0, 11, 10, 0, 0, 1),
			outcome: Promote, reason: ReasonHealthy, to: 50, ladder: []float64{45}, baseline: true, detailHas: "hyperd's baseline of 300 builds"},
		{name: "steps back to the previous percentage on a runtime failure regression",
			state: State{Seq: 3, Percent: 20, Ladder: []float64{5, 10, 15}}, floor: 5, figures: figs(100, 10, 10, 12, 400, 4, 0, 10),
			outcome: StepBack, reason: ReasonRegression, to: 15, ladder: []float64{5, 10}, regress: 1, detailHas: "runtime failures 10.0% vs 0.0%"},
		{name: "an excess that may be chance holds",
			state: State{Seq: 3, Percent: 20, Ladder: []float64{15}, Regressions: 1}, floor: 5, figures: figs(100, 5, 5, 12, 400, 4, 0, 10),
			outcome: Hold, reason: ReasonInconclusive, to: 20, ladder: []float64{15}, regress: 1, detailHas: "runtime failures 5.0% vs 0.0% (+5.0% > 2.0%, z=1.38 < 1.645)"},
		{name: "the same excess over ten times the builds steps back",
			state: State{Seq: 3, Percent: 20, Ladder: []float64{15}}, floor: 5, figures: figs(1000, 50, 50, 12, 4000, 40, 0, 10),
			outcome: StepBack, reason: ReasonRegression, to: 15, regress: 1},
		{name: "steps back on an all-failures regression",
			state: State{Seq: 3, Percent: 20, Ladder: []float64{15}}, floor: 5, figures: figs(100, 20, 0, 12, 400, 20, 0, 10),
			outcome: StepBack, reason: ReasonRegression, to: 15, regress: 1, detailHas: "failures 20.0% vs 5.0%"},
		{name: "steps back on slow setup",
			state: State{Seq: 3, Percent: 20, Ladder: []float64{15}}, floor: 5, figures: figs(100, 0, 0, 31, 400, 0, 0, 20),
			outcome: StepBack, reason: ReasonRegression, to: 15, regress: 1, detailHas: "setup p90 31.0s vs 20.0s (×1.55)"},
		{name: "setup under a second is not a regression",
			state: State{Seq: 3, Percent: 20}, floor: 5, figures: figs(100, 0, 0, 0.9, 400, 0, 0, 0.2),
			outcome: Promote, reason: ReasonHealthy, to: 25, ladder: []float64{20}},
		{name: "a failure delta at the bound is within the SLO",
			state: State{Seq: 3, Percent: 20}, floor: 5, figures: figs(100, 3, 2, 10, 100, 1, 0, 10),
			outcome: Promote, reason: ReasonHealthy, to: 25, ladder: []float64{20}},
		{name: "two regressions in a row go back to the floor",
			state: State{Seq: 3, Percent: 15, Ladder: []float64{5, 10}, Regressions: 1}, floor: 5, figures: figs(100, 10, 10, 12, 400, 0, 0, 10),
			outcome: StepBack, reason: ReasonRegressionTwice, to: 5, regress: 2},
		{name: "a regression at the floor holds",
			state: State{Seq: 3, Percent: 5}, floor: 5, figures: figs(100, 10, 10, 12, 400, 0, 0, 10),
			outcome: Hold, reason: ReasonRegressionAtFloor, to: 5, regress: 1},
		{name: "a step back without a rung goes to the floor",
			state: State{Seq: 3, Percent: 30}, floor: 5, figures: figs(100, 10, 10, 12, 400, 0, 0, 10),
			outcome: StepBack, reason: ReasonRegression, to: 5, regress: 1},
		{name: "a healthy window resets the regressions",
			state: State{Seq: 3, Percent: 15, Ladder: []float64{10}, Regressions: 1}, floor: 5, figures: healthy,
			outcome: Promote, reason: ReasonHealthy, to: 20, ladder: []float64{10, 15}},
		{name: "paused holds whatever the window says",
			state: State{Seq: 3, Percent: 15}, floor: 5, figures: figs(100, 50, 50, 12, 400, 0, 0, 10), paused: "incident 42",
			outcome: Hold, reason: ReasonPaused, to: 15, detailHas: "incident 42"},
		{name: "a pin above is adopted, the share it was at becomes a rung",
			state: State{Seq: 3, Percent: 15, Ladder: []float64{10}}, floor: 5, figures: healthy, pin: pinAt(40),
			outcome: Hold, reason: ReasonPinned, to: 40, ladder: []float64{10, 15}},
		{name: "a pin below drops the rungs above it",
			state: State{Seq: 3, Percent: 30, Ladder: []float64{10, 20, 25}}, floor: 5, figures: healthy, pin: pinAt(20),
			outcome: Hold, reason: ReasonPinned, to: 20, ladder: []float64{10}},
		{name: "a breaker open during the window holds",
			state: State{Seq: 3, Percent: 15}, floor: 5, figures: figs(100, 50, 50, 12, 400, 0, 0, 10), breakers: []string{"ci-api"},
			outcome: Hold, reason: ReasonBreakerOpen, to: 15, detailHas: "ci-api"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			now := tt.figures.To
			d, next := Decide(Input{Settings: settings, Floor: tt.floor, State: tt.state, Figures: tt.figures,
				Paused: tt.paused, Pin: tt.pin, Breakers: tt.breakers, Now: now})
			if d.Outcome != tt.outcome || d.Reason != tt.reason || d.To != tt.to {
				t.Fatalf("decision %s %s → %v, want %s %s → %v\n%s", d.Outcome, d.Reason, d.To, tt.outcome, tt.reason, tt.to, d)
			}
			if next.Percent != tt.to || !slices.Equal(next.Ladder, tt.ladder) || next.Regressions != tt.regress {
				t.Errorf("next state percent %v ladder %v regressions %d, want %v %v %d", next.Percent, next.Ladder, next.Regressions, tt.to, tt.ladder, tt.regress)
			}
			if (d.Baseline != nil) != tt.baseline {
				t.Errorf("compared with a baseline: %v, want %v", d.Baseline != nil, tt.baseline)
			}
			if !strings.Contains(d.Detail, tt.detailHas) {
				t.Errorf("detail %q lacks %q", d.Detail, tt.detailHas)
			}
			if next.Last == nil || next.Last.Outcome != d.Outcome || !next.EvaluatedAt.Equal(now) {
				t.Errorf("next state does not record the decision: %+v", next)
			}
			if next.Percent < tt.floor && tt.pin == nil {
				t.Errorf("below the floor: %v < %v", next.Percent, tt.floor)
			}
			if next.Percent > settings.MaxPercent && tt.pin == nil {
				t.Errorf("above the maximum: %v", next.Percent)
			}
		})
	}
}

// A window with enough hyperd builds becomes the baseline for later thin ones.
func TestDecide_EnoughHyperdBuildsBecomeTheBaseline(t *testing.T) {
	f := figs(100, 0, 0, 10, 60, 1, 0, 10)
	_, next := Decide(Input{Settings: settings, Floor: 5, State: State{Seq: 1, Percent: 10}, Figures: f, Now: f.To})
	if next.Baseline == nil || next.Baseline.Hyperd.Builds != 60 || !next.Baseline.WindowEnd.Equal(f.To) {
		t.Fatalf("baseline %+v", next.Baseline)
	}
	thin := figs(100, 0, 0, 10, 3, 0, 0, 10)
	_, after := Decide(Input{Settings: settings, Floor: 5, State: next, Figures: thin, Now: thin.To})
	if after.Baseline == nil || after.Baseline.Hyperd.Builds != 60 {
		t.Fatalf("a thin window replaced the baseline: %+v", after.Baseline)
	}
}

// A long run of healthy windows climbs in steps to the maximum and stays;
// a regression then walks back down the same rungs.
func TestDecide_ClimbsRungByRungAndWalksBack(t *testing.T) {
	st, got := State{}, []float64{}
	for range 12 {
		d, next := Decide(Input{Settings: settings, Floor: 5, State: st, Figures: figs(100, 0, 0, 10, 100, 0, 0, 10)})
		next.Seq = st.Seq + 1
		st = next
		got = append(got, d.To)
	}
	want := []float64{10, 15, 20, 25, 30, 35, 40, 45, 50, 50, 50, 50}
	if !slices.Equal(got, want) {
		t.Fatalf("climb %v, want %v", got, want)
	}
	bad := figs(100, 10, 10, 10, 100, 0, 0, 10)
	good := figs(100, 0, 0, 10, 100, 0, 0, 10)
	var steps []float64
	for _, f := range []Figures{bad, good, bad, good, bad, bad} {
		d, next := Decide(Input{Settings: settings, Floor: 5, State: st, Figures: f})
		next.Seq = st.Seq + 1
		st = next
		steps = append(steps, d.To)
	}
	// 50 → 45 (regression) → 50 (healthy) → 45 → 50 → 45 → 5 (twice in a row)
	if want := []float64{45, 50, 45, 50, 45, 5}; !slices.Equal(steps, want) {
		t.Fatalf("steps %v, want %v", steps, want)
	}
}
