package main

// The autopilot scene of `make demo`: a worker with the autopilot on and
// its interval compressed to seconds, fed builds at a steady rate. While
// Kata pods start as well as hyperd ones, the leader promotes the Kata
// share step by step up to the maximum; the worker is then restarted with
// Kata pods that segfault at start, keeps the share it had, and the leader
// steps back to the floor. Every decision is read from the autopilot's
// history in Redis and printed as it lands, with the share of new builds
// that the percentage before it actually sent to Kata (from the pods).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/autopilot"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/weightage"
)

// failingKata makes every Kata pod end with exit code 139 at start (the
// dev cluster's kwok stages read it), through the Kata path's annotations.
const failingKata = `K8S_ANNOTATIONS={"kwok.queue-worker.test/exit-code":"139"}`

type sceneOptions struct {
	redisAddr, ciAddr string
	workerBin, logDir string
	rate              float64
	timeout           time.Duration
}

// apEnv is the worker's configuration the scene depends on, read from the
// environment the worker is started with (one source for both).
type apEnv struct {
	resqueNS, prefix, kubeNS, port string
	floor, maxPercent              float64
	interval                       time.Duration
}

func readAPEnv() (apEnv, error) {
	e := apEnv{resqueNS: os.Getenv("REDIS_RESQUE_NAMESPACE"), prefix: os.Getenv("REDIS_QUEUE_PREFIX"),
		kubeNS: os.Getenv("K8S_JOBS_NAMESPACE"), port: os.Getenv("PORT")}
	var err error
	if e.resqueNS == "" || e.resqueNS == "resque" || e.kubeNS == "" || e.port == "" {
		return e, errors.New("the autopilot scene needs the worker's REDIS_RESQUE_NAMESPACE (its own, not resque: the scene clears it), K8S_JOBS_NAMESPACE and PORT in its environment")
	}
	if os.Getenv("ROUTING_AUTOPILOT_ENABLED") != "true" {
		return e, errors.New("ROUTING_AUTOPILOT_ENABLED=true is missing from the environment")
	}
	if e.floor, err = strconv.ParseFloat(os.Getenv("WEIGHT_K8S"), 64); err != nil {
		return e, fmt.Errorf("WEIGHT_K8S: %w", err)
	}
	if e.maxPercent, err = strconv.ParseFloat(os.Getenv("ROUTING_AUTOPILOT_MAX_PERCENT"), 64); err != nil {
		return e, fmt.Errorf("ROUTING_AUTOPILOT_MAX_PERCENT: %w", err)
	}
	if e.interval, err = time.ParseDuration(os.Getenv("ROUTING_AUTOPILOT_INTERVAL")); err != nil {
		return e, fmt.Errorf("ROUTING_AUTOPILOT_INTERVAL: %w", err)
	}
	return e, nil
}

func runAutopilotScene(ctx context.Context, o sceneOptions) (err error) {
	env, err := readAPEnv()
	if err != nil {
		return err
	}
	rdb, kube, err := clients(o.redisAddr)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if err := resetScene(ctx, rdb, kube, env); err != nil {
		return err
	}
	// Last: the worker is stopped by then (deferred after this).
	defer cleanupScene(rdb, kube, env)

	ci, err := startCIAPI(o.ciAddr)
	if err != nil {
		return err
	}
	defer ci.srv.Close()

	store := autopilot.NewStore(rdb, env.resqueNS, 3*time.Second)
	tr := newTracker()
	trCtx, stopTracker := context.WithCancel(ctx)
	defer stopTracker()
	go tr.run(trCtx, kube, env.kubeNS)
	base := time.Now().Unix() % 1_000_000 * 10_000
	q := producer{rdb: rdb, ns: env.resqueNS, prefix: env.prefix, apiURI: "http://" + o.ciAddr + "/", eventID: base}
	out := &decisionPrinter{store: store, tr: tr, start: time.Now()}

	fmt.Printf("\n== Autopilot rollout (decisions every %s instead of 10m): Kata's share of weighted builds rises %g%% → %g%% while Kata starts as well as hyperd, and falls back when Kata starts fail\n",
		env.interval, env.floor, env.maxPercent)
	fmt.Printf("   worker env: WEIGHT_K8S=%s (the floor) ROUTING_AUTOPILOT_STEP=%s _INTERVAL=%s _MAX_PERCENT=%s _MIN_BUILDS=%s _MAX_FAILURE_RATE_DELTA=%s; %.0f builds/s, each its own image\n",
		os.Getenv("WEIGHT_K8S"), os.Getenv("ROUTING_AUTOPILOT_STEP"), os.Getenv("ROUTING_AUTOPILOT_INTERVAL"), os.Getenv("ROUTING_AUTOPILOT_MAX_PERCENT"),
		os.Getenv("ROUTING_AUTOPILOT_MIN_BUILDS"), os.Getenv("ROUTING_AUTOPILOT_MAX_FAILURE_RATE_DELTA"), o.rate)

	// Part 1: healthy Kata pods, up to the maximum.
	w, err := startWorker(ctx, o.workerBin, filepath.Join(o.logDir, "autopilot-worker.log"), env.port)
	if err != nil {
		return err
	}
	defer func() {
		if w == nil { // the restart failed (startWorker showed its log)
			return
		}
		if err != nil {
			w.printTail(os.Stderr, 30)
		}
		_ = w.stop()
	}()
	fmt.Printf("-- 1. healthy Kata pods (worker pid %d); with each decision, how many new builds drawn at its old percentage went to Kata\n", w.cmd.Process.Pid)
	out.phase(base, "")
	fmt.Println(out.header())
	f := startFeeder(ctx, q, base, o.rate)
	deadline := time.Now().Add(o.timeout)
	err = out.until(ctx, deadline, w, func(s autopilot.State, d *autopilot.Decision) bool {
		// One decision at the maximum, to show the share it draws.
		return d != nil && d.From == env.maxPercent
	}, fmt.Sprintf("the rollout to %g%%", env.maxPercent))
	if ferr := f.stop(); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}

	// Part 2: restart with failing Kata pods; back to the floor.
	snap, err := store.Load(ctx)
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := w.stop(); err != nil {
		return fmt.Errorf("stopping the worker: %w", err)
	}
	fmt.Printf("-- 2. the worker is stopped (SIGTERM, exited in %.1fs) and restarted with Kata pods that exit 139 at start (%s)\n",
		time.Since(t0).Seconds(), failingKata)
	fmt.Printf("   the autopilot's state in Redis (%s): %g%% (seq %d)\n", autopilot.Key(env.resqueNS), snap.State.Percent, snap.State.Seq)
	w, err = startWorker(ctx, o.workerBin, filepath.Join(o.logDir, "autopilot-worker-restarted.log"), env.port, failingKata)
	if err != nil {
		return err
	}
	base2 := base + 5000
	out.phase(base2, "restarted ")
	f = startFeeder(ctx, q, base2, o.rate)
	defer func() { _ = f.stop() }()
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	err = waitFor(wctx, "the restarted worker's first weighted builds", func() (bool, error) {
		return tr.weightedSince(base2) >= 8, w.exitErr()
	})
	cancel()
	if err != nil {
		return err
	}
	fmt.Printf("   the restart kept the share: the restarted worker (pid %d) drew its first builds at %s\n", w.cmd.Process.Pid, tr.drawnAt(base2))
	fmt.Println(out.header())
	deadline = time.Now().Add(o.timeout)
	err = out.until(ctx, deadline, w, func(s autopilot.State, d *autopilot.Decision) bool {
		// At the floor, and one decision there to show the share it draws.
		return d != nil && d.From == env.floor && s.Percent == env.floor
	}, fmt.Sprintf("the step back to the floor (%g%%)", env.floor))
	if ferr := f.stop(); err == nil {
		err = ferr
	}
	if err != nil {
		return err
	}
	if err := w.stop(); err != nil {
		return fmt.Errorf("stopping the worker: %w", err)
	}
	fmt.Printf("   %d builds in %.0fs; worker stopped\n", tr.total(base), time.Since(out.start).Seconds())
	return nil
}

// resetScene clears what an earlier run left: the scene's resque namespace
// (queue, autopilot state and history), its build configs, and its pods.
func resetScene(ctx context.Context, rdb *redis.Client, kube kubernetes.Interface, env apEnv) error {
	var keys []string
	iter := rdb.Scan(ctx, 0, env.resqueNS+":*", 500).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("listing the scene's Redis keys: %w", err)
	}
	keys = append(keys, env.prefix+"buildConfigs")
	if err := rdb.Del(ctx, keys...).Err(); err != nil {
		return fmt.Errorf("clearing the scene's Redis keys: %w", err)
	}
	_, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: env.kubeNS}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", env.kubeNS, err)
	}
	if err := deleteScenePods(ctx, kube, env.kubeNS); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return waitFor(wctx, "the previous run's pods to go", func() (bool, error) {
		l, err := kube.CoreV1().Pods(env.kubeNS).List(wctx, metav1.ListOptions{LabelSelector: executor.LabelManaged + "=queue-worker"})
		return err == nil && len(l.Items) == 0, err
	})
}

func deleteScenePods(ctx context.Context, kube kubernetes.Interface, ns string) error {
	sel := metav1.ListOptions{LabelSelector: executor.LabelManaged + "=queue-worker"}
	if err := kube.CoreV1().Pods(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		return fmt.Errorf("deleting the scene's pods: %w", err)
	}
	return nil
}

// cleanupScene deletes the builds' pods and configs; the autopilot's state
// and history stay for `queue-worker autopilot status`.
func cleanupScene(rdb *redis.Client, kube kubernetes.Interface, env apEnv) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := deleteScenePods(ctx, kube, env.kubeNS); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
	}
	_ = rdb.Del(ctx, env.prefix+"buildConfigs").Err()
}

// worker is a queue-worker process the scene started.
type worker struct {
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	waitErr error
}

func startWorker(ctx context.Context, bin, logPath, port string, extraEnv ...string) (*worker, error) {
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, "run")
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = nil, logf, logf
	// Should the demo die without stopping it, the worker gets SIGTERM.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	w := &worker{cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		w.waitErr = cmd.Wait()
		logf.Close()
		close(w.done)
	}()
	ready := "http://127.0.0.1:" + port + "/readyz"
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		if w.exited() {
			w.printTail(os.Stderr, 30)
			return nil, fmt.Errorf("the worker exited at start: %v", w.waitErr)
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, ready, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return w, nil
			}
		}
		if ctx.Err() != nil || time.Since(start) > 30*time.Second {
			w.printTail(os.Stderr, 30)
			_ = w.stop()
			return nil, fmt.Errorf("the worker was not ready on %s within 30s", ready)
		}
	}
}

// exitErr is an error once the worker has exited.
func (w *worker) exitErr() error {
	if w.exited() {
		return fmt.Errorf("the worker exited: %v", w.waitErr)
	}
	return nil
}

func (w *worker) exited() bool {
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM and waits (SIGKILL after 30s); it returns the exit
// error of a worker that did not exit 0.
func (w *worker) stop() error {
	if !w.exited() {
		_ = w.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-w.done:
		case <-time.After(30 * time.Second):
			_ = w.cmd.Process.Kill()
			<-w.done
			return errors.New("the worker did not exit within 30s of SIGTERM; killed")
		}
	}
	return w.waitErr
}

// printTail shows the worker's last log lines about leadership and the
// autopilot, its last warnings and errors, then the log's last n lines.
func (w *worker) printTail(dst *os.File, n int) {
	b, err := os.ReadFile(w.logPath)
	if err != nil {
		return
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	var notable [][]byte
	for _, l := range lines {
		if bytes.Contains(l, []byte("autopilot")) || bytes.Contains(l, []byte("leader")) ||
			bytes.Contains(l, []byte("\tWARN\t")) || bytes.Contains(l, []byte("\tERROR\t")) {
			notable = append(notable, l)
		}
	}
	last := func(ls [][]byte, k int) [][]byte { return ls[max(len(ls)-k, 0):] }
	fmt.Fprintf(dst, "--- worker log %s: leadership, autopilot, warnings, errors (last 10) ---\n%s\n", w.logPath, bytes.Join(last(notable, 10), []byte("\n")))
	fmt.Fprintf(dst, "--- worker log %s: last %d lines ---\n%s\n", w.logPath, n, bytes.Join(last(lines, n), []byte("\n")))
}

// feeder enqueues one build every 1/rate seconds, each its own job and
// image: a Kata failure on two nodes makes an image a learned exclusion,
// and its builds would leave the weighted draw.
type feeder struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

func startFeeder(ctx context.Context, q producer, first int64, rate float64) *feeder {
	ctx, cancel := context.WithCancel(ctx)
	f := &feeder{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		tick := time.NewTicker(time.Duration(float64(time.Second) / rate))
		defer tick.Stop()
		for id := first; ; id++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			b := demoBuild{id: id, image: fmt.Sprintf("registry.example/app-%d:1", id)}
			if err := q.start(ctx, b, id); err != nil {
				if ctx.Err() == nil {
					f.err = err
				}
				return
			}
		}
	}()
	return f
}

func (f *feeder) stop() error {
	f.cancel()
	<-f.done
	return f.err
}

// tracker records, from a watch on the pods, where each weighted build was
// drawn (the weight and runtime on its first pod) and whether it fell back
// to hyperd (a Kata pod that failed is deleted; its relaunch stays).
type tracker struct {
	mu     sync.Mutex
	builds map[int64]*drawnBuild
}

type drawnBuild struct {
	bp       int
	kata     bool
	weighted bool
	fellBack bool
}

func newTracker() *tracker { return &tracker{builds: map[int64]*drawnBuild{}} }

func (t *tracker) run(ctx context.Context, kube kubernetes.Interface, ns string) {
	sel := executor.LabelManaged + "=queue-worker"
	for ctx.Err() == nil {
		l, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
		if err != nil {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		for i := range l.Items {
			t.see(&l.Items[i])
		}
		w, err := kube.CoreV1().Pods(ns).Watch(ctx, metav1.ListOptions{LabelSelector: sel, ResourceVersion: l.ResourceVersion})
		if err != nil {
			time.Sleep(500 * time.Millisecond)
			continue
		}
		for ev := range w.ResultChan() {
			if p, ok := ev.Object.(*corev1.Pod); ok && (ev.Type == watch.Added || ev.Type == watch.Modified) {
				t.see(p)
			}
		}
		w.Stop()
	}
}

func (t *tracker) see(p *corev1.Pod) {
	label := p.Labels[executor.LabelBuild]
	id, err := strconv.ParseInt(strings.TrimLeft(label, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_-."), 10, 64)
	if err != nil {
		return
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	b := t.builds[id]
	if b == nil {
		b = &drawnBuild{}
		t.builds[id] = b
	}
	switch weightage.Rule(p.Annotations[executor.AnnotationRule]) {
	case weightage.RuleWeighted:
		if !b.weighted {
			b.weighted = true
			b.bp, _ = strconv.Atoi(p.Annotations[executor.AnnotationWeight])
			b.kata = p.Labels[executor.LabelRuntime] == string(weightage.Kata)
		}
	case weightage.RuleFallback:
		b.fellBack = true
	}
}

// share is how the weighted builds from id first on drawn at pct went.
func (t *tracker) share(first int64, pct float64) (kata, n, fellBack int) {
	bp := int(pct*100 + 0.5)
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, b := range t.builds {
		if id < first || !b.weighted || b.bp != bp {
			continue
		}
		n++
		if b.kata {
			kata++
		}
		if b.fellBack {
			fellBack++
		}
	}
	return kata, n, fellBack
}

func (t *tracker) weightedSince(first int64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for id, b := range t.builds {
		if id >= first && b.weighted {
			n++
		}
	}
	return n
}

func (t *tracker) total(first int64) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for id := range t.builds {
		if id >= first {
			n++
		}
	}
	return n
}

// drawnAt lists the weights the builds from first on were drawn at.
func (t *tracker) drawnAt(first int64) string {
	t.mu.Lock()
	count := map[int]int{}
	for id, b := range t.builds {
		if id >= first && b.weighted {
			count[b.bp]++
		}
	}
	t.mu.Unlock()
	var bps []int
	for bp := range count {
		bps = append(bps, bp)
	}
	sort.Ints(bps)
	var parts []string
	for _, bp := range bps {
		parts = append(parts, fmt.Sprintf("%g%% (%d builds)", float64(bp)/100, count[bp]))
	}
	return strings.Join(parts, ", ")
}

// decisionPrinter prints the autopilot's decisions as they land.
type decisionPrinter struct {
	store *autopilot.Store
	tr    *tracker
	start time.Time
	seen  int
	// first is the first build id of the current part; who names its worker.
	first int64
	who   string
}

func (p *decisionPrinter) phase(first int64, who string) { p.first, p.who = first, who }

const decisionFormat = "   %-14s %-20s %-34s %s\n"

func (p *decisionPrinter) header() string {
	return strings.TrimRight(fmt.Sprintf(decisionFormat, "TIME", "DECISION", "KATA SHARE OF NEW BUILDS", "WHY"), "\n")
}

// until prints new decisions every 250ms until done holds for the state
// and the latest decision, the deadline passes or the worker exits.
func (p *decisionPrinter) until(ctx context.Context, deadline time.Time, w *worker, done func(autopilot.State, *autopilot.Decision) bool, what string) error {
	for {
		h, err := p.store.History(ctx, 0)
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("interrupted while waiting for %s", what)
			}
			return err
		}
		var last *autopilot.Decision
		for ; p.seen < len(h); p.seen++ {
			d := h[p.seen]
			last = &h[p.seen]
			p.print(d)
		}
		snap, err := p.store.Load(ctx)
		if err != nil {
			return err
		}
		if last != nil && done(snap.State, last) {
			return nil
		}
		switch {
		case ctx.Err() != nil:
			return fmt.Errorf("interrupted while waiting for %s", what)
		case w.exited():
			return fmt.Errorf("the worker exited (%v) before %s", w.waitErr, what)
		case time.Now().After(deadline):
			return fmt.Errorf("%s did not happen in time (the autopilot is at %g%% after %d decisions)", what, snap.State.Percent, len(h))
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (p *decisionPrinter) print(d autopilot.Decision) {
	kata, n, fellBack := p.tr.share(p.first, d.From)
	share := fmt.Sprintf("%d/%d = %.0f%% at %g%%", kata, n, 100*float64(kata)/float64(max(n, 1)), d.From)
	if fellBack > 0 {
		share += fmt.Sprintf(", %d fell back", fellBack)
	}
	when := fmt.Sprintf("%s +%.0fs", d.At.Local().Format("15:04:05"), d.At.Sub(p.start).Seconds())
	what := fmt.Sprintf("%-9s %g%% → %g%%", d.Outcome, d.From, d.To)
	fmt.Printf(decisionFormat, when, what, share, string(d.Reason)+": "+d.Detail)
}
