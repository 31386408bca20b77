package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sdkata/queue-worker/internal/gate"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// explain runs the command as a user would, with the repo's config files
// and an overlay holding the routing settings under test.
func explain(t *testing.T, overlay, stdin string, args ...string) (string, string, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	old := explainStdin
	explainStdin = strings.NewReader(stdin)
	t.Cleanup(func() { explainStdin = old })
	var out, errOut bytes.Buffer
	code := run(append([]string{"explain", "--config-dir", "../../config", "--config", path}, args...), &out, &errOut)
	return out.String(), errOut.String(), code
}

const fiftyFifty = "executor: {k8s: {weightage: 50, exclusion: [rhel6]}}\n"

func TestExplain_HumanOutput(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		stdin string
		want  []string
	}{
		{"FlagsExcluded", []string{"--build-id", "42", "--image", "registry/rhel6:1"}, "",
			[]string{`build 42 → hyperd (rule excluded: image "registry/rhel6:1" matches exclusion "rhel6"; rules v=`}},
		{"FlagsWeighted", []string{"--build-id", "43", "--job-id", "678", "--image", "node:18"}, "",
			[]string{"build 43 → ", "(rule weighted: bucket ", "(50.00% to Kata, sticky by job 678); rules v="}},
		{"RepeatedAnnotations", []string{"--build-id", "44", "--annotation", "screwdriver.cd/cpu=HIGH", "--annotation", "executor=k8s-vm"}, "",
			[]string{"build 44 → hyperd (rule annotation: annotation screwdriver.cd/executor=k8s-vm"}},
		{"JSONArgument", []string{`{"buildId":45,"jobId":1,"container":"centos-RHEL6","annotations":{"beta.screwdriver.cd/executor":"k8s"}}`}, "",
			[]string{"build 45 → kata (rule annotation"}},
		{"JSONLinesOnStdin", nil, "{\"buildId\":1,\"container\":\"rhel6\"}\n\n{\"buildId\":2,\"container\":\"x\",\"annotations\":{\"screwdriver.cd/executor\":\"kata\"}}\n",
			[]string{"build 1 → hyperd (rule excluded", "\nbuild 2 → kata (rule annotation"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, code := explain(t, fiftyFifty, tt.stdin, tt.args...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errOut)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output %q\nlacks %q", out, w)
				}
			}
		})
	}
}

func TestExplain_JSONLinesOneDecisionPerLine(t *testing.T) {
	out, errOut, code := explain(t, fiftyFifty, "{\"buildId\":1,\"container\":\"rhel6\"}\n{\"buildId\":2,\"jobId\":9,\"container\":\"node\"}\n", "-o", "json", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 {
		t.Fatalf("%d output lines for 2 builds: %q", len(lines), out)
	}
	var first, second routing.Explanation
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	if first.Rule != "excluded" || first.MatchedPattern != "rhel6" || second.Rule != "weighted" || second.Bucket == nil || second.StickyKey != 9 {
		t.Fatalf("decisions %+v / %+v", first, second)
	}
}

func TestExplain_BadLineIsReportedAndTheRestExplained(t *testing.T) {
	out, errOut, code := explain(t, fiftyFifty, "not json\n{\"buildId\":2,\"container\":\"rhel6\"}\n")
	if code != 1 || !strings.Contains(errOut, "line 1") || !strings.Contains(out, "build 2 → hyperd") {
		t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errOut)
	}
}

func TestExplain_SimulateSplit(t *testing.T) {
	out, errOut, code := explain(t, "executor: {k8s: {weightage: 20}}\n", "", "--simulate", "100000", "--image", "node:18", "-o", "json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var s simulation
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if s.Builds != 100000 || s.KataPercent < 19.5 || s.KataPercent > 20.5 {
		t.Fatalf("simulation %+v: want 100000 builds, 20±0.5%% Kata", s)
	}
	text, _, _ := explain(t, "executor: {k8s: {weightage: 20}}\nrouting: {paused: [kata]}\n", "", "--simulate", "1000")
	if !strings.Contains(text, "1000 builds under rules v=") || !strings.Contains(text, "paused") {
		t.Fatalf("text simulation %q", text)
	}
}

func TestExplain_InvalidConfigRefused(t *testing.T) {
	_, errOut, code := explain(t, "executor: {k8s: {exclusion: ['(unclosed']}}\n", "", "--build-id", "1")
	if code != 1 || !strings.Contains(errOut, `executor.k8s.exclusion[0]`) {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

// --check-gate says what the blockedBy/collapse gate would decide now, from
// queue-service's keys, and writes nothing.
func TestExplain_CheckGateShowsWhyAStartWouldWait(t *testing.T) {
	rdb, _, prefix := testbed.Redis(t)
	host, port, _ := net.SplitHostPort(testbed.RedisAddr())
	ctx := context.Background()
	job, other := 9_100_000+rand.Int64N(1_000_000), int64(9_000_001)
	k := gate.NewKeys(prefix)
	rdb.Set(ctx, k.Running(other), "77", time.Minute)
	overlay := fmt.Sprintf("queue: {prefix: %q, redisConnection: {host: %q, port: %s}}\n", prefix, host, port)
	args := []string{"--build-id", "500", "--job-id", strconv.FormatInt(job, 10), "--image", "node:18",
		"--blocked-by", fmt.Sprintf("%d,%d", job, other), "--check-gate"}
	out, errOut, code := explain(t, overlay, "", args...)
	if code != 0 || !strings.Contains(out, `gate: would wait (blocked_by_jobs): Blocked by these running build(s): <a href="/builds/77">77</a>`) {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
	out, _, code = explain(t, overlay, "", append(args, "-o", "json")...)
	var v struct {
		Runtime string `json:"runtime"`
		Gate    struct {
			Action   string  `json:"action"`
			Blocking []int64 `json:"blockingBuilds"`
		} `json:"gate"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || v.Gate.Action != "block" || len(v.Gate.Blocking) != 1 || v.Gate.Blocking[0] != 77 || v.Runtime == "" {
		t.Fatalf("json %s (%v)", out, err)
	}
	if n := rdb.LLen(ctx, k.Waiting(job)).Val(); n != 0 {
		t.Fatalf("explain wrote to the waiting list (%d entries)", n)
	}
	rdb.Del(ctx, k.Running(other))
	out, _, _ = explain(t, overlay, "", args...)
	if !strings.Contains(out, "gate: would start (ready)") {
		t.Fatalf("stdout: %s", out)
	}
}
