package autopilot_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sdkata/queue-worker/internal/autopilot"
	"github.com/sdkata/queue-worker/internal/breaker"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/weightage"
)

type fakeBreaker struct {
	name string
	open atomic.Bool
}

func (b *fakeBreaker) Name() string { return b.name }
func (b *fakeBreaker) State() breaker.State {
	if b.open.Load() {
		return breaker.StateOpen
	}
	return breaker.StateClosed
}

func rulesAt(t *testing.T, pct float64, exclusions ...string) *weightage.Holder {
	t.Helper()
	r, err := weightage.NewRules(weightage.RulesSpec{KataPercent: &pct, Default: weightage.Hyperd, Exclusions: exclusions, Version: "v1"})
	if err != nil {
		t.Fatal(err)
	}
	return weightage.NewHolder(r)
}

var fast = autopilot.Settings{Enabled: true, Step: 10, Interval: time.Second, MaxPercent: 50, MinBuilds: 2,
	MaxFailureRateDelta: 0.05, MaxSetupTimeRatio: 1.5}

// healthy feeds the window a healthy start per runtime, with unique pods.
func healthy(w *autopilot.Window, n *int) {
	for _, rt := range []weightage.Runtime{weightage.Kata, weightage.Hyperd} {
		for range 3 {
			*n++
			observe(w, fmt.Sprint("p", *n), rt, weightage.RuleWeighted, false, "", time.Second)
		}
	}
}

func TestAutopilot_RoutesWithTheSharedShareKeepingOtherRules(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	ctx := context.Background()
	store := autopilot.NewStore(rdb, ns, 3*time.Second)
	holder := rulesAt(t, 10, "rhel6")
	a := autopilot.New(autopilot.Deps{Rules: holder, Store: store}, autopilot.Options{Settings: fast})

	if got := a.Current(); got != holder.Current() {
		t.Fatalf("before any read the configured rules are in force, got weight %v", got.KataPercent())
	}
	if err := store.Commit(ctx, 0, autopilot.State{Percent: 40}, autopilot.Decision{Outcome: autopilot.Promote}); err != nil {
		t.Fatal(err)
	}
	if err := a.Load(ctx); err != nil {
		t.Fatal(err)
	}
	r := a.Current()
	if r.KataPercent() != 40 || r.Version != "v1+ap4000" || a.Current() != r {
		t.Fatalf("share %v version %s (cached: %v)", r.KataPercent(), r.Version, a.Current() == r)
	}
	// Only the weight moved: an excluded image still goes to hyperd.
	if d := weightage.Route(weightage.Build{BuildID: 1, Image: "centos-rhel6"}, r); d.Rule != weightage.RuleExcluded {
		t.Fatalf("excluded image routed by %s", d.Rule)
	}
	tests := []struct {
		name     string
		settings func(s *autopilot.Settings)
		pin      string
		floor    float64
		want     float64
	}{
		{name: "a lowered maximum caps the share", settings: func(s *autopilot.Settings) { s.MaxPercent = 30 }, floor: 10, want: 30},
		{name: "a raised floor lifts it", floor: 45, want: 45},
		{name: "a pin wins", pin: "5", floor: 10, want: 5},
		{name: "an invalid pin is ignored", pin: "lots", floor: 10, want: 40},
		{name: "disabled: the configured weight", settings: func(s *autopilot.Settings) { s.Enabled = false }, floor: 10, want: 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := fast
			if tt.settings != nil {
				tt.settings(&s)
			}
			a.Apply(s)
			holder.Swap(rulesAt(t, tt.floor, "rhel6").Current())
			rdb.HDel(ctx, autopilot.Key(ns), autopilot.FieldPin)
			if tt.pin != "" {
				rdb.HSet(ctx, autopilot.Key(ns), autopilot.FieldPin, tt.pin)
			}
			if err := a.Load(ctx); err != nil {
				t.Fatal(err)
			}
			if got := a.Current().KataPercent(); got != tt.want {
				t.Fatalf("share %v, want %v", got, tt.want)
			}
		})
	}
}

// The leader loop: a healthy window promotes; a window during which a
// breaker opened holds, even if the breaker has closed by the decision.
func TestAutopilot_LeadPromotesAndHoldsWhileABreakerWasOpen(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	store := autopilot.NewStore(rdb, ns, 3*time.Second)
	w := autopilot.NewWindow(time.Now())
	ci := &fakeBreaker{name: "ci-api"}
	a := autopilot.New(autopilot.Deps{Rules: rulesAt(t, 10), Store: store, Window: w, Breakers: []autopilot.Breaker{ci}},
		autopilot.Options{Settings: fast, Identity: "test-leader"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Lead(ctx) }()
	defer func() { cancel(); <-done }()

	decisions := func() []autopilot.Decision {
		h, err := store.History(context.Background(), 0)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	n := 0
	testbed.Eventually(t, 10*time.Second, "a promotion", func() bool {
		healthy(w, &n)
		h := decisions()
		return len(h) > 0 && h[len(h)-1].Outcome == autopilot.Promote
	})
	if h := decisions(); h[len(h)-1].To != 20 || h[len(h)-1].Leader != "test-leader" || a.Current().KataPercent() != 20 {
		t.Fatalf("promotion %s by %s; routing at %v", h[len(h)-1], h[len(h)-1].Leader, a.Current().KataPercent())
	}
	before := len(decisions())
	ci.open.Store(true)
	time.Sleep(1500 * time.Millisecond) // the loop sees it open
	ci.open.Store(false)
	testbed.Eventually(t, 10*time.Second, "the next decision", func() bool {
		healthy(w, &n)
		return len(decisions()) > before
	})
	d := decisions()[before]
	if d.Outcome != autopilot.Hold || d.Reason != autopilot.ReasonBreakerOpen {
		t.Fatalf("decision after the breaker opened: %s", d)
	}
	testbed.Eventually(t, 10*time.Second, "a promotion once the window is clean", func() bool {
		healthy(w, &n)
		h := decisions()
		return h[len(h)-1].Outcome == autopilot.Promote && h[len(h)-1].To == 30
	})
}

// memStore is an in-memory StateStore whose commits can fail: lost (not
// applied) or with their answer lost (applied, then an error).
type memStore struct {
	mu       sync.Mutex
	snap     autopilot.Snapshot
	history  []autopilot.Decision
	failNext string // "", "lost", "answer-lost"
}

func (m *memStore) Load(context.Context) (autopilot.Snapshot, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.snap, nil
}

func (m *memStore) Commit(_ context.Context, readSeq int64, next autopilot.State, d autopilot.Decision) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.snap.State.Seq != readSeq {
		return autopilot.ErrConflict
	}
	fail := m.failNext
	m.failNext = ""
	if fail == "lost" {
		return errors.New("i/o timeout")
	}
	next.Seq = readSeq + 1
	m.snap.State = next
	m.history = append(m.history, d)
	if fail == "answer-lost" {
		return errors.New("i/o timeout")
	}
	return nil
}

func (m *memStore) decisions() []autopilot.Decision {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.history)
}

// A commit that never landed leaves its window for the next try; one that
// landed but whose answer was lost counts as decided (metrics included),
// and is not decided again.
func TestAutopilot_LostCommitsNeitherLoseTheWindowNorRepeatTheDecision(t *testing.T) {
	store := &memStore{failNext: "lost"}
	w := autopilot.NewWindow(time.Now())
	m := autopilot.NewMetrics(nil)
	a := autopilot.New(autopilot.Deps{Rules: rulesAt(t, 10), Store: store, Window: w, Metrics: m},
		autopilot.Options{Settings: fast, Identity: "leader"})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Lead(ctx) }()
	defer func() { cancel(); <-done }()

	// One window's worth of starts, then nothing: the retry must still see
	// them (the first commit is lost).
	n := 0
	time.Sleep(50 * time.Millisecond) // Lead opened its window
	healthy(w, &n)
	testbed.Eventually(t, 20*time.Second, "a decision", func() bool { return len(store.decisions()) > 0 })
	d := store.decisions()[0]
	if d.Outcome != autopilot.Promote || d.Figures.Kata.Builds != 3 || d.Figures.Hyperd.Builds != 3 {
		t.Fatalf("decision after a lost commit: %s (%+v)", d, d.Figures)
	}

	store.mu.Lock()
	store.failNext = "answer-lost"
	store.mu.Unlock()
	healthy(w, &n)
	testbed.Eventually(t, 10*time.Second, "a second decision", func() bool { return len(store.decisions()) > 1 })
	time.Sleep(2500 * time.Millisecond) // a repeat would come within a tick or two
	promotions := 0
	for _, d := range store.decisions() {
		if d.Outcome == autopilot.Promote {
			promotions++
		}
	}
	if h := store.decisions(); promotions != 2 || h[1].To != 30 {
		t.Fatalf("%d promotions: %v", promotions, h)
	}
	if got := testutil.ToFloat64(m.Decisions.WithLabelValues("promote", "healthy")); got != 2 {
		t.Fatalf("promotions counted %v, want 2", got)
	}
	if a.Current().KataPercent() != 30 {
		t.Fatalf("routing at %v, want 30", a.Current().KataPercent())
	}
}

// A refresh that read the state before the leader's commit and lands after
// it must not take the share back.
func TestAutopilot_AnOlderReadDoesNotTakeTheShareBack(t *testing.T) {
	store := &memStore{}
	store.snap.State = autopilot.State{Seq: 5, Percent: 30}
	a := autopilot.New(autopilot.Deps{Rules: rulesAt(t, 10), Store: store}, autopilot.Options{Settings: fast})
	if err := a.Load(context.Background()); err != nil || a.Current().KataPercent() != 30 {
		t.Fatalf("share %v (%v)", a.Current().KataPercent(), err)
	}
	store.mu.Lock()
	store.snap.State = autopilot.State{Seq: 4, Percent: 20}
	store.mu.Unlock()
	_ = a.Load(context.Background())
	if got := a.Current().KataPercent(); got != 30 {
		t.Fatalf("an older state took the share to %v", got)
	}
}
