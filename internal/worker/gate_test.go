package worker

import (
	"context"
	"errors"
	"testing"

	"github.com/sdkata/queue-worker/internal/weightage"
)

type fakeCounter struct {
	n   map[weightage.Runtime]int
	err error
}

func (f fakeCounter) InFlight(_ context.Context, rt weightage.Runtime) (int, error) {
	return f.n[rt], f.err
}

func TestAdmit_PausesAndBudgetsDelayNotFail(t *testing.T) {
	pct := 100.0
	rules := func(paused []weightage.Runtime, budgets map[weightage.Runtime]int) *weightage.Rules {
		r, err := weightage.NewRules(weightage.RulesSpec{KataPercent: &pct, Exclusions: []string{"rhel6"},
			Default: weightage.Hyperd, Paused: paused, Budgets: budgets})
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	kataBudget := map[weightage.Runtime]int{weightage.Kata: 3}
	tests := []struct {
		name    string
		rules   *weightage.Rules
		image   string
		counter InFlightCounter
		want    string // "", "paused", "budget" or "error"
	}{
		{"NoSwitchesAdmit", rules(nil, nil), "node", nil, ""},
		{"HyperdPausedHoldsExcludedImage", rules([]weightage.Runtime{weightage.Hyperd}, nil), "rhel6", nil, "paused"},
		{"HyperdPausedMovesOthersToKata", rules([]weightage.Runtime{weightage.Hyperd}, nil), "node", nil, ""},
		{"UnderBudgetAdmits", rules(nil, kataBudget), "node", fakeCounter{n: map[weightage.Runtime]int{weightage.Kata: 2}}, ""},
		{"AtBudgetDelays", rules(nil, kataBudget), "node", fakeCounter{n: map[weightage.Runtime]int{weightage.Kata: 3}}, "budget"},
		{"OtherRuntimeBudgetIgnored", rules(nil, kataBudget), "rhel6", fakeCounter{n: map[weightage.Runtime]int{weightage.Kata: 9}}, ""},
		{"CountFailureIsARetryableError", rules(nil, kataBudget), "node", fakeCounter{err: errors.New("apiserver down")}, "error"},
		{"NoCounterBudgetNotEnforced", rules(nil, kataBudget), "node", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := &Worker{inflight: tt.counter}
			d := weightage.Route(weightage.Build{BuildID: 1, JobID: 1, Image: tt.image}, tt.rules)
			err := w.admit(context.Background(), tt.rules, d)
			var de *delayError
			got := ""
			switch {
			case errors.As(err, &de):
				got = de.reason
			case err != nil:
				got = "error"
			}
			if got != tt.want {
				t.Fatalf("admit(%+v) = %v, want %q", d, err, tt.want)
			}
		})
	}
}
