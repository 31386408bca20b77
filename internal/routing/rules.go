package routing

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// KataPercent returns the percentage of builds to send to Kata and how it
// was found:
//   - executor.k8s.weightage unset: no weighted rule (nil);
//   - only executor.k8s.weightage set: it is the percentage;
//   - executor.k8s-vm.weightage set too: the reference's relative weights,
//     so the percentage is k8s/(k8s+k8s-vm); both zero means no weighted
//     rule, as the reference fell through to the default executor.
func KataPercent(c *config.Config) (pct *float64, derived bool) {
	derived = c.Executor.K8s.Weightage != nil && c.Executor.K8sVM.Weightage != nil
	p, ok := c.WeightedKataPercent()
	if !ok {
		return nil, derived
	}
	return &p, derived
}

// Spec builds the router's input from a validated config.
func Spec(c *config.Config) (weightage.RulesSpec, error) {
	def, ok := weightage.RuntimeForExecutor(c.Executor.Plugin)
	if !ok {
		return weightage.RulesSpec{}, fmt.Errorf("building routing rules: executor.plugin %q names no runtime", c.Executor.Plugin)
	}
	pct, _ := KataPercent(c)
	s := weightage.RulesSpec{
		KataPercent: pct,
		Exclusions:  c.ExclusionPatterns(),
		Default:     def,
		Stickiness:  weightage.Stickiness(c.Routing.Stickiness),
		Salt:        c.Routing.Salt,
	}
	for _, p := range c.Routing.Paused {
		s.Paused = append(s.Paused, weightage.Runtime(p))
	}
	for rt, n := range c.Routing.Budgets {
		if n > 0 {
			if s.Budgets == nil {
				s.Budgets = map[weightage.Runtime]int{}
			}
			s.Budgets[weightage.Runtime(rt)] = n
		}
	}
	s.Version = version(s)
	return s, nil
}

// Rules compiles the routing rules of a config.
func Rules(c *config.Config) (*weightage.Rules, error) {
	s, err := Spec(c)
	if err != nil {
		return nil, err
	}
	r, err := weightage.NewRules(s)
	if err != nil {
		return nil, fmt.Errorf("building routing rules: %w", err)
	}
	return r, nil
}

// version is a short hash of everything that decides a route, so pods and
// logs say which rule set routed them. encoding/json sorts map keys, so the
// hash is stable.
func version(s weightage.RulesSpec) string {
	b, _ := json.Marshal(s)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// Input extracts what routing looks at from a build config. The worker, the
// explain command and /debug/route all go through it, so they agree.
func Input(b *build.Config) weightage.Build {
	return weightage.Build{
		BuildID:    b.BuildID,
		JobID:      b.JobID,
		PipelineID: b.StickyPipelineID(),
		Image:      b.Container,
		Executor:   b.AnnotationString("executor"),
	}
}
