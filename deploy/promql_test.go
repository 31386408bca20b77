package deploy

import (
	"sort"
	"strings"
	"testing"
)

// promqlMetricNames returns the metric names an expression selects, sorted
// and without duplicates. It is a small lexer rather than Prometheus's
// parser: github.com/prometheus/prometheus would raise this module's
// k8s.io/client-go by four minor versions (MVS), for a test.
//
// It skips strings, comments, durations and numbers, Grafana variables
// ($x, ${x}), label matchers in {...} (but reads {__name__="x"}), label
// lists after by/without/on/ignoring/group_left/group_right, keywords, and
// function or aggregation names (an identifier followed by "(").
func promqlMetricNames(expr string) []string {
	names := map[string]bool{}
	s := expr
	i := 0
	skipSpace := func(j int) int {
		for j < len(s) && strings.ContainsRune(" \t\r\n", rune(s[j])) {
			j++
		}
		return j
	}
	for i < len(s) {
		c := s[i]
		switch {
		case c == '#': // comment to the end of the line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			i = skipString(s, i)
		case c == '{':
			// Label matchers: only __name__="x" (or =~ with a plain name)
			// names a metric.
			end := i + 1
			for end < len(s) && s[end] != '}' {
				if s[end] == '"' || s[end] == '\'' || s[end] == '`' {
					end = skipString(s, end)
					continue
				}
				end++
			}
			if n := nameMatcher(s[i+1 : min(end, len(s))]); n != "" {
				names[n] = true
			}
			i = end + 1
		case c == '[': // range or subquery: durations, maybe $__rate_interval
			for i < len(s) && s[i] != ']' {
				i++
			}
			i++
		case c == '$': // Grafana variable: $name or ${name}
			i++
			if i < len(s) && s[i] == '{' {
				for i < len(s) && s[i] != '}' {
					i++
				}
				i++
				continue
			}
			for i < len(s) && isIdentChar(s[i]) {
				i++
			}
		case c >= '0' && c <= '9' || c == '.':
			// Number or duration (5m, 1e3, 0x1f, 1.5).
			for i < len(s) && (isIdentChar(s[i]) || s[i] == '.') {
				i++
			}
		case isIdentStart(c):
			j := i
			for j < len(s) && isIdentChar(s[j]) {
				j++
			}
			word := s[i:j]
			next := skipSpace(j)
			lower := strings.ToLower(word)
			switch {
			case labelListKeywords[lower]:
				// by (a, b) / on(a) / group_left(b): skip the label list.
				if next < len(s) && s[next] == '(' {
					for next < len(s) && s[next] != ')' {
						next++
					}
					j = next + 1
				}
			case keywords[lower]:
			case aggregations[lower] && (next < len(s) && s[next] == '(' || startsWithWord(s[next:], "by") || startsWithWord(s[next:], "without")):
				// sum by (x) (...): the clause comes before the body.
			case next < len(s) && s[next] == '(':
				// A function or aggregation call.
			default:
				names[word] = true
			}
			i = j
		default:
			i++
		}
	}
	out := make([]string, 0, len(names))
	for n := range names {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

var labelListKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}

var keywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true,
	"inf": true, "nan": true, "atan2": true}

var aggregations = map[string]bool{"sum": true, "min": true, "max": true, "avg": true, "group": true, "stddev": true,
	"stdvar": true, "count": true, "count_values": true, "bottomk": true, "topk": true, "quantile": true,
	"limitk": true, "limit_ratio": true}

// startsWithWord reports whether s begins with the identifier w.
func startsWithWord(s, w string) bool {
	return len(s) >= len(w) && strings.EqualFold(s[:len(w)], w) && (len(s) == len(w) || !isIdentChar(s[len(w)]))
}

func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
}

func isIdentChar(c byte) bool { return isIdentStart(c) || c >= '0' && c <= '9' }

// skipString returns the index just past the string literal opening at i.
func skipString(s string, i int) int {
	q := s[i]
	i++
	for i < len(s) && s[i] != q {
		if s[i] == '\\' && q != '`' {
			i++
		}
		i++
	}
	return i + 1
}

// nameMatcher returns x for a matcher list holding __name__="x".
func nameMatcher(m string) string {
	for _, part := range strings.Split(m, ",") {
		k, v, ok := strings.Cut(part, "=")
		if !ok || strings.TrimSpace(k) != "__name__" {
			continue
		}
		v = strings.TrimSpace(strings.TrimPrefix(v, "~"))
		if len(v) >= 2 {
			return v[1 : len(v)-1]
		}
	}
	return ""
}

func TestPromQLMetricNames(t *testing.T) {
	for _, tt := range []struct {
		name, expr string
		want       []string
	}{
		{"bare selector", `up`, []string{"up"}},
		{"matchers and range", `rate(a_total{job="x", code=~"5.."}[5m])`, []string{"a_total"}},
		{"aggregation with by before and after", `sum by (ns, le) (rate(b_bucket[1m])) + sum(c) without (pod)`, []string{"b_bucket", "c"}},
		{"vector matching keywords", `x / on (ns) group_left (team) y unless ignoring(pod) z`, []string{"x", "y", "z"}},
		{"set operators and bool", `a > bool 1 and b or c`, []string{"a", "b", "c"}},
		{"strings are not names", `label_replace(m, "dst", "$1", "src", "(rate)")`, []string{"m"}},
		{"recording rule names", `ns:queue_worker_jobs:rate5m > 0`, []string{"ns:queue_worker_jobs:rate5m"}},
		{"grafana variables", `histogram_quantile(0.9, sum by (le) (rate(h_bucket{namespace="$namespace"}[$__rate_interval])))`, []string{"h_bucket"}},
		{"offset, at and numbers", `d offset 5m - d @ 1609746000 + 1e3 * 0x1f`, []string{"d"}},
		{"__name__ matcher", `{__name__="by_name", a="b"}`, []string{"by_name"}},
		{"vector() and functions", `count(e == 2) or vector(0)`, []string{"e"}},
		{"comments", "f # g is a comment\n + h", []string{"f", "h"}},
		{"subquery", `max_over_time(deriv(i[5m])[30m:1m])`, []string{"i"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := promqlMetricNames(tt.expr)
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Fatalf("promqlMetricNames(%q) = %v, want %v", tt.expr, got, tt.want)
			}
		})
	}
}
