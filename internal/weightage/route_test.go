package weightage

import (
	"math/rand/v2"
	"regexp"
	"testing"
)

func mustRules(t testing.TB, s RulesSpec) *Rules {
	t.Helper()
	if s.Default == "" {
		s.Default = Hyperd
	}
	r, err := NewRules(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func pct(v float64) *float64 { return &v }

func TestRoute_Rules(t *testing.T) {
	rules := mustRules(t, RulesSpec{KataPercent: pct(100), Exclusions: []string{"rhel6", `^registry\.example/i386/`}})
	noWeight := mustRules(t, RulesSpec{Default: Kata, Exclusions: []string{"rhel6"}})
	tests := []struct {
		name    string
		b       Build
		r       *Rules
		runtime Runtime
		rule    Rule
		pattern string
	}{
		{"AnnotationK8sVMWinsOverWeight", Build{BuildID: 1, Image: "node:18", Executor: "k8s-vm"}, rules, Hyperd, RuleAnnotation, ""},
		{"AnnotationKataWinsOverExclusion", Build{BuildID: 1, Image: "centos-rhel6", Executor: "kata"}, rules, Kata, RuleAnnotation, ""},
		{"AnnotationK8sMeansKata", Build{BuildID: 1, Image: "rhel6", Executor: "k8s"}, rules, Kata, RuleAnnotation, ""},
		{"AnnotationHyperdName", Build{BuildID: 1, Image: "x", Executor: "HyperD"}, rules, Hyperd, RuleAnnotation, ""},
		{"ExcludedImageGoesToHyperd", Build{BuildID: 1, Image: "registry:4443/sd/arya-rhel6:latest"}, rules, Hyperd, RuleExcluded, "rhel6"},
		{"ExclusionIsCaseInsensitive", Build{BuildID: 1, Image: "registry/RHEL6:1"}, rules, Hyperd, RuleExcluded, "rhel6"},
		{"AnchoredExclusion", Build{BuildID: 1, Image: "registry.example/i386/debian"}, rules, Hyperd, RuleExcluded, `^registry\.example/i386/`},
		{"UnknownAnnotationFallsThrough", Build{BuildID: 1, Image: "node:18", Executor: "jenkins"}, rules, Kata, RuleWeighted, ""},
		{"WeightedAt100GoesToKata", Build{BuildID: 1, Image: "node:18"}, rules, Kata, RuleWeighted, ""},
		{"NoWeightUsesDefault", Build{BuildID: 1, Image: "node:18"}, noWeight, Kata, RuleDefault, ""},
		{"NoWeightExclusionStillApplies", Build{BuildID: 1, Image: "rhel6"}, noWeight, Hyperd, RuleExcluded, "rhel6"},
		{"LearnedExclusionGoesToHyperd", Build{BuildID: 1, Image: "node:18", LearnedExcluded: true}, rules, Hyperd, RuleLearnedExclusion, ""},
		{"ConfiguredExclusionNamedBeforeLearned", Build{BuildID: 1, Image: "rhel6", LearnedExcluded: true}, rules, Hyperd, RuleExcluded, "rhel6"},
		{"AnnotationWinsOverLearnedExclusion", Build{BuildID: 1, Image: "node:18", Executor: "kata", LearnedExcluded: true}, rules, Kata, RuleAnnotation, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Route(tt.b, tt.r)
			if d.Runtime != tt.runtime || d.Rule != tt.rule || d.Pattern != tt.pattern {
				t.Fatalf("Route = %+v, want runtime %s rule %s pattern %q", d, tt.runtime, tt.rule, tt.pattern)
			}
		})
	}
}

func TestRoute_UnknownAnnotationIsReported(t *testing.T) {
	d := Route(Build{BuildID: 1, Executor: "jenkins"}, mustRules(t, RulesSpec{}))
	if d.IgnoredExecutor != "jenkins" {
		t.Fatalf("IgnoredExecutor = %q, want jenkins", d.IgnoredExecutor)
	}
}

// The Kata share over many random builds stays within ±0.5 percentage points
// of the weight.
func TestRoute_KataShareMatchesWeight(t *testing.T) {
	const n = 100_000
	rng := rand.New(rand.NewPCG(1, 2))
	builds := make([]Build, n)
	for i := range builds {
		builds[i] = Build{BuildID: rng.Int64N(1 << 40), JobID: rng.Int64N(1 << 30), PipelineID: rng.Int64N(1 << 20), Image: "node:18"}
	}
	for _, w := range []float64{0, 1, 5, 20, 50, 99, 100} {
		for _, s := range []Stickiness{StickyJob, StickyBuild, StickyPipeline} {
			r := mustRules(t, RulesSpec{KataPercent: pct(w), Stickiness: s, Salt: "s1"})
			kata := 0
			for _, b := range builds {
				if Route(b, r).Runtime == Kata {
					kata++
				}
			}
			share := 100 * float64(kata) / n
			if share < w-0.5 || share > w+0.5 {
				t.Errorf("weight %v%% stickiness %s: Kata share %.3f%%, want within ±0.5", w, s, share)
			}
		}
	}
}

// Sequential job ids (the common case) must spread evenly too.
func TestRoute_SequentialIDsSpreadEvenly(t *testing.T) {
	r := mustRules(t, RulesSpec{KataPercent: pct(20)})
	kata := 0
	for id := int64(1); id <= 100_000; id++ {
		if Route(Build{BuildID: id, JobID: id}, r).Runtime == Kata {
			kata++
		}
	}
	if share := float64(kata) / 1000; share < 19.5 || share > 20.5 {
		t.Fatalf("Kata share over sequential ids %.3f%%, want 20±0.5", share)
	}
}

// Raising the weight never moves a build from Kata back to hyperd.
func TestRoute_RaisingWeightIsMonotone(t *testing.T) {
	weights := []float64{0, 0.01, 1, 5, 5.5, 20, 50, 99, 99.99, 100}
	for id := int64(1); id <= 20_000; id++ {
		b := Build{BuildID: id, JobID: id * 7}
		wasKata := false
		for _, w := range weights {
			isKata := Route(b, mustRules(t, RulesSpec{KataPercent: pct(w)})).Runtime == Kata
			if wasKata && !isKata {
				t.Fatalf("build %d flipped Kata→hyperd when the weight rose to %v", id, w)
			}
			wasKata = isKata
		}
	}
}

// The same job keeps its runtime across builds; the salt reshuffles.
func TestRoute_StickyByJob(t *testing.T) {
	r := mustRules(t, RulesSpec{KataPercent: pct(50)})
	for job := int64(1); job <= 1000; job++ {
		first := Route(Build{BuildID: 1, JobID: job}, r)
		for build := int64(2); build <= 5; build++ {
			if d := Route(Build{BuildID: build * 1000, JobID: job}, r); d.Runtime != first.Runtime || d.Bucket != first.Bucket {
				t.Fatalf("job %d: build %d got %s/%d, first build %s/%d", job, build, d.Runtime, d.Bucket, first.Runtime, first.Bucket)
			}
		}
	}
	salted := mustRules(t, RulesSpec{KataPercent: pct(50), Salt: "other"})
	same := 0
	for job := int64(1); job <= 1000; job++ {
		if Route(Build{JobID: job}, r).Bucket == Route(Build{JobID: job}, salted).Bucket {
			same++
		}
	}
	if same > 10 {
		t.Fatalf("%d of 1000 buckets unchanged by a new salt", same)
	}
}

func TestRoute_MissingJobFallsBackToBuild(t *testing.T) {
	if Bucket(Build{BuildID: 42}, StickyJob, "") != Bucket(Build{BuildID: 42}, StickyBuild, "") {
		t.Fatal("a build without a job id must hash by its build id")
	}
}

// Excluded images never reach Kata, whatever the weight and the ids.
func TestRoute_ExcludedImagesNeverKata(t *testing.T) {
	r := mustRules(t, RulesSpec{KataPercent: pct(100), Exclusions: []string{"rhel6", `^registry\.example/i386/`, "centos[56]"}})
	images := []string{"rhel6", "x/RHEL6:latest", "registry.example/i386/debian", "docker.io/centos5", "CENTOS6:1"}
	for id := int64(1); id <= 10_000; id++ {
		img := images[id%int64(len(images))]
		if d := Route(Build{BuildID: id, JobID: id, Image: img}, r); d.Runtime != Hyperd || d.Rule != RuleExcluded {
			t.Fatalf("build %d image %q routed %s by %s", id, img, d.Runtime, d.Rule)
		}
	}
}

func TestRoute_Paused(t *testing.T) {
	spec := func(paused ...Runtime) RulesSpec {
		return RulesSpec{KataPercent: pct(50), Exclusions: []string{"rhel6"}, Paused: paused}
	}
	kataPaused := mustRules(t, spec(Kata))
	hyperdPaused := mustRules(t, spec(Hyperd))
	bothPaused := mustRules(t, spec(Kata, Hyperd))
	// Job ids whose draw is Kata and hyperd at 50%.
	var kataJob, hyperdJob int64
	for j := int64(1); kataJob == 0 || hyperdJob == 0; j++ {
		if Bucket(Build{JobID: j}, StickyJob, "") < 5000 {
			kataJob = j
		} else {
			hyperdJob = j
		}
	}
	tests := []struct {
		name       string
		b          Build
		r          *Rules
		runtime    Runtime
		rule       Rule
		pausedRule Rule
		held       bool
	}{
		{"KataPausedMovesWeightedToHyperd", Build{JobID: kataJob}, kataPaused, Hyperd, RulePaused, RuleWeighted, false},
		{"KataPausedMovesKataAnnotationToHyperd", Build{JobID: hyperdJob, Executor: "kata"}, kataPaused, Hyperd, RulePaused, RuleAnnotation, false},
		{"KataPausedLeavesHyperdAlone", Build{JobID: hyperdJob}, kataPaused, Hyperd, RuleWeighted, "", false},
		{"HyperdPausedMovesWeightedToKata", Build{JobID: hyperdJob}, hyperdPaused, Kata, RulePaused, RuleWeighted, false},
		{"HyperdPausedHoldsExcluded", Build{JobID: kataJob, Image: "rhel6"}, hyperdPaused, Hyperd, RuleExcluded, "", true},
		{"HyperdPausedHoldsLearnedExclusion", Build{JobID: kataJob, LearnedExcluded: true}, hyperdPaused, Hyperd, RuleLearnedExclusion, "", true},
		{"HyperdPausedHoldsHyperdAnnotation", Build{JobID: kataJob, Executor: "k8s-vm"}, hyperdPaused, Hyperd, RuleAnnotation, "", true},
		{"BothPausedHoldsEverything", Build{JobID: kataJob}, bothPaused, Kata, RuleWeighted, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Route(tt.b, tt.r)
			if d.Runtime != tt.runtime || d.Rule != tt.rule || d.PausedRule != tt.pausedRule || d.Held != tt.held {
				t.Fatalf("Route = %+v, want %s by %s (paused rule %q, held %v)", d, tt.runtime, tt.rule, tt.pausedRule, tt.held)
			}
		})
	}
}

func TestNewRules_Rejects(t *testing.T) {
	tests := []struct {
		name string
		s    RulesSpec
	}{
		{"InvalidRegex", RulesSpec{Default: Hyperd, Exclusions: []string{"rhel6", "(unclosed"}}},
		{"WeightAbove100", RulesSpec{Default: Hyperd, KataPercent: pct(100.5)}},
		{"NegativeWeight", RulesSpec{Default: Hyperd, KataPercent: pct(-1)}},
		{"UnknownDefault", RulesSpec{Default: "docker"}},
		{"UnknownStickiness", RulesSpec{Default: Hyperd, Stickiness: "user"}},
		{"UnknownPausedRuntime", RulesSpec{Default: Hyperd, Paused: []Runtime{"docker"}}},
		{"NegativeBudget", RulesSpec{Default: Hyperd, Budgets: map[Runtime]int{Kata: -1}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewRules(tt.s); err == nil {
				t.Fatal("NewRules accepted an invalid spec")
			}
		})
	}
}

// benchImages is a fleet-like mix: a few images repeated, as in production.
var benchImages = []string{
	"registry.example.com/org/node:18-bullseye",
	"docker.io/library/golang:1.26",
	"registry.example.com/base/rhel6-build:3",
	"quay.io/centos/centos:stream9",
	"registry.example.com/org/python:3.12-slim",
}

func benchRoute(b *testing.B, exclusions []string) {
	r := mustRules(b, RulesSpec{KataPercent: pct(20), Exclusions: exclusions})
	build := Build{BuildID: 123456, JobID: 7890, PipelineID: 42}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		build.JobID++
		build.Image = benchImages[i%len(benchImages)]
		i++
		_ = Route(build, r)
	}
}

// BenchmarkRoute: the three literal exclusions the reference deployments use.
func BenchmarkRoute(b *testing.B) { benchRoute(b, []string{"rhel6", "centos6", `i386`}) }

// BenchmarkRouteRegexps: patterns that need the regexp engine, answered
// from the per-image cache after the first build of each image.
func BenchmarkRouteRegexps(b *testing.B) {
	benchRoute(b, []string{"rhel[56]", `centos:?[56]`, `^registry\.example\.com/(i386|arm32)/`})
}

// BenchmarkRouteNaiveRegexp is the baseline: what Route cost when every
// exclusion ran through regexp.MatchString (the same three patterns as
// BenchmarkRoute, plus the same draw).
func BenchmarkRouteNaiveRegexp(b *testing.B) {
	r := mustRules(b, RulesSpec{KataPercent: pct(20)})
	var res []*regexp.Regexp
	for _, p := range []string{"rhel6", "centos6", `i386`} {
		res = append(res, regexp.MustCompile("(?i)"+p))
	}
	build := Build{BuildID: 123456, JobID: 7890, PipelineID: 42}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		build.JobID++
		build.Image = benchImages[i%len(benchImages)]
		i++
		excluded := false
		for _, re := range res {
			if re.MatchString(build.Image) {
				excluded = true
				break
			}
		}
		if !excluded {
			_ = Route(build, r)
		}
	}
}

// BenchmarkBucket is the floor: the hash alone, without exclusions.
func BenchmarkBucket(b *testing.B) {
	build := Build{BuildID: 123456, JobID: 7890}
	b.ReportAllocs()
	for b.Loop() {
		build.JobID++
		_ = Bucket(build, StickyJob, "salt")
	}
}
