package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/autopilot"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// feedBuilds pushes one start job every period until ctx ends, each its
// own build and job (ids from first up), so every start draws its bucket.
func feedBuilds(ctx context.Context, t *testing.T, push func(id int64) error, first int64, period time.Duration) *sync.WaitGroup {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(period)
		defer tick.Stop()
		for id := first; ; id++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if err := push(id); err != nil && ctx.Err() == nil {
				t.Errorf("pushing build %d: %v", id, err)
				return
			}
		}
	}()
	return &wg
}

// kataShareDrawnAt is the share of weighted build pods (build id from
// fromID on) drawn at a Kata weight of bp basis points that went to Kata,
// and how many there were: each pod records the weight it was drawn with.
func kataShareDrawnAt(t *testing.T, kube kubernetes.Interface, ns string, bp int, fromID int64) (float64, int) {
	t.Helper()
	l, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	kata, n := 0, 0
	for _, p := range l.Items {
		id, err := strconv.ParseInt(p.Labels[executor.LabelBuild], 10, 64)
		if err != nil || id < fromID || p.Annotations[executor.AnnotationRule] != "weighted" ||
			p.Annotations[executor.AnnotationWeight] != strconv.Itoa(bp) {
			continue
		}
		n++
		if p.Labels[executor.LabelRuntime] == "kata" {
			kata++
		}
	}
	if n == 0 {
		return 0, 0
	}
	return float64(kata) / float64(n), n
}

// The autopilot on the dev cluster, intervals compressed to seconds:
// healthy Kata pods → the Kata share of new builds rises rung by rung; the
// leader SIGKILLed mid-rollout → the next leader goes on from the same
// percentage with the same history; replicas restarted with Kata pods that
// segfault at start (exit 139, through the Kata path's pod annotations) →
// the restart keeps the share, then the autopilot steps back, and after a
// second regression returns to the floor, and the share of new builds on
// Kata falls with it.
func TestAutopilot_PromotesWhileHealthyStepsBackOnRegressionAcrossLeaders(t *testing.T) {
	t.Parallel()
	rdb, rns, prefix := testbed.Redis(t)
	kube, ns := testbed.Kube(t)
	ci := testbed.FakeCIAPI(t)
	store := autopilot.NewStore(rdb, rns, 3*time.Second)
	ctx := context.Background()
	env := daemonEnv(rns, prefix, ns, ci.URL(), map[string]string{
		"WEIGHT_K8S": "20", // the floor
		// Running pods count once past this window (a start that lasts).
		"VERIFY_EXIT139_WINDOW":                    "1s",
		"ROUTING_AUTOPILOT_ENABLED":                "true",
		"ROUTING_AUTOPILOT_STEP":                   "20",
		"ROUTING_AUTOPILOT_INTERVAL":               "5s",
		"ROUTING_AUTOPILOT_MAX_PERCENT":            "80",
		"ROUTING_AUTOPILOT_MIN_BUILDS":             "4",
		"ROUTING_AUTOPILOT_MAX_FAILURE_RATE_DELTA": "0.1",
		"SUPERVISOR_LEASE_DURATION":                "3s",
		"SUPERVISOR_RENEW_DEADLINE":                "2s",
		"SUPERVISOR_RETRY_PERIOD":                  "500ms",
		"QUEUE_LEASE_DURATION":                     "3s",
		"QUEUE_RECOVER_INTERVAL":                   "1s",
	})
	// Each build its own image: a Kata failure on two nodes would make an
	// image a learned exclusion, and its builds would leave the draw.
	push := func(id int64) error {
		job := fmt.Sprintf(`{"class":"start","queue":"%sbuilds","args":[{"buildId":%d,"jobId":%d,"container":"registry.example/app-%d:1","apiUri":%q,"token":"jwt-%d","pipeline":{"id":7}}]}`,
			prefix, id, id+500000, id, ci.URL(), id)
		return rdb.RPush(ctx, rns+":queue:"+prefix+"builds", job).Err()
	}
	state := func() autopilot.State {
		s, err := store.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return s.State
	}
	history := func() []autopilot.Decision {
		h, err := store.History(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	logHistory := func() {
		for _, d := range history() {
			t.Logf("%s %s [by %s]", d.At.Format("15:04:05"), d, d.Leader)
		}
	}
	defer func() {
		if t.Failed() {
			logHistory()
		}
	}()

	// Phase 1: healthy. Two replicas; 8 builds a second.
	a := startDaemon(t, "a", env)
	b := startDaemon(t, "b", env)
	feedCtx, stopFeed := context.WithCancel(ctx)
	feeding := feedBuilds(feedCtx, t, push, 1, 125*time.Millisecond)
	testbed.Eventually(t, 60*time.Second, "two promotions (20% → 40% → 60%)", func() bool { return state().Percent >= 60 })

	// The leader is SIGKILLed: the other replica goes on from its state.
	leader := a
	if strings.HasSuffix(leaseHolder(t, kube, ns), b.identity()) {
		leader = b
	}
	before := state()
	beforeHist := len(history())
	if err := leader.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = leader.cmd.Wait()
	testbed.Eventually(t, 60*time.Second, "the next leader decides", func() bool { return len(history()) > beforeHist })
	after := history()
	next := after[beforeHist]
	if next.From != before.Percent || after[beforeHist-1].To != before.Percent {
		t.Fatalf("the next leader started from %v%%, the killed one had left %v%%", next.From, before.Percent)
	}
	if next.Leader == after[beforeHist-1].Leader || next.Leader == "" {
		t.Fatalf("decisions before and after the kill were both taken by %q", next.Leader)
	}
	if state().Seq <= before.Seq {
		t.Fatalf("seq went from %d to %d", before.Seq, state().Seq)
	}
	testbed.Eventually(t, 60*time.Second, "the maximum (80%)", func() bool { return state().Percent == 80 })
	testbed.Eventually(t, 30*time.Second, "builds drawn at 80%", func() bool {
		_, n := kataShareDrawnAt(t, kube, ns, 8000, 1)
		return n >= 30
	})
	stopFeed()
	feeding.Wait()

	// The share of new builds on Kata rose with the percentage: the pods
	// record the weight they were drawn with.
	early, nEarly := kataShareDrawnAt(t, kube, ns, 2000, 1)
	late, nLate := kataShareDrawnAt(t, kube, ns, 8000, 1)
	t.Logf("Kata share: %.2f of %d builds at 20%%, %.2f of %d builds at 80%%", early, nEarly, late, nLate)
	if nEarly < 10 || nLate < 10 || late <= early+0.2 {
		t.Fatalf("Kata share at 20%%: %.2f (%d builds); at 80%%: %.2f (%d builds): it did not rise", early, nEarly, late, nLate)
	}

	// Phase 2: Kata pods now segfault at start. The surviving replica
	// stops; a new one with the failing Kata path starts from 80%.
	survivor := a
	if leader == a {
		survivor = b
	}
	_ = survivor.cmd.Process.Signal(syscall.SIGTERM)
	_ = survivor.cmd.Wait()
	failing := withEnv(env, map[string]string{"K8S_ANNOTATIONS": `{"kwok.queue-worker.test/exit-code":"139"}`})
	if p := state().Percent; p != 80 {
		t.Fatalf("the share before the restart is %v%%, want 80%%", p)
	}
	stepHist := len(history())
	startDaemon(t, "c", failing)
	feedCtx, stopFeed = context.WithCancel(ctx)
	feeding = feedBuilds(feedCtx, t, push, 100000, 125*time.Millisecond)
	defer func() { stopFeed(); feeding.Wait() }()
	// A restart never resets the rollout: the new replica draws at 80%.
	testbed.Eventually(t, 30*time.Second, "the restarted replica draws at 80%", func() bool {
		_, n := kataShareDrawnAt(t, kube, ns, 8000, 100000)
		return n > 0
	})
	testbed.Eventually(t, 60*time.Second, "a step back after the restart", func() bool { return state().Percent < 80 })
	h := history()[stepHist:]
	first := h[0]
	for _, d := range h {
		if d.Outcome == autopilot.StepBack {
			first = d
			break
		}
	}
	if first.Outcome != autopilot.StepBack || first.Reason != autopilot.ReasonRegression || first.From != 80 || first.To != 60 {
		t.Fatalf("first step back: %s (from the restart on: %v)", first, h)
	}
	if first.Figures.Kata.RuntimeFailures == 0 {
		t.Fatalf("the step back shows no Kata runtime failure: %+v", first.Figures)
	}
	testbed.Eventually(t, 60*time.Second, "back to the floor after a second regression", func() bool { return state().Percent == 20 })
	h = history()[stepHist:]
	if d := h[len(h)-1]; d.Outcome != autopilot.StepBack || d.Reason != autopilot.ReasonRegressionTwice {
		t.Fatalf("the return to the floor: %s", d)
	}
	// Builds drawn at the floor again go to Kata about a fifth of the time.
	testbed.Eventually(t, 30*time.Second, "builds drawn at the floor", func() bool {
		_, n := kataShareDrawnAt(t, kube, ns, 2000, 100000)
		return n >= 20
	})
	floorShare, n := kataShareDrawnAt(t, kube, ns, 2000, 100000)
	t.Logf("Kata share after the return to the floor: %.2f of %d builds", floorShare, n)
	if floorShare >= late-0.2 {
		t.Fatalf("Kata share after the steps back %.2f, at 80%% it was %.2f: it did not fall", floorShare, late)
	}
	logHistory()
}
