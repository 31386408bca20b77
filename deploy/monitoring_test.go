package deploy

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite generated files (base/prometheusrule.yaml) instead of comparing")

const (
	rulesFile       = "prometheus/queue-worker.rules.yml"
	rulesTestFile   = "prometheus/queue-worker.rules.test.yml"
	prometheusRule  = "base/prometheusrule.yaml"
	dashboardFile   = "base/grafana-dashboard.json"
	operationsDoc   = "../docs/operations.md"
	runbookURLStart = "https://github.com/sdkata/queue-worker/blob/main/docs/operations.md#"
)

// ruleFile is the part of a Prometheus rule file the tests read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func readYAML(t *testing.T, path string, into any) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

func loadRules(t *testing.T) ruleFile {
	t.Helper()
	var f ruleFile
	readYAML(t, rulesFile, &f)
	if len(f.Groups) == 0 {
		t.Fatalf("%s has no groups", rulesFile)
	}
	return f
}

const prometheusRuleHeader = `# GENERATED from deploy/prometheus/queue-worker.rules.yml: edit that file, then
#   go test ./deploy -run TestPrometheusRule_MatchesRulesFile -update
# The Prometheus Operator loads these groups into every Prometheus whose
# ruleSelector matches this object's labels (add yours with a patch).
`

// The PrometheusRule in the base carries exactly the groups of the plain
// rule file that promtool checks and unit-tests.
func TestPrometheusRule_MatchesRulesFile(t *testing.T) {
	var plain map[string]any
	readYAML(t, rulesFile, &plain)
	if *update {
		// The groups as a node, so the rules keep their key order and comments.
		var doc yaml.Node
		readYAML(t, rulesFile, &doc)
		var groups *yaml.Node
		if m := doc.Content[0]; m.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(m.Content); i += 2 {
				if m.Content[i].Value == "groups" {
					groups = m.Content[i+1]
				}
			}
		}
		if groups == nil {
			t.Fatalf("%s: no groups", rulesFile)
		}
		cr := map[string]any{
			"apiVersion": "monitoring.coreos.com/v1",
			"kind":       "PrometheusRule",
			"metadata": map[string]any{
				"name": "queue-worker", "namespace": "screwdriver",
				"labels": map[string]any{"app.kubernetes.io/name": "queue-worker"},
			},
			"spec": map[string]any{"groups": groups},
		}
		var buf bytes.Buffer
		buf.WriteString(prometheusRuleHeader)
		enc := yaml.NewEncoder(&buf)
		enc.SetIndent(2)
		if err := enc.Encode(cr); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(prometheusRule, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var cr struct {
		Kind     string `yaml:"kind"`
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
		Spec map[string]any `yaml:"spec"`
	}
	readYAML(t, prometheusRule, &cr)
	if cr.Kind != "PrometheusRule" || cr.Metadata.Name == "" {
		t.Fatalf("%s: kind %q name %q", prometheusRule, cr.Kind, cr.Metadata.Name)
	}
	if !reflect.DeepEqual(cr.Spec["groups"], plain["groups"]) {
		t.Fatalf("%s differs from %s: run go test ./deploy -run TestPrometheusRule_MatchesRulesFile -update", prometheusRule, rulesFile)
	}
}

// githubAnchors returns the anchors GitHub makes for a Markdown file's
// headings (lower case, punctuation dropped, spaces to hyphens).
func githubAnchors(t *testing.T, path string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	drop := regexp.MustCompile(`[^\p{L}\p{N} _-]`)
	out := map[string]bool{}
	inFence := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "```") {
			inFence = !inFence
		}
		if inFence || !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.TrimSpace(strings.TrimLeft(line, "#"))
		slug := strings.ReplaceAll(drop.ReplaceAllString(strings.ToLower(h), ""), " ", "-")
		out[slug] = true
	}
	return out
}

// Every alert has a severity, a summary, a runbook_url whose anchor is a
// heading of docs/operations.md, and a promtool unit test that expects it
// to fire.
func TestAlerts_HaveSeverityRunbookAndFiringTest(t *testing.T) {
	rules := loadRules(t)
	anchors := githubAnchors(t, operationsDoc)
	var tests struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			Name          string `yaml:"name"`
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, rulesTestFile, &tests)
	if len(tests.RuleFiles) != 1 || filepath.Join("prometheus", tests.RuleFiles[0]) != rulesFile {
		t.Fatalf("%s tests %v, want %s", rulesTestFile, tests.RuleFiles, filepath.Base(rulesFile))
	}
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	alerts := 0
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			switch r.Labels["severity"] {
			case "critical", "warning", "info":
			default:
				t.Errorf("%s: severity %q, want critical, warning or info", r.Alert, r.Labels["severity"])
			}
			if r.Annotations["summary"] == "" {
				t.Errorf("%s: no summary annotation", r.Alert)
			}
			u := r.Annotations["runbook_url"]
			anchor, ok := strings.CutPrefix(u, runbookURLStart)
			if !ok {
				t.Errorf("%s: runbook_url %q does not point into docs/operations.md (%s...)", r.Alert, u, runbookURLStart)
			} else if !anchors[anchor] {
				t.Errorf("%s: runbook_url anchor #%s is not a heading of docs/operations.md", r.Alert, anchor)
			}
			if !fires[r.Alert] {
				t.Errorf("%s: no case in %s expects it to fire", r.Alert, rulesTestFile)
			}
		}
	}
	if alerts == 0 {
		t.Fatal("no alerts found")
	}
}

// dashboard is the part of a Grafana dashboard model the tests read.
type dashboard struct {
	Title         string  `json:"title"`
	UID           string  `json:"uid"`
	SchemaVersion int     `json:"schemaVersion"`
	Panels        []panel `json:"panels"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Query      json.RawMessage `json:"query"`
			Datasource *datasource     `json:"datasource"`
		} `json:"list"`
	} `json:"templating"`
	Time struct {
		From string `json:"from"`
		To   string `json:"to"`
	} `json:"time"`
}

type datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *datasource `json:"datasource"`
	GridPos    struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		Expr       string      `json:"expr"`
		RefID      string      `json:"refId"`
		Datasource *datasource `json:"datasource"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's panels
}

func loadDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&d); err != nil {
		t.Fatalf("%s is not a valid dashboard JSON: %v", dashboardFile, err)
	}
	return d
}

// allPanels flattens rows (collapsed rows hold their panels).
func allPanels(ps []panel) []panel {
	var out []panel
	for _, p := range ps {
		out = append(out, p)
		out = append(out, allPanels(p.Panels)...)
	}
	return out
}

// The dashboard has what Grafana needs to import it and what makes it
// reusable: a uid, a schema version, a Prometheus data source variable that
// every panel and query uses, a namespace variable every query filters on,
// unique panel ids, non-overlapping hand-placed panels within 24 columns,
// and at least one PromQL query in every panel but rows.
func TestDashboard_Structure(t *testing.T) {
	d := loadDashboard(t)
	if d.Title == "" || d.UID == "" || len(d.UID) > 40 {
		t.Errorf("title %q / uid %q: both needed, uid at most 40 characters", d.Title, d.UID)
	}
	if d.SchemaVersion < 36 {
		t.Errorf("schemaVersion %d: want 36 or later (data source references by uid)", d.SchemaVersion)
	}
	if d.Time.From == "" || d.Time.To == "" {
		t.Error("no default time range")
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		switch v.Type {
		case "datasource":
			var q string
			if err := json.Unmarshal(v.Query, &q); err != nil || q != "prometheus" {
				t.Errorf("data source variable %s: query %s, want \"prometheus\"", v.Name, v.Query)
			}
		case "query":
			if v.Datasource == nil || v.Datasource.UID != "${datasource}" {
				t.Errorf("variable %s does not query the ${datasource} variable: %+v", v.Name, v.Datasource)
			}
		}
	}
	for _, need := range []string{"datasource", "namespace"} {
		if !vars[need] {
			t.Errorf("no $%s template variable", need)
		}
	}
	builtin := map[string]bool{"__rate_interval": true, "__range": true, "__interval": true}
	varRef := regexp.MustCompile(`\$\{?(\w+)`)

	ids := map[int]string{}
	type rect struct {
		id         int
		x, y, w, h int
	}
	var placed []rect
	panels := allPanels(d.Panels)
	if len(panels) < 10 {
		t.Fatalf("only %d panels", len(panels))
	}
	for _, p := range panels {
		where := fmt.Sprintf("panel %d %q", p.ID, p.Title)
		if p.ID <= 0 {
			t.Errorf("%s: id must be positive", where)
		} else if other, dup := ids[p.ID]; dup {
			t.Errorf("%s: id also used by %q", where, other)
		}
		ids[p.ID] = p.Title
		if p.Title == "" || p.Type == "" {
			t.Errorf("%s: needs a title and a type", where)
		}
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.Y < 0 || g.X+g.W > 24 {
			t.Errorf("%s: gridPos %+v is not inside the 24-column grid", where, g)
		}
		for _, r := range placed {
			if g.X < r.x+r.w && r.x < g.X+g.W && g.Y < r.y+r.h && r.y < g.Y+g.H {
				t.Errorf("%s: gridPos %+v overlaps panel %d", where, g, r.id)
			}
		}
		placed = append(placed, rect{p.ID, g.X, g.Y, g.W, g.H})
		if p.Type == "row" {
			if len(p.Targets) > 0 {
				t.Errorf("%s: a row has no queries", where)
			}
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: datasource %+v, want the ${datasource} variable", where, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no targets", where)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			if strings.TrimSpace(q.Expr) == "" {
				t.Errorf("%s: a target without expr", where)
			}
			if q.RefID == "" || refs[q.RefID] {
				t.Errorf("%s: refId %q missing or repeated", where, q.RefID)
			}
			refs[q.RefID] = true
			if q.Datasource == nil || q.Datasource.UID != "${datasource}" {
				t.Errorf("%s: target %s datasource %+v, want the ${datasource} variable", where, q.RefID, q.Datasource)
			}
			if !strings.Contains(q.Expr, `namespace="$namespace"`) {
				t.Errorf("%s: target %s does not filter on namespace=\"$namespace\": %s", where, q.RefID, q.Expr)
			}
			for _, m := range varRef.FindAllStringSubmatch(q.Expr, -1) {
				if !vars[m[1]] && !builtin[m[1]] {
					t.Errorf("%s: target %s uses $%s, which is no template variable", where, q.RefID, m[1])
				}
			}
		}
	}
}

// dashboardExprs returns every PromQL query of the dashboard.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, p := range allPanels(loadDashboard(t).Panels) {
		for _, q := range p.Targets {
			out = append(out, q.Expr)
		}
	}
	return out
}

// ruleExprs returns every rule's expression, and the names the recording
// rules define.
func ruleExprs(t *testing.T) (exprs []string, recorded map[string]bool) {
	t.Helper()
	recorded = map[string]bool{}
	for _, g := range loadRules(t).Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
			if r.Record != "" {
				recorded[r.Record] = true
			}
		}
	}
	return exprs, recorded
}

// usedMetricNames returns the metric names the dashboard and the rules
// select, recording-rule names left out.
func usedMetricNames(t *testing.T) []string {
	t.Helper()
	exprs, recorded := ruleExprs(t)
	exprs = append(exprs, dashboardExprs(t)...)
	set := map[string]bool{}
	for _, e := range exprs {
		for _, n := range promqlMetricNames(e) {
			if !recorded[n] {
				set[n] = true
			}
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Every dashboard query parses as PromQL: promtool checks them as the
// expressions of recording rules, Grafana's variables replaced by values.
// make test sets QW_PROMTOOL (scripts/ensure-promtool.sh).
func TestDashboard_QueriesParse(t *testing.T) {
	promtool := os.Getenv("QW_PROMTOOL")
	if promtool == "" {
		t.Skip("QW_PROMTOOL is not set (make test sets it: scripts/ensure-promtool.sh)")
	}
	subst := strings.NewReplacer("$__rate_interval", "5m", "$__range", "6h", "$__interval", "1m",
		"${datasource}", "x", "$namespace", "screwdriver", "$queue", "builds")
	type rec struct {
		Record string `yaml:"record"`
		Expr   string `yaml:"expr"`
	}
	var rules []rec
	for i, e := range dashboardExprs(t) {
		rules = append(rules, rec{Record: fmt.Sprintf("dashboard_query_%d", i), Expr: subst.Replace(e)})
	}
	b, err := yaml.Marshal(map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}})
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard.rules.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules on the dashboard's queries: %v\n%s", err, out)
	}
}
