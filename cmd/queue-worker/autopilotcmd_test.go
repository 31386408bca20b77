package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sdkata/queue-worker/internal/autopilot"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// autopilotCmd runs `queue-worker autopilot` as an operator would.
func autopilotCmd(t *testing.T, overlay string, args ...string) (string, string, int) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(path, []byte(overlay), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := run(append([]string{"autopilot", "--config-dir", "../../config", "--config", path}, args...), &out, &errOut)
	return out.String(), errOut.String(), code
}

// explain and `queue-worker autopilot` read the shared state: the share
// the replicas route with, the last decision, and the operator's controls,
// which the command sets.
func TestAutopilotCommand_ExplainShowsTheShareAndControlsSetIt(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	host, port, _ := net.SplitHostPort(testbed.RedisAddr())
	overlay := fmt.Sprintf("queue: {namespace: %q, redisConnection: {host: %q, port: %s}}\n", ns, host, port) +
		"executor: {k8s: {weightage: 20}}\nrouting: {autopilot: {enabled: true, maxPercent: 80}}\n"
	ctx := context.Background()
	store := autopilot.NewStore(rdb, ns, 3*time.Second)
	d := autopilot.Decision{At: time.Date(2026, 12, 6, 4, 0, 0, 0, time.UTC), Outcome: autopilot.Promote, Reason: autopilot.ReasonHealthy,
		From: 40, To: 60, Floor: 20, Max: 80, Detail: "60 Kata vs 200 hyperd builds"}
	if err := store.Commit(ctx, 0, autopilot.State{Percent: 60, Ladder: []float64{20, 40}, Last: &d}, d); err != nil {
		t.Fatal(err)
	}
	build := []string{"--build-id", "43", "--job-id", "678", "--image", "node:18"}

	out, errOut, code := explain(t, overlay, "", build...)
	for _, want := range []string{"(60.00% to Kata", "+ap6000", "autopilot: active at 60% Kata; last decision 2026-12-06T04:00:00Z: promote 40% → 60% (healthy: 60 Kata vs 200 hyperd builds)"} {
		if code != 0 || !strings.Contains(out, want) {
			t.Fatalf("explain lacks %q (exit %d)\nstdout: %s\nstderr: %s", want, code, out, errOut)
		}
	}
	out, _, code = autopilotCmd(t, overlay)
	if code != 0 || !strings.Contains(out, "Kata 60% of weighted builds (floor 20%, max 80%)") || !strings.Contains(out, "promote 40% → 60%") {
		t.Fatalf("status (exit %d): %s", code, out)
	}

	if _, errOut, code := autopilotCmd(t, overlay, "pin", "150"); code == 0 || !strings.Contains(errOut, `pin "150" is not a percentage 0-100`) {
		t.Fatalf("pin 150 accepted (exit %d): %s", code, errOut)
	}
	if _, errOut, code := autopilotCmd(t, overlay, "pin", "30"); code != 0 {
		t.Fatalf("pin 30: exit %d: %s", code, errOut)
	}
	out, _, _ = explain(t, overlay, "", build...)
	if !strings.Contains(out, "(30.00% to Kata") || !strings.Contains(out, "autopilot: pinned at 30% Kata") {
		t.Fatalf("explain after the pin: %s", out)
	}
	if _, _, code := autopilotCmd(t, overlay, "pause", "INC-123", "kata", "pool"); code != 0 {
		t.Fatal("pause refused")
	}
	if _, _, code := autopilotCmd(t, overlay, "unpin"); code != 0 {
		t.Fatal("unpin refused")
	}
	out, _, code = autopilotCmd(t, overlay, "-o", "json")
	var v struct {
		Percent float64 `json:"percent"`
		Paused  string  `json:"paused"`
		Pin     *float64
		History []autopilot.Decision `json:"history"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil || code != 0 || v.Percent != 60 || v.Paused != "INC-123 kata pool" || v.Pin != nil || len(v.History) != 1 {
		t.Fatalf("status json (%v): %s", err, out)
	}
	out, _, _ = explain(t, overlay, "", build...)
	if !strings.Contains(out, "(60.00% to Kata") || !strings.Contains(out, "autopilot: paused: INC-123 kata pool at 60% Kata") {
		t.Fatalf("explain while paused: %s", out)
	}
	if _, _, code := autopilotCmd(t, overlay, "resume"); code != 0 || rdb.HExists(ctx, autopilot.Key(ns), autopilot.FieldPaused).Val() {
		t.Fatal("resume left the pause")
	}

	// Off in the config: the configured weight, and no autopilot line.
	out, _, _ = explain(t, strings.Replace(overlay, "enabled: true", "enabled: false", 1), "", build...)
	if !strings.Contains(out, "(20.00% to Kata") || strings.Contains(out, "autopilot:") {
		t.Fatalf("explain with the autopilot off: %s", out)
	}
}

// Redis unreachable: explain says so and shows the configured weight.
func TestAutopilotCommand_ExplainWithoutRedisShowsTheConfiguredWeight(t *testing.T) {
	overlay := fmt.Sprintf("queue: {redisConnection: {host: 127.0.0.1, port: %d}, operationTimeout: 1s}\n", testbed.FreePort(t)) +
		"executor: {k8s: {weightage: 20}}\nrouting: {autopilot: {enabled: true}}\n"
	out, errOut, code := explain(t, overlay, "", "--build-id", "43", "--job-id", "678", "--image", "node:18")
	if code != 0 || !strings.Contains(out, "(20.00% to Kata") || !strings.Contains(errOut, "the autopilot is on but its state could not be read") {
		t.Fatalf("exit %d\nstdout: %s\nstderr: %s", code, out, errOut)
	}
}
