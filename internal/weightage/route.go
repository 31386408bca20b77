package weightage

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
)

// Runtime is where a build runs.
type Runtime string

// Runtimes.
const (
	Kata   Runtime = "kata"
	Hyperd Runtime = "hyperd"
)

// Rule names why a decision was taken. Values are metric labels: keep the set small.
type Rule string

// Rules in the order Route applies them.
const (
	// RuleAnnotation: the build's screwdriver.cd/executor annotation named a runtime.
	RuleAnnotation Rule = "annotation"
	// RuleExcluded: the image matched a configured exclusion; hyperd.
	RuleExcluded Rule = "excluded"
	// RuleLearnedExclusion: the image failed on Kata before and was learned
	// as hyperd-only (Build.LearnedExcluded; the store is the executor's).
	RuleLearnedExclusion Rule = "learned-exclusion"
	// RuleWeighted: the percentage draw.
	RuleWeighted Rule = "weighted"
	// RuleDefault: no weight configured; executor.plugin decides.
	RuleDefault Rule = "default"
	// RulePaused: the runtime chosen by the rules above is paused, and the
	// build was moved to the other one (Decision.PausedRule says which rule
	// had chosen it).
	RulePaused Rule = "paused"
	// RuleFallback: a Kata start failed in a way hyperd can absorb and the
	// executor retried it there. Route never returns it; it is here so
	// metrics and pods share one vocabulary.
	RuleFallback Rule = "fallback"
)

// AllRules lists every rule, for pre-creating metric series.
var AllRules = []Rule{RuleAnnotation, RuleExcluded, RuleLearnedExclusion, RuleWeighted, RuleDefault, RulePaused, RuleFallback}

// AllRuntimes lists the runtimes.
var AllRuntimes = []Runtime{Kata, Hyperd}

// Other is the runtime a build moves to when rt is paused.
func (rt Runtime) Other() Runtime {
	if rt == Kata {
		return Hyperd
	}
	return Kata
}

// Buckets is the bucket space: basis points of a percent-of-builds weight.
const Buckets = 10000

// Stickiness selects the key whose hash picks the bucket.
type Stickiness string

// Stickiness keys: the same job (default), pipeline or build keeps its runtime.
const (
	StickyJob      Stickiness = "job"
	StickyPipeline Stickiness = "pipeline"
	StickyBuild    Stickiness = "build"
)

// Build is what routing looks at.
type Build struct {
	BuildID    int64
	JobID      int64
	PipelineID int64
	Image      string
	// Executor is the value of the screwdriver.cd/executor annotation ("" if none).
	Executor string
	// LearnedExcluded is set by the caller when the image is known to fail
	// on Kata (a learned exclusion); it sends the build to hyperd.
	LearnedExcluded bool
}

// Rules is one immutable routing configuration. Build it with NewRules.
type Rules struct {
	// KataBasisPoints is the share of builds sent to Kata, 0..10000; only
	// meaningful when Weighted.
	KataBasisPoints int
	// Weighted is false when no weight is configured: builds without an
	// annotation or exclusion then go to Default.
	Weighted   bool
	Exclusions []Exclusion
	Default    Runtime
	Stickiness Stickiness
	Salt       string
	// Paused runtimes take no new starts (see Route).
	Paused map[Runtime]bool
	// Budgets caps the pods in flight per runtime; absent or 0 = unlimited.
	// Route does not look at it (it needs the cluster); the worker does.
	Budgets map[Runtime]int
	// Version identifies this rule set (a hash of the config), for audit.
	Version string

	// cache is set when a pattern needs the regexp engine.
	cache *exclusionCache
}

// RulesSpec is the validated input of NewRules.
type RulesSpec struct {
	// KataPercent is the percentage of builds to Kata (0-100), nil if unset.
	KataPercent *float64
	Exclusions  []string
	Default     Runtime
	Stickiness  Stickiness
	Salt        string
	Paused      []Runtime
	Budgets     map[Runtime]int
	Version     string
}

// NewRules compiles a spec; an invalid pattern or weight is an error naming it.
func NewRules(s RulesSpec) (*Rules, error) {
	r := &Rules{Default: s.Default, Stickiness: s.Stickiness, Salt: s.Salt, Version: s.Version}
	if r.Stickiness == "" {
		r.Stickiness = StickyJob
	}
	switch r.Stickiness {
	case StickyJob, StickyPipeline, StickyBuild:
	default:
		return nil, fmt.Errorf("unknown stickiness %q (want job, pipeline or build)", s.Stickiness)
	}
	if r.Default != Kata && r.Default != Hyperd {
		return nil, fmt.Errorf("unknown default runtime %q", s.Default)
	}
	if s.KataPercent != nil {
		p := *s.KataPercent
		if math.IsNaN(p) || p < 0 || p > 100 {
			return nil, fmt.Errorf("kata percentage %v is outside 0-100", p)
		}
		r.Weighted = true
		r.KataBasisPoints = int(math.Round(p * 100))
	}
	for i, p := range s.Exclusions {
		e, err := compileExclusion(p)
		if err != nil {
			return nil, fmt.Errorf("exclusion %d %q: %w", i, p, err)
		}
		r.Exclusions = append(r.Exclusions, e)
		if e.kind == litNone && r.cache == nil {
			r.cache = newExclusionCache()
		}
	}
	for _, rt := range s.Paused {
		if rt != Kata && rt != Hyperd {
			return nil, fmt.Errorf("cannot pause unknown runtime %q", rt)
		}
		if r.Paused == nil {
			r.Paused = map[Runtime]bool{}
		}
		r.Paused[rt] = true
	}
	for rt, n := range s.Budgets {
		if rt != Kata && rt != Hyperd {
			return nil, fmt.Errorf("budget for unknown runtime %q", rt)
		}
		if n < 0 {
			return nil, fmt.Errorf("budget of %s is negative (%d)", rt, n)
		}
		if n > 0 {
			if r.Budgets == nil {
				r.Budgets = map[Runtime]int{}
			}
			r.Budgets[rt] = n
		}
	}
	return r, nil
}

// PausedRuntimes lists the paused runtimes in a stable order.
func (r *Rules) PausedRuntimes() []Runtime {
	var out []Runtime
	for _, rt := range AllRuntimes {
		if r.Paused[rt] {
			out = append(out, rt)
		}
	}
	return out
}

// Budget is the in-flight cap of rt, 0 for none.
func (r *Rules) Budget(rt Runtime) int { return r.Budgets[rt] }

// KataPercent is the weight in force as a percentage, or -1 when unweighted.
func (r *Rules) KataPercent() float64 {
	if !r.Weighted {
		return -1
	}
	return float64(r.KataBasisPoints) / 100
}

// Patterns returns the exclusion patterns in order.
func (r *Rules) Patterns() []string {
	out := make([]string, len(r.Exclusions))
	for i := range r.Exclusions {
		out[i] = r.Exclusions[i].Pattern
	}
	return slices.Clip(out)
}

// Decision is the outcome of Route with its reason.
type Decision struct {
	Runtime Runtime
	Rule    Rule
	// Pattern is the exclusion that matched (RuleExcluded).
	Pattern string
	// Bucket is the build's bucket in [0, Buckets) when the draw was made
	// (RuleWeighted, or RulePaused after it), else -1.
	Bucket int
	// KataBasisPoints is the weight in force when the draw was made.
	KataBasisPoints int
	// RulesVersion is the Version of the rules that decided.
	RulesVersion string
	// IgnoredExecutor is an executor annotation value that named no runtime.
	IgnoredExecutor string
	// PausedRule is, for RulePaused, the rule that had chosen the paused
	// runtime; for a held decision, the runtime's own rule is in Rule.
	PausedRule Rule
	// Held is set when Runtime is paused and the build cannot run on the
	// other runtime (or it is paused too): the start must wait, not fail.
	Held bool
}

// Route decides where a build runs: an executor annotation wins; else an
// image matching an exclusion goes to hyperd, as does a learned exclusion;
// else the weighted draw; else the default runtime. Then pauses apply: a
// build bound for a paused runtime moves to the other one when nothing ties
// it (rule paused), or is held when something does.
//
// Route is pure, allocation-free and safe for concurrent use; the exclusion
// cache it may fill is invisible to callers.
func Route(b Build, r *Rules) Decision {
	d := route(b, r)
	if r.Paused == nil || !r.Paused[d.Runtime] {
		return d
	}
	// Only hyperd is tied: an excluded image, or an explicit ask, cannot
	// run on Kata. Kata-bound builds can always run on hyperd, the legacy
	// runtime that runs every image (an explicit Kata annotation included:
	// a pause is an operator's override of the build's preference).
	tied := d.Runtime == Hyperd && (d.Rule == RuleExcluded || d.Rule == RuleLearnedExclusion || d.Rule == RuleAnnotation)
	if tied || r.Paused[d.Runtime.Other()] {
		d.Held = true
		return d
	}
	d.PausedRule, d.Rule, d.Runtime = d.Rule, RulePaused, d.Runtime.Other()
	return d
}

func route(b Build, r *Rules) Decision {
	d := Decision{Bucket: -1, RulesVersion: r.Version}
	if b.Executor != "" {
		if rt, ok := RuntimeForExecutor(b.Executor); ok {
			d.Runtime, d.Rule = rt, RuleAnnotation
			return d
		}
		d.IgnoredExecutor = b.Executor
	}
	if i := r.excludedBy(b.Image); i >= 0 {
		d.Runtime, d.Rule, d.Pattern = Hyperd, RuleExcluded, r.Exclusions[i].Pattern
		return d
	}
	if b.LearnedExcluded {
		d.Runtime, d.Rule = Hyperd, RuleLearnedExclusion
		return d
	}
	if r.Weighted {
		d.Bucket = Bucket(b, r.Stickiness, r.Salt)
		d.KataBasisPoints = r.KataBasisPoints
		d.Rule = RuleWeighted
		d.Runtime = Hyperd
		if d.Bucket < r.KataBasisPoints {
			d.Runtime = Kata
		}
		return d
	}
	d.Runtime, d.Rule = r.Default, RuleDefault
	return d
}

// StickyKey returns the kind and value of the key Bucket hashes for b: the
// chosen id, or the build id when the chosen id is missing.
func StickyKey(b Build, s Stickiness) (Stickiness, int64) {
	switch {
	case s == StickyJob && b.JobID != 0:
		return StickyJob, b.JobID
	case s == StickyPipeline && b.PipelineID != 0:
		return StickyPipeline, b.PipelineID
	}
	return StickyBuild, b.BuildID
}

// RuntimeForExecutor maps executor names, the reference's (k8s, k8s-vm) and
// ours (kata, hyperd), to a runtime. Matching ignores case and spaces.
func RuntimeForExecutor(name string) (Runtime, bool) {
	switch strings.ToLower(strings.TrimSpace(name)) {
	case "k8s", "kata":
		return Kata, true
	case "k8s-vm", "hyperd":
		return Hyperd, true
	}
	return "", false
}

// Bucket hashes the build's stickiness key with the salt into [0, Buckets).
// The key falls back to the build id when the chosen id is missing.
func Bucket(b Build, s Stickiness, salt string) int {
	kind, key := StickyKey(b, s)
	// FNV-1a over salt, kind and the decimal id, then a 64-bit finaliser so
	// consecutive ids spread evenly over the buckets. No allocation.
	h := uint64(14695981039346656037)
	for i := 0; i < len(salt); i++ {
		h = (h ^ uint64(salt[i])) * 1099511628211
	}
	h = (h ^ uint64(kind[0])) * 1099511628211
	var buf [20]byte
	for _, c := range strconv.AppendInt(buf[:0], key, 10) {
		h = (h ^ uint64(c)) * 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return int(h % Buckets)
}

// WithKataBasisPoints returns a copy of weighted rules with another Kata
// share (the autopilot's), its Version marked with it so pods and logs tell
// the two apart. The copy shares the compiled exclusions, which never change.
func (r *Rules) WithKataBasisPoints(bp int) *Rules {
	c := *r
	c.KataBasisPoints = min(max(bp, 0), Buckets)
	c.Version = r.Version + "+ap" + strconv.Itoa(c.KataBasisPoints)
	return &c
}
