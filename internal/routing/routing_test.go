package routing

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap/zaptest"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/weightage"
)

func loadOptions(overlay string, env map[string]string) config.LoadOptions {
	return config.LoadOptions{
		DefaultsFile: "../../config/default.yaml",
		EnvMapFile:   "../../config/custom-environment-variables.yaml",
		OverlayFile:  overlay,
		Getenv:       func(k string) string { return env[k] },
	}
}

func mustLoad(t *testing.T, env map[string]string) *config.Config {
	t.Helper()
	c, err := config.Load(loadOptions("", env))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func mustRules(t *testing.T, env map[string]string) *weightage.Rules {
	t.Helper()
	r, err := Rules(mustLoad(t, env))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestRules_FromConfig(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		check   func(r *weightage.Rules) bool
		explain string
	}{
		{"RelativeWeightsDeriveThePercentage", map[string]string{"WEIGHT_K8S": "30", "WEIGHT_K8S_VM": "10"},
			func(r *weightage.Rules) bool { return r.Weighted && r.KataBasisPoints == 7500 }, "75% to Kata"},
		{"WeightAloneIsThePercentage", map[string]string{"WEIGHT_K8S": "12.5"},
			func(r *weightage.Rules) bool { return r.KataBasisPoints == 1250 }, "12.5% to Kata"},
		{"NoWeightIsUnweighted", nil,
			func(r *weightage.Rules) bool { return !r.Weighted && r.Default == weightage.Hyperd }, "default hyperd"},
		{"ReferenceExclusionEnv", map[string]string{"K8S_EXECUTOR_EXCLUSION": `["centos6","^docker\\.io/i386/"]`},
			func(r *weightage.Rules) bool { return strings.Join(r.Patterns(), ",") == `centos6,^docker\.io/i386/` }, "exclusions from env"},
		{"RoutingSection", map[string]string{"ROUTING_STICKINESS": "pipeline", "ROUTING_SALT": "x",
			"ROUTING_PAUSED": `["kata"]`, "ROUTING_BUDGETS": `{"hyperd":7,"kata":0}`},
			func(r *weightage.Rules) bool {
				return r.Stickiness == weightage.StickyPipeline && r.Salt == "x" && r.Paused[weightage.Kata] &&
					r.Budget(weightage.Hyperd) == 7 && r.Budget(weightage.Kata) == 0
			}, "routing section"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if r := mustRules(t, tt.env); !tt.check(r) {
				t.Fatalf("rules %+v: want %s", r, tt.explain)
			}
		})
	}
}

func TestRules_VersionFollowsEveryRoutingInput(t *testing.T) {
	base := map[string]string{"WEIGHT_K8S": "50"}
	v0 := mustRules(t, base).Version
	if v := mustRules(t, base).Version; v != v0 {
		t.Fatalf("same config, versions %s and %s", v0, v)
	}
	for _, change := range []map[string]string{
		{"WEIGHT_K8S": "51"}, {"ROUTING_SALT": "s"}, {"ROUTING_STICKINESS": "build"},
		{"ROUTING_PAUSED": `["hyperd"]`}, {"ROUTING_BUDGETS": `{"kata":3}`}, {"K8S_EXECUTOR_EXCLUSION": `["x"]`},
	} {
		env := map[string]string{"WEIGHT_K8S": "50"}
		for k, v := range change {
			env[k] = v
		}
		if v := mustRules(t, env).Version; v == v0 {
			t.Errorf("%v did not change the rules version", change)
		}
	}
}

func TestExplain_SaysWhy(t *testing.T) {
	weighted := mustRules(t, map[string]string{"WEIGHT_K8S": "50"})
	kataPaused := mustRules(t, map[string]string{"WEIGHT_K8S": "100", "ROUTING_PAUSED": `["kata"]`})
	hyperdPaused := mustRules(t, map[string]string{"WEIGHT_K8S": "50", "ROUTING_PAUSED": `["hyperd"]`, "ROUTING_BUDGETS": `{"hyperd":9}`})
	tests := []struct {
		name string
		b    weightage.Build
		r    *weightage.Rules
		want []string
	}{
		{"Excluded", weightage.Build{BuildID: 42, Image: "registry/rhel6:1"}, weighted,
			[]string{`build 42 → hyperd (rule excluded: image "registry/rhel6:1" matches exclusion "rhel6"; rules v=` + weighted.Version + `)`}},
		{"Weighted", weightage.Build{BuildID: 43, JobID: 678, Image: "node:18"}, weighted,
			[]string{"build 43 → ", "(rule weighted: bucket ", " 5000 (50.00% to Kata, sticky by job 678)"}},
		{"Annotation", weightage.Build{BuildID: 44, Image: "node", Executor: "k8s-vm"}, weighted,
			[]string{"→ hyperd (rule annotation: annotation screwdriver.cd/executor=k8s-vm;"}},
		{"UnknownAnnotation", weightage.Build{BuildID: 45, Image: "node", Executor: "jenkins"}, weighted,
			[]string{`annotation executor="jenkins" names no runtime and was ignored`}},
		{"Default", weightage.Build{BuildID: 46, Image: "node"}, mustRules(t, nil),
			[]string{"→ hyperd (rule default: no weight configured; the default runtime is hyperd;"}},
		{"Paused", weightage.Build{BuildID: 47, JobID: 1, Image: "node"}, kataPaused,
			[]string{"→ hyperd (rule paused after weighted: kata is paused; rule weighted had chosen it: bucket"}},
		{"HeldWithBudget", weightage.Build{BuildID: 48, Image: "rhel6"}, hyperdPaused,
			[]string{"HELD: hyperd is paused", "hyperd budget 9 pods in flight"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := decide(t, DeciderDeps{Rules: weightage.NewHolder(tt.r)}, tt.b).Explanation.String()
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("explanation %q\nlacks %q", got, w)
				}
			}
		})
	}
}

// decide routes a weightage.Build as a start would, through the Decider.
func decide(t *testing.T, deps DeciderDeps, b weightage.Build) Decision {
	t.Helper()
	cfg := &build.Config{BuildID: b.BuildID, JobID: b.JobID, PipelineID: b.PipelineID, Container: b.Image}
	if b.Executor != "" {
		cfg.Annotations = map[string]any{"screwdriver.cd/executor": b.Executor}
	}
	d, err := NewDecider(deps).Decide(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// inflight is a fixed count of pods in flight per runtime.
type inflight map[weightage.Runtime]int

func (f inflight) InFlight(rt weightage.Runtime) int { return f[rt] }

// Budgets are checked with the live count: at the budget a start waits,
// below it it runs; the explanation says which.
func TestDecider_BudgetMakesAStartWait(t *testing.T) {
	rules := weightage.NewHolder(mustRules(t, map[string]string{"WEIGHT_K8S": "100", "ROUTING_BUDGETS": `{"kata":10}`}))
	b := weightage.Build{BuildID: 1, Image: "node:18"}
	tests := []struct {
		name     string
		inflight int
		wait     bool
		says     string
	}{
		{"BelowBudgetRuns", 9, false, "kata has 9 of its budget of 10 pods in flight"},
		{"AtBudgetWaits", 10, true, "WAITS: kata has 10 pods in flight, at its budget of 10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := decide(t, DeciderDeps{Rules: rules, InFlight: inflight{weightage.Kata: tt.inflight}}, b)
			if (d.Wait != nil) != tt.wait || tt.wait && d.Wait.Reason != WaitBudget {
				t.Fatalf("wait %+v, want %v", d.Wait, tt.wait)
			}
			if got := d.Explanation.String(); !strings.Contains(got, tt.says) {
				t.Fatalf("explanation %q lacks %q", got, tt.says)
			}
		})
	}
}

// A paused runtime the build is tied to makes the start wait.
func TestDecider_HeldBuildWaits(t *testing.T) {
	rules := weightage.NewHolder(mustRules(t, map[string]string{"ROUTING_PAUSED": `["hyperd"]`}))
	d := decide(t, DeciderDeps{Rules: rules}, weightage.Build{BuildID: 2, Image: "registry/rhel6:1"})
	if d.Wait == nil || d.Wait.Reason != WaitPaused || !d.Held {
		t.Fatalf("decision %+v", d)
	}
}

// learnedSet is a learned-exclusion set in memory.
type learnedSet map[string]bool

func (l learnedSet) Excluded(_ context.Context, image string) (bool, error) { return l[image], nil }

func TestHandler_DebugRoute(t *testing.T) {
	learned := learnedSet{"registry/segfaults:1": true}
	srv := httptest.NewServer(Handler(NewDecider(DeciderDeps{Rules: weightage.NewHolder(mustRules(t, map[string]string{"WEIGHT_K8S": "100"})), Learned: learned})))
	defer srv.Close()
	tests := []struct {
		name       string
		method     string
		query      string
		status     int
		runtime    weightage.Runtime
		rule       weightage.Rule
		annotation string
	}{
		{"Weighted", http.MethodGet, "?build_id=1&job_id=2&pipeline_id=3&image=node:18", 200, weightage.Kata, weightage.RuleWeighted, ""},
		{"Excluded", http.MethodGet, "?build_id=1&image=x/RHEL6", 200, weightage.Hyperd, weightage.RuleExcluded, ""},
		{"LearnedExclusion", http.MethodGet, "?build_id=1&image=registry/segfaults:1", 200, weightage.Hyperd, weightage.RuleLearnedExclusion, ""},
		{"RepeatedAnnotations", http.MethodGet, "?build_id=1&image=node&annotation=screwdriver.cd/cpu=HIGH&annotation=executor=k8s-vm", 200, weightage.Hyperd, weightage.RuleAnnotation, "k8s-vm"},
		{"BadID", http.MethodGet, "?build_id=abc", 400, "", "", ""},
		{"BadAnnotation", http.MethodGet, "?annotation=novalue", 400, "", "", ""},
		{"PostRefused", http.MethodPost, "", 405, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequest(tt.method, srv.URL+tt.query, nil)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != tt.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tt.status)
			}
			if tt.status != 200 {
				return
			}
			var e Explanation
			if err := json.NewDecoder(resp.Body).Decode(&e); err != nil {
				t.Fatal(err)
			}
			if e.Runtime != tt.runtime || e.Rule != tt.rule || e.ExecutorAnnotation != tt.annotation || e.Reason == "" {
				t.Fatalf("got %+v", e)
			}
		})
	}
}

// configMap lays out a directory as the kubelet does for a ConfigMap
// volume and updates it by swapping the ..data symlink.
type configMap struct {
	t   *testing.T
	dir string
	n   int
}

func newConfigMap(t *testing.T, content string) *configMap {
	c := &configMap{t: t, dir: t.TempDir()}
	c.publish(content)
	if err := os.Symlink("..data/config.yaml", filepath.Join(c.dir, "config.yaml")); err != nil {
		t.Fatal(err)
	}
	return c
}

func (c *configMap) path() string { return filepath.Join(c.dir, "config.yaml") }

func (c *configMap) publish(content string) {
	c.t.Helper()
	c.n++
	version := filepath.Join(c.dir, "..v"+string(rune('0'+c.n)))
	tmp := filepath.Join(c.dir, "..data_tmp")
	for _, err := range []error{
		os.Mkdir(version, 0o755),
		os.WriteFile(filepath.Join(version, "config.yaml"), []byte(content), 0o644),
		os.Symlink(filepath.Base(version), tmp),
		os.Rename(tmp, filepath.Join(c.dir, "..data")),
	} {
		if err != nil {
			c.t.Fatal(err)
		}
	}
}

// A reload under load: workers route continuously while the ConfigMap is
// swapped. Every decision must be consistent with the one rule set it read
// (no torn state), decisions must change after a valid swap without a
// restart, no routing call may be lost, and an invalid swap must leave the
// last good rules in force.
func TestReload_UnderLoadFollowsConfigMapSwaps(t *testing.T) {
	cm := newConfigMap(t, "executor: {k8s: {weightage: 0}}\n")
	opts := loadOptions(cm.path(), nil)
	cfg, err := config.Load(opts)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	holder := weightage.NewHolder(rules)
	metrics := NewMetrics(nil)
	reloader := NewReloader(holder, cfg, zaptest.NewLogger(t), metrics)
	applied := make(chan struct{}, 8)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := config.Watch(ctx, opts, func(c *config.Config, err error) {
		reloader.Apply(c, err)
		applied <- struct{}{}
	}); err != nil {
		t.Fatal(err)
	}

	// Each worker remembers the versions it saw; a decision must match the
	// weight of the rules it was made under (0% → hyperd, 100% → Kata).
	var (
		stop     atomic.Bool
		routed   atomic.Int64
		attempts atomic.Int64
		wg       sync.WaitGroup
		mu       sync.Mutex
		seen     = map[string]bool{}
	)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			local := map[string]bool{}
			for id := int64(w) << 32; !stop.Load(); id++ {
				attempts.Add(1)
				r := holder.Current()
				d := weightage.Route(weightage.Build{BuildID: id, JobID: id, Image: "node:18"}, r)
				want := weightage.Hyperd
				if r.KataBasisPoints == weightage.Buckets {
					want = weightage.Kata
				}
				if d.RulesVersion != r.Version || d.Runtime != want {
					t.Errorf("torn decision %+v under rules %s at %d bp", d, r.Version, r.KataBasisPoints)
					return
				}
				local[d.RulesVersion] = true
				routed.Add(1)
			}
			mu.Lock()
			for v := range local {
				seen[v] = true
			}
			mu.Unlock()
		}()
	}
	waitApplied := func() {
		t.Helper()
		select {
		case <-applied:
		case <-time.After(10 * time.Second):
			t.Fatal("no reload within 10s")
		}
	}

	v0 := holder.Current().Version
	cm.publish("executor: {k8s: {weightage: 100}}\n")
	waitApplied()
	v1 := holder.Current().Version
	if v1 == v0 || !holder.Current().Weighted || holder.Current().KataBasisPoints != weightage.Buckets {
		t.Fatalf("valid swap not applied: rules %+v", holder.Current())
	}
	if got := weightage.Route(weightage.Build{BuildID: 1, JobID: 1}, holder.Current()).Runtime; got != weightage.Kata {
		t.Fatalf("after the swap to 100%% a build went to %s", got)
	}
	if testutil.ToFloat64(metrics.Weight.WithLabelValues("kata")) != 100 || testutil.ToFloat64(metrics.ConfigInfo.WithLabelValues(v1)) != 1 {
		t.Error("metrics do not show the reloaded rules")
	}

	cm.publish("executor: {k8s: {weightage: 100, exclusion: ['(unclosed']}}\n")
	waitApplied()
	if got := holder.Current().Version; got != v1 {
		t.Fatalf("an invalid config replaced the rules: version %s, want %s", got, v1)
	}
	if testutil.ToFloat64(metrics.ReloadSuccess) != 0 {
		t.Error("routing_reload_success is not 0 after a refused reload")
	}

	time.Sleep(50 * time.Millisecond) // let workers route under v1
	stop.Store(true)
	wg.Wait()
	if routed.Load() != attempts.Load() {
		t.Fatalf("%d of %d routing calls did not complete", attempts.Load()-routed.Load(), attempts.Load())
	}
	if !seen[v1] {
		t.Fatalf("workers never saw the reloaded rules; saw %v", seen)
	}
}

func TestReloader_NonRoutingChangeNeedsRestart(t *testing.T) {
	a := mustLoad(t, nil)
	b := mustLoad(t, map[string]string{"WORKER_CONCURRENCY": "9", "WEIGHT_K8S": "5"})
	if got := nonRoutingChanges(a, b); strings.Join(got, ",") != "worker" {
		t.Fatalf("changed sections %v, want [worker] (the weight is a routing input)", got)
	}
}
