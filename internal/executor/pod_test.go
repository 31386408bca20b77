package executor

import (
	"testing"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
)

func TestTier(t *testing.T) {
	tiers := config.Tiers{Micro: 0.5, Low: 2, High: 6, Turbo: 12, Max: 12}
	tests := []struct {
		name     string
		value    any
		allowMax bool
		want     float64
	}{
		{"Absent", nil, true, 2},
		{"High", "HIGH", true, 6},
		{"LowerCaseIsLow", "high", true, 2},
		{"MaxOnKata", "MAX", true, 12},
		{"MaxNotATierOnHyperd", "MAX", false, 2},
		{"IntegerCapped", float64(40), true, 12},
		{"Integer", float64(4), true, 4},
		{"FractionIsLow", 2.5, true, 2},
		{"StringNumberIsLow", "4", true, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &build.Config{Annotations: map[string]any{}}
			if tt.value != nil {
				b.Annotations["screwdriver.cd/cpu"] = tt.value
			}
			if got := tier(b, "cpu", tiers, tierRules{allowMax: tt.allowMax, allowInt: true}); got != tt.want {
				t.Fatalf("tier = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestBuildTimeoutIsCapped(t *testing.T) {
	tests := []struct {
		value any
		want  int
	}{{nil, 90}, {float64(60), 60}, {float64(500), 120}, {"30", 30}, {"x", 90}}
	for _, tt := range tests {
		b := &build.Config{Annotations: map[string]any{}}
		if tt.value != nil {
			b.Annotations["beta.screwdriver.cd/timeout"] = tt.value
		}
		if got := buildTimeout(b, 90, 120); got != tt.want {
			t.Errorf("timeout %v: got %d, want %d", tt.value, got, tt.want)
		}
	}
}

func TestNames(t *testing.T) {
	tests := []struct{ got, want string }{
		{PodName("", 12345, 0), "sdbuild-12345"},
		{PodName("beta_", 12345, 0), "beta-sdbuild-12345"},
		{PodName("Beta.", 7, 1), "beta-sdbuild-7-r1"},
		{BuildLabel("beta_", 12345), "beta_12345"},
		{SanitizeLabelValue("org/repo name!"), "org.repo.name"},
		{SanitizeLabelValue("-x-"), "x"},
	}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestParsePodName_RoundTrips(t *testing.T) {
	for _, tc := range []struct {
		prefix  string
		id      int64
		attempt int
	}{{"", 12345, 0}, {"beta_", 7, 1}, {"x-r9", 42, 0}, {"sdbuild-1", 3, 2}} {
		id, attempt, ok := ParsePodName(PodName(tc.prefix, tc.id, tc.attempt))
		if !ok || id != tc.id || attempt != tc.attempt {
			t.Errorf("ParsePodName(PodName(%q, %d, %d)) = %d, %d, %v", tc.prefix, tc.id, tc.attempt, id, attempt, ok)
		}
	}
	for _, name := range []string{"sdbuild-", "sdbuild-x", "other-pod", "sdbuild-5-rx"} {
		if _, _, ok := ParsePodName(name); ok {
			t.Errorf("ParsePodName(%q) accepted a name PodName never makes", name)
		}
	}
}

func TestScheduling_SelectorsBecomeTolerationsAndAffinity(t *testing.T) {
	tols, na := scheduling(map[string]string{"dedicated": "screwdriver-kata", "Zone": "A"}, map[string]string{"disk": "ssd"})
	if len(tols) != 2 || tols[0].Key != "Zone" || tols[1].Key != "dedicated" {
		t.Fatalf("tolerations %+v (want sorted, case kept)", tols)
	}
	terms := na.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	if len(terms) != 1 || len(terms[0].MatchExpressions) != 2 {
		t.Fatalf("required terms %+v (want one ANDed term)", terms)
	}
	if p := na.PreferredDuringSchedulingIgnoredDuringExecution; len(p) != 1 || p[0].Weight != 100 {
		t.Fatalf("preferred %+v", p)
	}
}
