package weightage

import (
	"fmt"
	"math"
	"regexp"
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
	RuleAnnotation Rule = "annotation"
	RuleExcluded   Rule = "excluded"
	RuleWeighted   Rule = "weighted"
	RuleDefault    Rule = "default"
)

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
}

// Exclusion is one compiled image pattern.
type Exclusion struct {
	Pattern string
	re      *regexp.Regexp
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
	// Version identifies this rule set (a hash of the config), for audit.
	Version string
}

// RulesSpec is the validated input of NewRules.
type RulesSpec struct {
	// KataPercent is the percentage of builds to Kata (0-100), nil if unset.
	KataPercent *float64
	Exclusions  []string
	Default     Runtime
	Stickiness  Stickiness
	Salt        string
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
		re, err := regexp.Compile("(?i)" + p)
		if err != nil {
			return nil, fmt.Errorf("exclusion %d %q: %w", i, p, err)
		}
		r.Exclusions = append(r.Exclusions, Exclusion{Pattern: p, re: re})
	}
	return r, nil
}

// Decision is the outcome of Route with its reason.
type Decision struct {
	Runtime Runtime
	Rule    Rule
	// Pattern is the exclusion that matched (RuleExcluded).
	Pattern string
	// Bucket is the build's bucket in [0, Buckets) (RuleWeighted), else -1.
	Bucket int
	// KataBasisPoints is the weight in force (RuleWeighted).
	KataBasisPoints int
	// RulesVersion is the Version of the rules that decided.
	RulesVersion string
	// IgnoredExecutor is an executor annotation value that named no runtime.
	IgnoredExecutor string
}

// Route decides where a build runs: an executor annotation wins; else an
// image matching an exclusion goes to hyperd; else the weighted draw; else
// the default runtime.
func Route(b Build, r *Rules) Decision {
	d := Decision{Bucket: -1, RulesVersion: r.Version}
	if b.Executor != "" {
		if rt, ok := RuntimeForExecutor(b.Executor); ok {
			d.Runtime, d.Rule = rt, RuleAnnotation
			return d
		}
		d.IgnoredExecutor = b.Executor
	}
	for i := range r.Exclusions {
		if r.Exclusions[i].re.MatchString(b.Image) {
			d.Runtime, d.Rule, d.Pattern = Hyperd, RuleExcluded, r.Exclusions[i].Pattern
			return d
		}
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
	key := b.JobID
	kind := byte('j')
	switch s {
	case StickyPipeline:
		key, kind = b.PipelineID, 'p'
	case StickyBuild:
		key, kind = b.BuildID, 'b'
	}
	if key == 0 {
		key, kind = b.BuildID, 'b'
	}
	// FNV-1a over salt, kind and the decimal id, then a 64-bit finaliser so
	// consecutive ids spread evenly over the buckets. No allocation.
	h := uint64(14695981039346656037)
	for i := 0; i < len(salt); i++ {
		h = (h ^ uint64(salt[i])) * 1099511628211
	}
	h = (h ^ uint64(kind)) * 1099511628211
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
