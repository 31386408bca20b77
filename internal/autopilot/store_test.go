package autopilot_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sdkata/queue-worker/internal/autopilot"
	"github.com/sdkata/queue-worker/internal/supervisor"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/weightage"
	"k8s.io/apimachinery/pkg/types"
)

func TestStore_CommitIsFencedBySeq(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	ctx := context.Background()
	s := autopilot.NewStore(rdb, ns, 3*time.Second)

	snap, err := s.Load(ctx)
	if err != nil || snap.State.Seq != 0 || snap.Paused != "" || snap.Pin != nil {
		t.Fatalf("empty store: %+v, %v", snap, err)
	}
	d := autopilot.Decision{At: time.Now().UTC(), Outcome: autopilot.Promote, Reason: autopilot.ReasonHealthy, From: 5, To: 10,
		Detail: "a detail with a\nnewline"}
	if err := s.Commit(ctx, 0, autopilot.State{Percent: 10, Ladder: []float64{5}}, d); err != nil {
		t.Fatal(err)
	}
	// A deposed leader that read seq 0 cannot write over its successor.
	if err := s.Commit(ctx, 0, autopilot.State{Percent: 99}, d); !errors.Is(err, autopilot.ErrConflict) {
		t.Fatalf("stale commit: %v, want ErrConflict", err)
	}
	snap, err = s.Load(ctx)
	if err != nil || snap.State.Seq != 1 || snap.State.Percent != 10 {
		t.Fatalf("after one commit: %+v, %v", snap.State, err)
	}
	h, err := s.History(ctx, 0)
	if err != nil || len(h) != 1 || h[0].To != 10 || h[0].Detail != d.Detail {
		t.Fatalf("history %+v, %v", h, err)
	}
}

func TestStore_HistoryKeepsTheNewestEntries(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	ctx := context.Background()
	s := autopilot.NewStore(rdb, ns, 3*time.Second)
	n := autopilot.HistoryCap + 5
	for i := range n {
		d := autopilot.Decision{Outcome: autopilot.Hold, Reason: autopilot.ReasonTooFewBuilds, Detail: fmt.Sprint(i)}
		if err := s.Commit(ctx, int64(i), autopilot.State{Percent: 5}, d); err != nil {
			t.Fatal(err)
		}
	}
	h, err := s.History(ctx, 0)
	if err != nil || len(h) != autopilot.HistoryCap {
		t.Fatalf("history has %d entries (%v), want %d", len(h), err, autopilot.HistoryCap)
	}
	if h[0].Detail != "5" || h[len(h)-1].Detail != fmt.Sprint(n-1) {
		t.Fatalf("history spans %s..%s, want 5..%d", h[0].Detail, h[len(h)-1].Detail, n-1)
	}
	last, err := s.History(ctx, 2)
	if err != nil || len(last) != 2 || last[1].Detail != fmt.Sprint(n-1) {
		t.Fatalf("last two: %+v, %v", last, err)
	}
}

func TestStore_OperatorControls(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	ctx := context.Background()
	s := autopilot.NewStore(rdb, ns, 3*time.Second)
	key := autopilot.Key(ns)
	tests := []struct {
		name     string
		fields   map[string]string
		paused   string
		pin      float64 // -1: none
		pinError string
	}{
		{name: "pause with a reason", fields: map[string]string{"paused": "incident 7"}, paused: "incident 7", pin: -1},
		{name: "pause without a reason", fields: map[string]string{"paused": ""}, paused: "paused (no reason given)", pin: -1},
		{name: "pin", fields: map[string]string{"pin": "20"}, pin: 20},
		{name: "pin with a percent sign", fields: map[string]string{"pin": " 12.5% "}, pin: 12.5},
		{name: "pin out of range is ignored", fields: map[string]string{"pin": "150"}, pin: -1, pinError: `pin "150" is not a percentage 0-100`},
		{name: "pin that is not a number is ignored", fields: map[string]string{"pin": "half"}, pin: -1, pinError: `pin "half"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb.HDel(ctx, key, autopilot.FieldPaused, autopilot.FieldPin)
			for f, v := range tt.fields {
				rdb.HSet(ctx, key, f, v)
			}
			snap, err := s.Load(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if snap.Paused != tt.paused {
				t.Errorf("paused %q, want %q", snap.Paused, tt.paused)
			}
			switch {
			case tt.pin < 0 && snap.Pin != nil:
				t.Errorf("pin %v, want none", *snap.Pin)
			case tt.pin >= 0 && (snap.Pin == nil || *snap.Pin != tt.pin):
				t.Errorf("pin %v, want %v", snap.Pin, tt.pin)
			}
			if !strings.Contains(snap.PinError, tt.pinError) || (tt.pinError == "") != (snap.PinError == "") {
				t.Errorf("pin error %q, want %q", snap.PinError, tt.pinError)
			}
		})
	}
}

func observe(w *autopilot.Window, uid string, rt weightage.Runtime, rule weightage.Rule, failed bool, class supervisor.FailureClass, setup time.Duration) {
	w.ObserveStart(supervisor.StartOutcome{Pod: types.UID(uid), Runtime: rt, Rule: rule, Failed: failed, Class: class,
		Setup: setup, SetupKnown: !failed && setup >= 0})
}

func TestWindow_CountsWeightedStartsOncePerPod(t *testing.T) {
	t0 := time.Now()
	w := autopilot.NewWindow(t0)
	for i := range 10 {
		observe(w, fmt.Sprint("k", i), weightage.Kata, weightage.RuleWeighted, false, "", time.Duration(i+1)*time.Second)
	}
	observe(w, "k-no-setup", weightage.Kata, weightage.RuleWeighted, false, "", -1) // ran, conditions unknown
	observe(w, "kf1", weightage.Kata, weightage.RuleWeighted, true, supervisor.ClassRuntime, 0)
	observe(w, "kf1", weightage.Kata, weightage.RuleWeighted, true, supervisor.ClassRuntime, 0) // a retried sync
	observe(w, "kf2", weightage.Kata, weightage.RuleWeighted, true, supervisor.ClassImage, 0)
	observe(w, "h1", weightage.Hyperd, weightage.RuleWeighted, false, "", 4*time.Second)
	observe(w, "h2", weightage.Hyperd, weightage.RuleExcluded, true, supervisor.ClassRuntime, 0) // not weighted
	observe(w, "h3", weightage.Hyperd, weightage.RuleFallback, false, "", time.Second)           // a relaunch
	f := w.Cut(t0.Add(time.Minute))
	if f.Kata.Builds != 13 || f.Kata.Failures != 2 || f.Kata.RuntimeFailures != 1 || f.Kata.SetupSamples != 10 || f.Kata.SetupP90Seconds != 9 {
		t.Errorf("kata %+v", f.Kata)
	}
	if f.Hyperd.Builds != 1 || f.Hyperd.Failures != 0 || f.Hyperd.SetupP90Seconds != 4 {
		t.Errorf("hyperd %+v", f.Hyperd)
	}
	if !f.From.Equal(t0) || !f.To.Equal(t0.Add(time.Minute)) {
		t.Errorf("window %v..%v", f.From, f.To)
	}
	if next := w.Cut(t0.Add(2 * time.Minute)); next.Kata.Builds != 0 || next.Hyperd.Builds != 0 || !next.From.Equal(t0.Add(time.Minute)) {
		t.Errorf("the next window is not empty: %+v", next)
	}
}

// An operator who deletes the history field loses the old entries, not the
// new ones.
func TestStore_HistoryDeletedByHandKeepsNewEntries(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	ctx := context.Background()
	s := autopilot.NewStore(rdb, ns, 3*time.Second)
	for i := range 3 {
		if err := s.Commit(ctx, int64(i), autopilot.State{}, autopilot.Decision{Detail: fmt.Sprint(i)}); err != nil {
			t.Fatal(err)
		}
	}
	rdb.HDel(ctx, autopilot.Key(ns), "history")
	if err := s.Commit(ctx, 3, autopilot.State{}, autopilot.Decision{Detail: "after"}); err != nil {
		t.Fatal(err)
	}
	h, err := s.History(ctx, 0)
	if err != nil || len(h) != 1 || h[0].Detail != "after" {
		t.Fatalf("history %+v, %v", h, err)
	}
}
