package autopilot

import (
	"math"
	"slices"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"

	"github.com/sdkata/queue-worker/internal/supervisor"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// maxWindowPods bounds a window's memory (about 100 bytes a pod): past it,
// further starts are not counted until the next window.
const maxWindowPods = 500_000

// Window collects the start outcomes the supervisor sees during one
// evaluation period. Only weighted builds count: they are drawn by bucket,
// so Kata's and hyperd's are the same population and differ only by
// runtime (excluded images, which go to hyperd because they fail on Kata,
// would bias hyperd's side).
type Window struct {
	mu   sync.Mutex
	from time.Time
	pods map[types.UID]sample
}

type sample struct {
	rt             weightage.Runtime
	failed         bool
	runtimeFailure bool
	setup          time.Duration
	setupKnown     bool
}

// NewWindow returns an empty window opened at from.
func NewWindow(from time.Time) *Window {
	return &Window{from: from, pods: map[types.UID]sample{}}
}

var _ supervisor.StartObserver = (*Window)(nil)

// ObserveStart counts one pod's start; a pod seen again (a retried sync)
// replaces its earlier sample.
func (w *Window) ObserveStart(o supervisor.StartOutcome) {
	if o.Rule != weightage.RuleWeighted || (o.Runtime != weightage.Kata && o.Runtime != weightage.Hyperd) {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, seen := w.pods[o.Pod]; !seen && len(w.pods) >= maxWindowPods {
		return
	}
	w.pods[o.Pod] = sample{rt: o.Runtime, failed: o.Failed,
		runtimeFailure: o.Failed && o.Class == supervisor.ClassRuntime, setup: o.Setup, setupKnown: o.SetupKnown}
}

// From is when the window opened.
func (w *Window) From() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.from
}

// Cut closes the window at now, returning its figures, and opens the next.
func (w *Window) Cut(now time.Time) Figures {
	f, _ := w.cut(now)
	return f
}

// cut is Cut with a way back: restore returns the closed window's starts
// to the open one (for a decision that could not be committed), keeping
// any start seen since as it is now.
func (w *Window) cut(now time.Time) (f Figures, restore func()) {
	w.mu.Lock()
	pods, from := w.pods, w.from
	w.pods, w.from = make(map[types.UID]sample, len(pods)), now
	w.mu.Unlock()
	restore = func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		for uid, s := range pods {
			if _, seen := w.pods[uid]; !seen {
				w.pods[uid] = s
			}
		}
		if from.Before(w.from) {
			w.from = from
		}
	}
	return figuresOf(pods, from, now), restore
}

func figuresOf(pods map[types.UID]sample, from, now time.Time) Figures {
	f := Figures{From: from, To: now}
	setups := map[weightage.Runtime][]time.Duration{}
	for _, s := range pods {
		rf := &f.Hyperd
		if s.rt == weightage.Kata {
			rf = &f.Kata
		}
		rf.Builds++
		switch {
		case s.failed:
			rf.Failures++
			if s.runtimeFailure {
				rf.RuntimeFailures++
			}
		case s.setupKnown:
			setups[s.rt] = append(setups[s.rt], s.setup)
		}
	}
	f.Kata.SetupP90Seconds, f.Kata.SetupSamples = p90(setups[weightage.Kata]), len(setups[weightage.Kata])
	f.Hyperd.SetupP90Seconds, f.Hyperd.SetupSamples = p90(setups[weightage.Hyperd]), len(setups[weightage.Hyperd])
	return f
}

// Reset empties the window and opens it at now (a new leadership term:
// the starts the previous leader saw are not here to count).
func (w *Window) Reset(now time.Time) { _ = w.Cut(now) }

// p90 is the nearest-rank 90th percentile, in seconds.
func p90(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	slices.Sort(d)
	i := int(math.Ceil(0.9*float64(len(d)))) - 1
	return d[max(i, 0)].Seconds()
}
