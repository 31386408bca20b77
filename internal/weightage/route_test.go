package weightage

import (
	"math/rand/v2"
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
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewRules(tt.s); err == nil {
				t.Fatal("NewRules accepted an invalid spec")
			}
		})
	}
}

func BenchmarkRoute(b *testing.B) {
	r := mustRules(b, RulesSpec{KataPercent: pct(20), Exclusions: []string{"rhel6", "centos6", `i386`}})
	build := Build{BuildID: 123456, JobID: 7890, PipelineID: 42, Image: "registry.example.com/org/node:18-bullseye"}
	b.ReportAllocs()
	for b.Loop() {
		build.BuildID++
		_ = Route(build, r)
	}
}

// BenchmarkBucket is the baseline: the hash alone, without exclusions.
func BenchmarkBucket(b *testing.B) {
	build := Build{BuildID: 123456, JobID: 7890}
	b.ReportAllocs()
	for b.Loop() {
		build.JobID++
		_ = Bucket(build, StickyJob, "salt")
	}
}
