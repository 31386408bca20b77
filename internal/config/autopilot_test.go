package config

import (
	"reflect"
	"slices"
	"testing"
	"time"
)

func TestLoad_AutopilotDefaults(t *testing.T) {
	cfg, _, err := loadRepo(t, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	want := Autopilot{
		Enabled:             false,
		Step:                5,
		Interval:            10 * time.Minute,
		MaxPercent:          100,
		MinBuilds:           50,
		MaxFailureRateDelta: 0.02,
		MaxSetupTimeRatio:   1.5,
	}
	if got := cfg.Routing.Autopilot; got != want {
		t.Errorf("defaults %+v, want %+v", got, want)
	}
}

// Every env name sets its key, converted to the key's type, and the key's
// source names the env var.
func TestLoad_AutopilotEnv(t *testing.T) {
	tests := []struct {
		env, value, key string
		get             func(a Autopilot) any
		want            any
	}{
		{"ROUTING_AUTOPILOT_ENABLED", "true", "enabled", func(a Autopilot) any { return a.Enabled }, true},
		{"ROUTING_AUTOPILOT_STEP", "2.5", "step", func(a Autopilot) any { return a.Step }, 2.5},
		{"ROUTING_AUTOPILOT_INTERVAL", "30s", "interval", func(a Autopilot) any { return a.Interval }, 30 * time.Second},
		{"ROUTING_AUTOPILOT_MAX_PERCENT", "80", "maxPercent", func(a Autopilot) any { return a.MaxPercent }, 80.0},
		{"ROUTING_AUTOPILOT_MIN_BUILDS", "7", "minBuilds", func(a Autopilot) any { return a.MinBuilds }, 7},
		{"ROUTING_AUTOPILOT_MAX_FAILURE_RATE_DELTA", "0.05", "maxFailureRateDelta", func(a Autopilot) any { return a.MaxFailureRateDelta }, 0.05},
		{"ROUTING_AUTOPILOT_MAX_SETUP_TIME_RATIO", "1.25", "maxSetupTimeRatio", func(a Autopilot) any { return a.MaxSetupTimeRatio }, 1.25},
	}
	for _, tt := range tests {
		t.Run(tt.env, func(t *testing.T) {
			// Enabling needs a starting point.
			cfg, _, err := loadRepo(t, map[string]string{tt.env: tt.value, "WEIGHT_K8S": "10"}, "")
			if err != nil {
				t.Fatal(err)
			}
			if got := tt.get(cfg.Routing.Autopilot); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("%s=%s: got %v, want %v", tt.env, tt.value, got, tt.want)
			}
			if got, want := cfg.Source("routing.autopilot."+tt.key), "env "+tt.env; got != want {
				t.Errorf("source of routing.autopilot.%s is %q, want %q", tt.key, got, want)
			}
		})
	}
}

func TestLoad_AutopilotRefused(t *testing.T) {
	tests := []struct {
		name     string
		env      map[string]string
		overlay  string
		wantKeys []string
		want     []string
	}{
		{name: "StepZero", env: map[string]string{"ROUTING_AUTOPILOT_STEP": "0"},
			wantKeys: []string{"routing.autopilot.step"},
			want:     []string{`key "routing.autopilot.step" (from env ROUTING_AUTOPILOT_STEP)`, "[0.01, 100]"}},
		{name: "StepBelowABasisPoint", env: map[string]string{"ROUTING_AUTOPILOT_STEP": "0.004"},
			wantKeys: []string{"routing.autopilot.step"}},
		{name: "StepNegative", env: map[string]string{"ROUTING_AUTOPILOT_STEP": "-5"},
			wantKeys: []string{"routing.autopilot.step"}},
		{name: "StepAbove100", env: map[string]string{"ROUTING_AUTOPILOT_STEP": "100.5"},
			wantKeys: []string{"routing.autopilot.step"}},
		{name: "IntervalUnderASecond", env: map[string]string{"ROUTING_AUTOPILOT_INTERVAL": "500ms"},
			wantKeys: []string{"routing.autopilot.interval"},
			want:     []string{`key "routing.autopilot.interval" (from env ROUTING_AUTOPILOT_INTERVAL)`, "at least 1s, got 500ms"}},
		{name: "IntervalNegative", env: map[string]string{"ROUTING_AUTOPILOT_INTERVAL": "-1m"},
			wantKeys: []string{"routing.autopilot.interval"}},
		{name: "IntervalBareNumber", env: map[string]string{"ROUTING_AUTOPILOT_INTERVAL": "600"},
			wantKeys: []string{"routing.autopilot.interval"},
			want:     []string{`key "routing.autopilot.interval" (from env ROUTING_AUTOPILOT_INTERVAL)`, "duration"}},
		{name: "IntervalInOverlay", overlay: "routing: {autopilot: {interval: 0s}}",
			wantKeys: []string{"routing.autopilot.interval"},
			want:     []string{`key "routing.autopilot.interval" (from file `}},
		{name: "MaxPercentNegative", env: map[string]string{"ROUTING_AUTOPILOT_MAX_PERCENT": "-1"},
			wantKeys: []string{"routing.autopilot.maxPercent"},
			want:     []string{`key "routing.autopilot.maxPercent" (from env ROUTING_AUTOPILOT_MAX_PERCENT)`, "0..100"}},
		{name: "MaxPercentAbove100", env: map[string]string{"ROUTING_AUTOPILOT_MAX_PERCENT": "101"},
			wantKeys: []string{"routing.autopilot.maxPercent"}},
		{name: "MinBuildsZero", env: map[string]string{"ROUTING_AUTOPILOT_MIN_BUILDS": "0"},
			wantKeys: []string{"routing.autopilot.minBuilds"},
			want:     []string{`key "routing.autopilot.minBuilds" (from env ROUTING_AUTOPILOT_MIN_BUILDS)`, "at least 1"}},
		{name: "MinBuildsNotAnInt", env: map[string]string{"ROUTING_AUTOPILOT_MIN_BUILDS": "2.5"},
			wantKeys: []string{"routing.autopilot.minBuilds"}},
		{name: "FailureRateDeltaNegative", env: map[string]string{"ROUTING_AUTOPILOT_MAX_FAILURE_RATE_DELTA": "-0.01"},
			wantKeys: []string{"routing.autopilot.maxFailureRateDelta"},
			want:     []string{`key "routing.autopilot.maxFailureRateDelta" (from env ROUTING_AUTOPILOT_MAX_FAILURE_RATE_DELTA)`, "0..1"}},
		// A percentage where a fraction is meant.
		{name: "FailureRateDeltaAbove1", env: map[string]string{"ROUTING_AUTOPILOT_MAX_FAILURE_RATE_DELTA": "2"},
			wantKeys: []string{"routing.autopilot.maxFailureRateDelta"}},
		{name: "SetupTimeRatioUnder1", env: map[string]string{"ROUTING_AUTOPILOT_MAX_SETUP_TIME_RATIO": "0.9"},
			wantKeys: []string{"routing.autopilot.maxSetupTimeRatio"},
			want:     []string{`key "routing.autopilot.maxSetupTimeRatio" (from env ROUTING_AUTOPILOT_MAX_SETUP_TIME_RATIO)`, "≥ 1"}},
		{name: "EnabledNotABool", env: map[string]string{"ROUTING_AUTOPILOT_ENABLED": "yes"},
			wantKeys: []string{"routing.autopilot.enabled"}},
		// The ranges hold while disabled, so enabling later cannot be the
		// first time a bad value is noticed.
		{name: "ReportedTogether", env: map[string]string{"ROUTING_AUTOPILOT_STEP": "0", "ROUTING_AUTOPILOT_MIN_BUILDS": "0", "ROUTING_AUTOPILOT_MAX_SETUP_TIME_RATIO": "0"},
			wantKeys: []string{"routing.autopilot.step", "routing.autopilot.minBuilds", "routing.autopilot.maxSetupTimeRatio"}},
		{name: "EnabledWithoutWeightage", env: map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true"},
			wantKeys: []string{"routing.autopilot.enabled"},
			want: []string{`key "routing.autopilot.enabled" (from env ROUTING_AUTOPILOT_ENABLED)`,
				"executor.k8s.weightage", "not set", "starting point and floor"}},
		// Only the k8s-vm weight: still no Kata percentage to start from.
		{name: "EnabledWithOnlyTheVMWeight", env: map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true", "WEIGHT_K8S_VM": "50"},
			wantKeys: []string{"routing.autopilot.enabled"},
			want:     []string{"executor.k8s.weightage", "starting point and floor"}},
		// Both zero is no weighted rule in routing, so no floor either.
		{name: "EnabledWithBothWeightsZero", env: map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true", "WEIGHT_K8S": "0", "WEIGHT_K8S_VM": "0"},
			wantKeys: []string{"routing.autopilot.enabled"},
			want:     []string{"executor.k8s.weightage (0, from env WEIGHT_K8S)", "executor.k8s-vm.weightage (0, from env WEIGHT_K8S_VM)", "starting point and floor"}},
		{name: "MaxPercentBelowTheWeight", env: map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true", "WEIGHT_K8S": "30", "ROUTING_AUTOPILOT_MAX_PERCENT": "20"},
			wantKeys: []string{"routing.autopilot.maxPercent"},
			want: []string{`key "routing.autopilot.maxPercent" (from env ROUTING_AUTOPILOT_MAX_PERCENT): 20 is below 30%`,
				"executor.k8s.weightage (30, from env WEIGHT_K8S)", "floor"}},
		// k8s/(k8s+k8s-vm) = 1/(1+3) = 25 %.
		{name: "MaxPercentBelowTheDerivedWeight", env: map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true", "WEIGHT_K8S": "1", "WEIGHT_K8S_VM": "3", "ROUTING_AUTOPILOT_MAX_PERCENT": "24"},
			wantKeys: []string{"routing.autopilot.maxPercent"},
			want:     []string{"24 is below 25%", "executor.k8s.weightage (1, from env WEIGHT_K8S) and executor.k8s-vm.weightage (3, from env WEIGHT_K8S_VM)"}},
		// An invalid weight is reported once, at its own key.
		{name: "InvalidWeightNotReportedAgain", env: map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true", "WEIGHT_K8S": "150", "ROUTING_AUTOPILOT_MAX_PERCENT": "90"},
			wantKeys: []string{"executor.k8s.weightage"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := loadRepo(t, tt.env, tt.overlay)
			wantErrorContaining(t, err, tt.want...)
			var keys []string
			for _, fe := range fieldErrorsOf(t, err) {
				keys = append(keys, fe.Key)
			}
			if !slices.Equal(keys, tt.wantKeys) {
				t.Errorf("error keys %q, want %q:\n%v", keys, tt.wantKeys, err)
			}
		})
	}
}

func TestLoad_AutopilotAccepted(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		// Disabled, the weights are not its floor: nothing to compare.
		{"DisabledMaxPercentBelowTheWeight", map[string]string{"WEIGHT_K8S": "30", "ROUTING_AUTOPILOT_MAX_PERCENT": "20"}},
		{"DisabledWithoutWeightage", map[string]string{"ROUTING_AUTOPILOT_MAX_PERCENT": "0"}},
		{"EnabledMaxPercentAtTheWeight", map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true", "WEIGHT_K8S": "30", "ROUTING_AUTOPILOT_MAX_PERCENT": "30"}},
		{"EnabledMaxPercentAtTheDerivedWeight", map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true", "WEIGHT_K8S": "1", "WEIGHT_K8S_VM": "3", "ROUTING_AUTOPILOT_MAX_PERCENT": "25"}},
		{"EnabledFromZero", map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true", "WEIGHT_K8S": "0"}},
		{"EnabledBounds", map[string]string{"ROUTING_AUTOPILOT_ENABLED": "true", "WEIGHT_K8S": "100",
			"ROUTING_AUTOPILOT_STEP": "100", "ROUTING_AUTOPILOT_INTERVAL": "1s", "ROUTING_AUTOPILOT_MIN_BUILDS": "1",
			"ROUTING_AUTOPILOT_MAX_FAILURE_RATE_DELTA": "1", "ROUTING_AUTOPILOT_MAX_SETUP_TIME_RATIO": "1"}},
		{"ZeroFailureRateDelta", map[string]string{"ROUTING_AUTOPILOT_MAX_FAILURE_RATE_DELTA": "0"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := loadRepo(t, tt.env, ""); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// WeightedKataPercent is the floor the autopilot starts from; it must agree
// with routing.KataPercent (which config cannot import).
func TestConfig_WeightedKataPercent(t *testing.T) {
	tests := []struct {
		name    string
		k8s, vm *float64
		want    float64
		wantOK  bool
	}{
		{"Unset", nil, nil, 0, false},
		{"OnlyVM", nil, ptr(3.0), 0, false},
		{"Percentage", ptr(20.0), nil, 20, true},
		{"PercentageZero", ptr(0.0), nil, 0, true},
		{"Relative", ptr(1.0), ptr(3.0), 25, true},
		{"RelativeAbove100", ptr(300.0), ptr(100.0), 75, true},
		{"RelativeVMZero", ptr(5.0), ptr(0.0), 100, true},
		{"RelativeK8sZero", ptr(0.0), ptr(5.0), 0, true},
		{"BothZero", ptr(0.0), ptr(0.0), 0, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := &Config{Executor: Executor{K8s: K8s{Weightage: tt.k8s}, K8sVM: K8sVM{Weightage: tt.vm}}}
			got, ok := c.WeightedKataPercent()
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("got %v, %v; want %v, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}
