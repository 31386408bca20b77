package autopilot

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/breaker"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// RulesSource returns the configured routing rules (a *weightage.Holder
// that config reloads swap).
type RulesSource interface {
	Current() *weightage.Rules
}

// StateStore keeps the shared state (a *Store).
type StateStore interface {
	Load(ctx context.Context) (Snapshot, error)
	Commit(ctx context.Context, readSeq int64, next State, d Decision) error
}

// Breaker is a dependency's circuit breaker (a *breaker.Breaker).
type Breaker interface {
	Name() string
	State() breaker.State
}

// Deps are what the autopilot works with. Window, Breakers and Metrics
// are only needed where it leads (and Metrics may be nil anywhere).
type Deps struct {
	Rules    RulesSource
	Store    StateStore
	Window   *Window
	Breakers []Breaker
	Log      *zap.Logger
	Metrics  *Metrics
}

// Options tune it.
type Options struct {
	Settings Settings
	// Identity names this replica in the decisions it takes.
	Identity string
	// Refresh is how often every replica rereads the shared state (the
	// leader's commits and the operator's pause and pin).
	Refresh time.Duration
}

// Autopilot routes with the shared Kata share and, on the leader, moves it.
// It is the RulesSource of routing: the configured rules with the
// autopilot's percentage when it is on, so annotations, exclusions, learned
// exclusions, pauses and budgets keep their precedence and only the
// weighted draw changes.
type Autopilot struct {
	deps     Deps
	opts     Options
	log      *zap.Logger
	m        *Metrics
	settings atomic.Pointer[Settings]
	snap     atomic.Pointer[Snapshot]
	cached   atomic.Pointer[cachedRules]
	// loadErr is the last failed read of the state ("" after a good one).
	loadErr atomic.Pointer[string]
	// leadMu serialises leadership terms.
	leadMu    sync.Mutex
	publishMu sync.Mutex
}

type cachedRules struct {
	base  *weightage.Rules
	bp    int
	rules *weightage.Rules
}

// New returns an autopilot; Load or Run read its state.
func New(deps Deps, opts Options) *Autopilot {
	if deps.Metrics == nil {
		deps.Metrics = NewMetrics(nil)
	}
	if deps.Log == nil {
		deps.Log = zap.NewNop()
	}
	if opts.Refresh <= 0 {
		opts.Refresh = 5 * time.Second
	}
	a := &Autopilot{deps: deps, opts: opts, log: deps.Log, m: deps.Metrics}
	a.Apply(opts.Settings)
	return a
}

// Apply takes reloaded settings (routing.autopilot reloads live).
func (a *Autopilot) Apply(s Settings) {
	// Routing has a resolution of one basis point: a maximum between two
	// is taken down to the one below (never above it), a step up to one.
	s.MaxPercent = math.Floor(s.MaxPercent*100+1e-9) / 100
	s.Step = math.Max(roundPercent(s.Step), 0.01)
	prev := a.settings.Swap(&s)
	if prev != nil && prev.Enabled != s.Enabled {
		a.log.Info("autopilot switched", zap.Bool("enabled", s.Enabled))
	}
	a.publish()
}

func (a *Autopilot) current() Settings { return *a.settings.Load() }

// percent is the share in force over the configured rules base: the pin,
// or the state's within [floor, max]; ok is false when the autopilot is
// off (or base has no weight to steer).
func (a *Autopilot) percent(base *weightage.Rules) (pct float64, mode string, ok bool) {
	s := a.current()
	floor := base.KataPercent()
	if !s.Enabled || !base.Weighted {
		return 0, "", false
	}
	snap := a.snap.Load()
	switch {
	case snap == nil:
		return floor, "active (state not read yet: the configured weight)", true
	case snap.Pin != nil:
		return *snap.Pin, "pinned", true
	case snap.Paused != "":
		return InForce(snap.State, floor, s.MaxPercent), "paused: " + snap.Paused, true
	}
	return InForce(snap.State, floor, s.MaxPercent), "active", true
}

// Current returns the rules to route with.
func (a *Autopilot) Current() *weightage.Rules {
	base := a.deps.Rules.Current() // one rule set for the share and the copy
	pct, _, ok := a.percent(base)
	if !ok {
		return base
	}
	bp := int(math.Round(pct * 100))
	if bp == base.KataBasisPoints {
		return base
	}
	if c := a.cached.Load(); c != nil && c.base == base && c.bp == bp {
		return c.rules
	}
	r := base.WithKataBasisPoints(bp)
	a.cached.Store(&cachedRules{base: base, bp: bp, rules: r})
	return r
}

var _ routing.AutopilotStatus = (*Autopilot)(nil)

// AutopilotView says where the autopilot stands (nil when off).
func (a *Autopilot) AutopilotView() *routing.AutopilotView {
	pct, mode, ok := a.percent(a.deps.Rules.Current())
	if !ok {
		return nil
	}
	v := &routing.AutopilotView{Percent: pct, Mode: mode}
	if e := a.loadErr.Load(); e != nil && *e != "" {
		if a.snap.Load() == nil {
			v.Mode += " (its state could not be read: " + *e + "; routing with the configured weight)"
		} else {
			v.Mode += " (the last read of its state failed: " + *e + "; routing with the last one read)"
		}
	}
	if snap := a.snap.Load(); snap != nil {
		if snap.PinError != "" {
			v.Mode += " (" + snap.PinError + ")"
		}
		if d := snap.State.Last; d != nil {
			at := d.At
			v.LastDecision, v.LastDecisionAt = d.String(), &at
		}
	}
	return v
}

// Load reads the shared state once.
func (a *Autopilot) Load(ctx context.Context) error {
	snap, err := a.deps.Store.Load(ctx)
	if err != nil {
		msg := err.Error()
		if prev := a.loadErr.Swap(&msg); prev == nil || *prev == "" {
			a.log.Warn("reading the autopilot state failed; routing with the last one read", zap.Error(err))
		}
		return err
	}
	if prev := a.loadErr.Swap(nil); prev != nil && *prev != "" {
		a.log.Info("the autopilot state is readable again")
	}
	a.adopt(snap)
	return nil
}

// adopt makes snap the one routed with, logging what an operator changed.
func (a *Autopilot) adopt(snap Snapshot) {
	// A refresh read before the leader's own commit may land after it:
	// never go back to an older state.
	for {
		cur := a.snap.Load()
		if cur != nil && snap.State.Seq < cur.State.Seq {
			return
		}
		if a.snap.CompareAndSwap(cur, &snap) {
			a.adopted(cur, snap)
			return
		}
	}
}

// adopted logs what an operator changed between prev and snap.
func (a *Autopilot) adopted(prev *Snapshot, snap Snapshot) {
	if prev == nil || a.current().Enabled {
		switch {
		case prev != nil && prev.Paused != snap.Paused && snap.Paused != "":
			a.log.Warn("autopilot paused by an operator", zap.String("reason", snap.Paused))
		case prev != nil && prev.Paused != snap.Paused:
			a.log.Info("autopilot resumed")
		}
		switch {
		case snap.PinError != "" && (prev == nil || prev.PinError != snap.PinError):
			a.log.Error("autopilot pin ignored", zap.String("reason", snap.PinError))
		case snap.Pin != nil && (prev == nil || prev.Pin == nil || *prev.Pin != *snap.Pin):
			a.log.Warn("Kata share pinned by an operator", zap.Float64("kata_percent", *snap.Pin))
		case snap.Pin == nil && prev != nil && prev.Pin != nil:
			a.log.Info("Kata share unpinned")
		}
	}
	a.publish()
}

func (a *Autopilot) publish() {
	// Reloads and refreshes publish from two goroutines: one at a time, so
	// the gauges end on the latest view.
	a.publishMu.Lock()
	defer a.publishMu.Unlock()
	pct, _, ok := a.percent(a.deps.Rules.Current())
	if !ok {
		a.m.Percent.Set(-1)
		a.m.Paused.Set(0)
		a.m.Pinned.Set(0)
		return
	}
	a.m.Percent.Set(pct)
	snap := a.snap.Load()
	a.m.Paused.Set(b2f(snap != nil && snap.Paused != ""))
	a.m.Pinned.Set(b2f(snap != nil && snap.Pin != nil))
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// Run rereads the shared state every Refresh until ctx is done, on every
// replica, so all route with the same share within Refresh of a change
// (the first read is the caller's Load, before taking jobs).
// (Redis has nothing to watch a key with that every deployment enables;
// one HMGET per Refresh per replica is the cost.) A failed read keeps the
// last share read: falling back to the floor would move promoted jobs back
// to hyperd for the length of a Redis blip.
func (a *Autopilot) Run(ctx context.Context) {
	t := time.NewTicker(a.opts.Refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if a.current().Enabled {
			_ = a.Load(ctx)
		}
	}
}

// Lead evaluates every Interval while ctx lasts (one leadership term). A
// new term starts an empty window: the previous leader's starts are gone
// with it, so its first decision comes a full Interval after the term
// began (or after the last decision, if later).
func (a *Autopilot) Lead(ctx context.Context) {
	a.leadMu.Lock()
	defer a.leadMu.Unlock()
	if a.deps.Window == nil {
		return
	}
	a.deps.Window.Reset(time.Now())
	breakers := map[string]bool{} // breakers not closed during the window
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var retryAt time.Time // after a failed evaluation
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		s := a.current()
		if !s.Enabled {
			a.deps.Window.Reset(time.Now())
			clear(breakers)
			continue
		}
		for _, b := range a.deps.Breakers {
			if b.State() != breaker.StateClosed {
				breakers[b.Name()] = true
			}
		}
		if !a.due(s) || time.Now().Before(retryAt) {
			continue
		}
		decided, err := a.evaluate(ctx, s, breakers)
		if err != nil {
			if ctx.Err() == nil {
				a.log.Warn("autopilot evaluation failed; retrying in 10s", zap.Error(err))
			}
			retryAt = time.Now().Add(evaluateRetry)
			continue
		}
		if decided {
			clear(breakers)
		}
	}
}

// due says whether a decision is due: a full Interval since the last one
// and since the window opened (a term's start, or the autopilot being
// switched on, opens it).
func (a *Autopilot) due(s Settings) bool {
	last := a.deps.Window.From()
	if snap := a.snap.Load(); snap != nil && snap.State.EvaluatedAt.After(last) {
		last = snap.State.EvaluatedAt
	}
	return time.Since(last) >= s.Interval
}

// evaluateRetry spaces evaluations that failed (Redis unreachable).
const evaluateRetry = 10 * time.Second

// evaluate takes one decision on the window so far and commits it;
// decided is false when, read afresh, no decision was due after all.
func (a *Autopilot) evaluate(ctx context.Context, s Settings, breakers map[string]bool) (decided bool, err error) {
	base := a.deps.Rules.Current()
	floor := base.KataPercent()
	if !base.Weighted {
		a.deps.Window.Reset(time.Now())
		return false, errors.New("no weighted rule (executor.k8s.weightage unset): nothing to steer")
	}
	// Read fresh: the fence must be the seq just read, a pause or pin set a
	// second ago counts, and another leader may have just decided.
	if err := a.Load(ctx); err != nil {
		return false, err
	}
	if !a.due(s) {
		return false, nil
	}
	snap := *a.snap.Load()
	now := time.Now()
	figures, restore := a.deps.Window.cut(now)
	in := Input{Settings: s, Floor: floor, State: snap.State, Figures: figures,
		Paused: snap.Paused, Pin: snap.Pin, Now: now}
	for _, b := range a.deps.Breakers {
		if breakers[b.Name()] || b.State() != breaker.StateClosed {
			in.Breakers = append(in.Breakers, b.Name())
		}
	}
	d, next := Decide(in)
	d.Leader = a.opts.Identity
	next.Last.Leader = d.Leader
	if err := a.commit(ctx, snap.State.Seq, next, d); err != nil {
		if !errors.Is(err, ErrConflict) {
			// Not written: the next try decides on this window too.
			restore()
		}
		// On a conflict another leader decided, on its own window.
		return false, err
	}
	next.Seq = snap.State.Seq + 1
	snap.State = next
	a.adopt(snap)
	a.m.observe(d)
	fields := []zap.Field{zap.String("outcome", string(d.Outcome)), zap.String("reason", string(d.Reason)),
		zap.Float64("from_percent", d.From), zap.Float64("to_percent", d.To),
		zap.Int("kata_builds", d.Figures.Kata.Builds), zap.Int("hyperd_builds", d.Figures.Hyperd.Builds),
		zap.String("detail", d.Detail)}
	switch d.Outcome {
	case StepBack:
		a.log.Warn("autopilot stepped back", fields...)
	case Promote:
		a.log.Info("autopilot promoted Kata", fields...)
	default:
		if d.Reason == ReasonRegressionAtFloor {
			a.log.Warn("autopilot found a regression at the floor", fields...)
		} else {
			a.log.Info("autopilot holds", fields...)
		}
	}
	return true, nil
}

// commit writes d. A commit whose answer was lost (a timeout, a failover)
// may still have been applied: the state is read back, and a state that
// holds this very decision counts as committed.
func (a *Autopilot) commit(ctx context.Context, readSeq int64, next State, d Decision) error {
	err := a.deps.Store.Commit(ctx, readSeq, next, d)
	if err == nil || errors.Is(err, ErrConflict) {
		return err
	}
	snap, lerr := a.deps.Store.Load(ctx)
	if lerr == nil && snap.State.Seq == readSeq+1 && snap.State.Last != nil &&
		snap.State.Last.At.Equal(d.At) && snap.State.Last.Leader == d.Leader {
		return nil
	}
	return err
}
