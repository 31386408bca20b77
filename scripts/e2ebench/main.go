// Command e2ebench drives `make bench-e2e`: queue-worker end to end on the
// dev cluster against a bare client-go loop that creates the same Pod and
// Secret on the same apiserver, in the same run.
//
//	burst     N builds at concurrency C: builds/s of each (runs interleaved,
//	          median of REPS)
//	rate      builds at a fixed rate: the bare loop's create latency vs
//	          queue-worker's enqueue→pod latency (pod seen by a watch)
//	full      M builds held Pending (their runtime's nodes match nothing):
//	          Redis commands/s with and without them, then the burst and the
//	          rate again into the full cluster
//	memory    RSS of an idle daemon, and with P build pods in its cache
//
// It runs its own redis-server (so Redis command counts are only the
// daemon's) and a stand-in CI API that answers 200. The daemon is the real
// binary (bin/queue-worker), configured through env as operators do.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/exclusion"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/testbed/proc"
	"github.com/sdkata/queue-worker/internal/weightage"
	"github.com/sdkata/queue-worker/internal/worker"
	"go.uber.org/zap"
)

type flags struct {
	n, c, reps      int
	rate            int
	bareRate        float64
	rateFor         time.Duration
	held            int
	idleWindow      time.Duration
	memPods         int
	bin, kubeconfig string
	configDir       string
	only            string
	qps             float64
	verbose         bool
	bareWatch       bool
	profileDir      string
}

func main() {
	var f flags
	flag.IntVar(&f.n, "n", 1000, "builds per burst")
	flag.IntVar(&f.c, "c", 8, "concurrency of the bare loop and of queue-worker (WORKER_CONCURRENCY)")
	flag.IntVar(&f.reps, "reps", 3, "burst repetitions per side (median reported)")
	flag.Float64Var(&f.bareRate, "bare-rate", 0, "the bare loop's burst rate, when the burst part is not run (sets the rates of the latency runs)")
	flag.IntVar(&f.rate, "rate", 0, "builds per second of the fixed-rate run (0: a quarter and a half of the bare loop's burst rate measured in this run, else 20)")
	flag.DurationVar(&f.rateFor, "rate-for", 10*time.Second, "length of the fixed-rate run")
	flag.IntVar(&f.held, "held", 2000, "builds held Pending for the full-cluster runs (0: skip)")
	flag.DurationVar(&f.idleWindow, "window", 30*time.Second, "window over which Redis commands/s are counted")
	flag.IntVar(&f.memPods, "mem-pods", 10000, "pods in the daemon's cache for the memory figure (0: skip)")
	flag.StringVar(&f.bin, "bin", "bin/queue-worker", "queue-worker binary")
	flag.StringVar(&f.kubeconfig, "kubeconfig", os.Getenv("KUBECONFIG"), "dev cluster kubeconfig")
	flag.StringVar(&f.configDir, "config-dir", "config", "queue-worker config dir")
	flag.StringVar(&f.only, "only", "", "comma-separated parts to run: burst,rate,full,memory (default all)")
	flag.Float64Var(&f.qps, "qps", 2000, "client QPS of both sides (K8S_CLIENT_QPS)")
	flag.BoolVar(&f.verbose, "v", false, "progress on stderr")
	flag.BoolVar(&f.bareWatch, "bare-watch", false, "diagnosis: the bare loop also runs a pod informer on its namespace")
	flag.StringVar(&f.profileDir, "profile", "", "diagnosis: write an 8s kube-apiserver CPU profile of each burst here")
	flag.Parse()
	if err := run(f); err != nil {
		fmt.Fprintln(os.Stderr, "e2ebench:", err)
		os.Exit(1)
	}
}

func (f flags) wants(part string) bool {
	return f.only == "" || strings.Contains(","+f.only+",", ","+part+",")
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[bench-e2e] "+format+"\n", args...)
}

// bench holds what every part shares.
type bench struct {
	f     flags
	rc    *rest.Config
	kube  kubernetes.Interface
	redis *miniRedis
	ci    *http.Server
	ciURL string
	opts  executor.Options // for the bare loop's pods, from the same config
	seq   atomic.Int64
	// startEnv is added to every daemon's env (the full-cluster runs).
	startEnv map[string]string
	// bareRate is the bare loop's median burst rate on the empty cluster.
	bareRate float64
}

// rates are the fixed rates of the latency runs: -rate, else a quarter and
// a half of what the bare loop sustained here (loads both sides can carry:
// beyond capacity a latency percentile only measures how long the run
// was), else 20/s.
func (b *bench) rates() []int {
	switch {
	case b.f.rate > 0:
		return []int{b.f.rate}
	case b.bareRate > 0:
		return []int{max(1, int(b.bareRate/4)), max(1, int(b.bareRate/2))}
	}
	return []int{20}
}

func run(f flags) error {
	if f.kubeconfig == "" {
		return errors.New("no kubeconfig (run through `make bench-e2e`, which brings the dev cluster up)")
	}
	rc, err := clientcmd.BuildConfigFromFlags("", f.kubeconfig)
	if err != nil {
		return err
	}
	rc.QPS, rc.Burst = float32(f.qps), int(2*f.qps)
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return err
	}
	b := &bench{f: f, rc: rc, kube: kube, bareRate: f.bareRate}
	b.seq.Store(time.Now().Unix() % 100000 * 100000)
	if b.redis, err = startRedis(); err != nil {
		return err
	}
	defer b.redis.stop()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	b.ciURL = "http://" + ln.Addr().String()
	b.ci = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = w.Write([]byte(`{}`))
	})}
	go func() { _ = b.ci.Serve(ln) }()
	defer b.ci.Close()
	cfg, err := config.Load(config.LoadOptions{DefaultsFile: filepath.Join(f.configDir, "default.yaml"), Getenv: func(string) string { return "" }})
	if err != nil {
		return err
	}
	o := cfg.Executor.K8s.Options
	b.opts = executor.Options{Prefix: o.Prefix, LaunchImage: o.LaunchImage, LaunchVersion: o.LaunchVersion, SDHabEnabled: o.SDHabEnabled,
		Kata: o.Kubernetes, Hyperd: cfg.Executor.K8sVM.Options.Kubernetes, Ecosystem: cfg.Ecosystem, Timeout: 30 * time.Second}

	var report []string
	emit := func(s string) {
		fmt.Println(s)
		report = append(report, s)
	}
	emit(fmt.Sprintf("# bench-e2e %s, N=%d C=%d reps=%d rate-for=%s, held=%d, %d CPUs", time.Now().UTC().Format(time.RFC3339), f.n, f.c, f.reps, f.rateFor, f.held, numCPU()))
	if f.wants("burst") {
		if err := b.burstPart(emit, "empty cluster", nil); err != nil {
			return err
		}
	}
	if f.wants("rate") {
		if err := b.ratePart(emit, "empty cluster", nil); err != nil {
			return err
		}
	}
	if f.wants("full") && f.held > 0 {
		if err := b.fullPart(emit); err != nil {
			return err
		}
	}
	if f.wants("memory") && f.memPods > 0 {
		if err := b.memoryPart(emit); err != nil {
			return err
		}
	}
	return nil
}

// ---- the two sides ----------------------------------------------------------

// bareSide is a plain client-go loop: Secret then Pod, the same objects
// queue-worker makes, c goroutines.
type bareSide struct {
	b          *bench
	ns         string
	execOnce   sync.Once
	exec       *executor.Executor
	workerOnce sync.Once
	inproc     func(ctx context.Context, id int64) error
	// held makes its pods hyperd pods whose nodes match nothing (Pending).
	held bool
}

// startInProcess runs the worker's Handle directly (no queue), with the
// daemon's client settings: does the worker path cost more than the loop?
func (s *bareSide) startInProcess() func(ctx context.Context, id int64) error {
	o := s.b.opts
	o.Namespace = s.ns
	rc := rest.CopyConfig(s.b.rc)
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	kube := kubernetes.NewForConfigOrDie(rc)
	exec := executor.New(executor.Deps{Client: kube}, o)
	rdb := s.b.redis.client
	keys := queue.NewKeys("resque")
	pct := 100.0
	rules, _ := weightage.NewRules(weightage.RulesSpec{KataPercent: &pct, Default: weightage.Hyperd})
	holder := weightage.NewHolder(rules)
	w := worker.New(worker.Deps{Executor: exec, Configs: queue.NewBuildConfigs(rdb, "", time.Second),
		Marks: queue.NewStopMarks(rdb, keys, time.Hour, time.Second), Log: zap.NewNop(),
		Router: routing.NewDecider(routing.DeciderDeps{Rules: holder, Learned: exclusion.NewStore(rdb, exclusion.Options{Namespace: "resque", TTL: time.Hour, Timeout: time.Second})})}, worker.Options{})
	return func(ctx context.Context, id int64) error {
		raw := fmt.Sprintf(`{"class":"start","queue":"builds","args":[{"buildId":%d,"jobId":%d,"pipelineId":42,"container":"node:18","apiUri":%q,"token":"jwt-%d","pipeline":{"id":42}}]}`, id, id, s.b.ciURL, id)
		j, err := queue.ParseJob([]byte(raw), "builds")
		if err != nil {
			return err
		}
		if out := w.Handle(ctx, j); out.Err() != nil {
			return out.Err()
		}
		return nil
	}
}

func (s *bareSide) create(ctx context.Context, id int64) error {
	bc := s.b.buildConfig(id, "node:18")
	opts := s.b.opts
	opts.Namespace = s.ns
	d := weightage.Decision{Runtime: weightage.Kata, Rule: weightage.RuleWeighted, Bucket: 1}
	if s.held {
		d = weightage.Decision{Runtime: weightage.Hyperd, Rule: weightage.RuleExcluded, Bucket: -1}
		opts.Hyperd.NodeSelectors = map[string]string{"dedicated": "nowhere"}
	}
	pod := executor.PodSpec(&opts, bc, d, 0)
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: executor.TokenSecretName(pod.Name),
		Labels: map[string]string{executor.LabelBuild: pod.Labels[executor.LabelBuild], executor.LabelManaged: "queue-worker"}},
		StringData: map[string]string{"token": bc.Token}}
	if os.Getenv("BARE_VIA_WORKER") != "" {
		s.workerOnce.Do(func() { s.inproc = s.startInProcess() })
		return s.inproc(ctx, id)
	}
	if os.Getenv("BARE_VIA_EXECUTOR") != "" {
		o := s.b.opts
		o.Namespace = s.ns
		rc := rest.CopyConfig(s.b.rc)
		rc.ContentType = "application/vnd.kubernetes.protobuf"
		rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
		s.execOnce.Do(func() { s.exec = executor.New(executor.Deps{Client: kubernetes.NewForConfigOrDie(rc)}, o) })
		_, err := s.exec.StartWith(ctx, bc, weightage.Decision{Runtime: weightage.Kata, Rule: weightage.RuleWeighted, Bucket: 1}, 0, nil)
		return err
	}
	if os.Getenv("BARE_LIKE_QW") != "" {
		created, err := s.b.kube.CoreV1().Pods(s.ns).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		sec.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: created.UID}}
		_, err = s.b.kube.CoreV1().Secrets(s.ns).Create(ctx, sec, metav1.CreateOptions{})
		return err
	}
	if _, err := s.b.kube.CoreV1().Secrets(s.ns).Create(ctx, sec, metav1.CreateOptions{}); err != nil {
		return err
	}
	_, err := s.b.kube.CoreV1().Pods(s.ns).Create(ctx, pod, metav1.CreateOptions{})
	return err
}

func (s *bareSide) burst(ctx context.Context, n int) (time.Duration, error) {
	ids := make(chan int64, n)
	for range n {
		ids <- s.b.seq.Add(1)
	}
	close(ids)
	start := time.Now()
	var wg sync.WaitGroup
	var firstErr atomic.Value
	for range s.b.f.c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for id := range ids {
				if err := s.create(ctx, id); err != nil {
					firstErr.CompareAndSwap(nil, err)
				}
			}
		}()
	}
	wg.Wait()
	if err, _ := firstErr.Load().(error); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func (s *bareSide) rate(ctx context.Context, r int, d time.Duration) ([]time.Duration, error) {
	var mu sync.Mutex
	var lat []time.Duration
	var firstErr error
	var wg sync.WaitGroup
	tick := time.NewTicker(time.Second / time.Duration(r))
	defer tick.Stop()
	end := time.Now().Add(d)
	for now := range tick.C {
		if now.After(end) {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			start := time.Now()
			err := s.create(ctx, s.b.seq.Add(1))
			mu.Lock()
			defer mu.Unlock()
			if err != nil && firstErr == nil {
				firstErr = err
			}
			lat = append(lat, time.Since(start))
		}()
	}
	wg.Wait()
	return lat, firstErr
}

// workerSide is queue-worker: builds are enqueued as inline start jobs; a
// build is done when its pod exists (seen by a watch) or its job is acked.
type workerSide struct {
	b  *bench
	ns string
	d  *daemonProc
	// prefix and resque namespace of this daemon's queue
	prefix     string
	inprocStop func()
}

// runInProcess runs a consumer + worker in this process on the same queue
// (diagnosis: is the daemon process the difference?).
func (s *workerSide) runInProcess() func() {
	s.d.stop() // the daemon must not compete for the queue
	o := s.b.opts
	o.Namespace = s.ns
	rc := rest.CopyConfig(s.b.rc)
	rc.ContentType = "application/vnd.kubernetes.protobuf"
	rc.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	exec := executor.New(executor.Deps{Client: kubernetes.NewForConfigOrDie(rc)}, o)
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:" + strconv.Itoa(s.b.redis.port), PoolSize: 32})
	keys := queue.NewKeys("resque")
	pct := 100.0
	rules, _ := weightage.NewRules(weightage.RulesSpec{KataPercent: &pct, Default: weightage.Hyperd})
	w := worker.New(worker.Deps{Executor: exec, Configs: queue.NewBuildConfigs(rdb, s.prefix, time.Second),
		Marks: queue.NewStopMarks(rdb, keys, time.Hour, time.Second), Log: zap.NewNop(),
		Router: routing.NewDecider(routing.DeciderDeps{Rules: weightage.NewHolder(rules), Learned: exclusion.NewStore(rdb, exclusion.Options{Namespace: "resque", TTL: time.Hour, Timeout: time.Second})})}, worker.Options{})
	c, err := queue.NewConsumer(queue.Deps{Redis: rdb, Keys: keys, Log: zap.NewNop()}, queue.Options{
		Queues: []string{s.prefix + "builds"}, Concurrency: s.b.f.c, WorkerName: "inproc:1", BlockTimeout: time.Second,
		OperationTimeout: 5 * time.Second, DrainTimeout: 5 * time.Second, Retry: queue.RetryPolicy{MaxRetries: 1, Delay: time.Second}})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx, w); close(done) }()
	return func() { cancel(); <-done }
}

func (s *workerSide) queueKey() string { return "resque:queue:" + s.prefix + "builds" }

func (s *workerSide) job(id int64, image string) string {
	return fmt.Sprintf(`{"class":"start","queue":"%sbuilds","args":[{"buildId":%d,"jobId":%d,"pipelineId":42,"container":%q,"apiUri":%q,"token":"jwt-%d","pipeline":{"id":42}}]}`,
		s.prefix, id, id, image, s.b.ciURL, id)
}

// burst enqueues n start jobs in one pipeline and waits until n more jobs
// are acked (each ack means the pod and its Secret exist).
func (s *workerSide) burst(ctx context.Context, n int) (time.Duration, error) {
	return s.burstImage(ctx, n, "node:18")
}

func (s *workerSide) burstImage(ctx context.Context, n int, image string) (time.Duration, error) {
	if os.Getenv("QW_INPROC") != "" && s.inprocStop == nil {
		s.inprocStop = s.runInProcess()
	}
	before, _ := s.b.redis.client.Get(ctx, "resque:stat:processed").Int64()
	pipe := s.b.redis.client.Pipeline()
	start := time.Now()
	for range n {
		pipe.RPush(ctx, s.queueKey(), s.job(s.b.seq.Add(1), image))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		done, _ := s.b.redis.client.Get(ctx, "resque:stat:processed").Int64()
		if done-before >= int64(n) {
			return time.Since(start), nil
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("burst: %d of %d acked after 10m", done-before, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rate enqueues at r/s and measures enqueue → pod ADDED in a watch.
func (s *workerSide) rate(ctx context.Context, r int, d time.Duration) ([]time.Duration, error) {
	// Watch from the current resourceVersion: a watch without one first
	// replays every existing pod as ADDED (thousands in the full cluster),
	// and the first builds' events would queue behind that replay.
	l, err := s.b.kube.CoreV1().Pods(s.ns).List(ctx, metav1.ListOptions{LabelSelector: executor.LabelBuild, Limit: 1})
	if err != nil {
		return nil, err
	}
	w, err := s.b.kube.CoreV1().Pods(s.ns).Watch(ctx, metav1.ListOptions{LabelSelector: executor.LabelBuild, ResourceVersion: l.ResourceVersion})
	if err != nil {
		return nil, err
	}
	defer w.Stop()
	var mu sync.Mutex
	enq := map[string]time.Time{}
	var lat []time.Duration
	seen := make(chan struct{}, 1<<16)
	go func() {
		for ev := range w.ResultChan() {
			p, ok := ev.Object.(*corev1.Pod)
			if ev.Type != watch.Added || !ok {
				continue
			}
			at := time.Now()
			mu.Lock()
			if t, ok := enq[p.Labels[executor.LabelBuild]]; ok {
				lat = append(lat, at.Sub(t))
				delete(enq, p.Labels[executor.LabelBuild])
			}
			mu.Unlock()
			seen <- struct{}{}
		}
	}()
	tick := time.NewTicker(time.Second / time.Duration(r))
	defer tick.Stop()
	end := time.Now().Add(d)
	sent := 0
	for now := range tick.C {
		if now.After(end) {
			break
		}
		id := s.b.seq.Add(1)
		mu.Lock()
		enq[strconv.FormatInt(id, 10)] = time.Now()
		mu.Unlock()
		if err := s.b.redis.client.RPush(ctx, s.queueKey(), s.job(id, "node:18")).Err(); err != nil {
			return nil, err
		}
		sent++
	}
	timeout := time.After(2 * time.Minute)
	for got := 0; got < sent; {
		select {
		case <-seen:
			mu.Lock()
			got = len(lat)
			mu.Unlock()
		case <-timeout:
			return nil, fmt.Errorf("rate: %d of %d pods seen", len(lat), sent)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	return append([]time.Duration(nil), lat...), nil
}

// ---- parts ----------------------------------------------------------------

func (b *bench) newNamespace(ctx context.Context, tag string) (string, error) {
	name := fmt.Sprintf("bench-%s-%d", tag, b.seq.Add(1))
	_, err := b.kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return "", err
	}
	// Pods are refused until the namespace's default ServiceAccount exists.
	for range 200 {
		if _, err := b.kube.CoreV1().ServiceAccounts(name).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return name, nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return "", fmt.Errorf("namespace %s: no default ServiceAccount", name)
}

// dropNamespace deletes a namespace and waits until it is gone, so its
// teardown does not load the next measurement.
func (b *bench) dropNamespace(ctx context.Context, ns string) {
	_ = b.kube.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	for range 1200 {
		if _, err := b.kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	logf("namespace %s still terminating after 2m", ns)
}

func (b *bench) buildConfig(id int64, image string) *build.Config {
	return &build.Config{BuildID: id, JobID: id, PipelineID: 42, Container: image, APIURI: b.ciURL,
		Token: "jwt-" + strconv.FormatInt(id, 10), Pipeline: &build.Pipeline{ID: 42}}
}

// startWorker runs a daemon in its own namespace and queue prefix.
func (b *bench) startWorker(ctx context.Context, tag string, extra map[string]string) (*workerSide, error) {
	ns, err := b.newNamespace(ctx, tag)
	if err != nil {
		return nil, err
	}
	s := &workerSide{b: b, ns: ns, prefix: "bench" + strconv.FormatInt(b.seq.Add(1), 10) + "_"}
	env := map[string]string{
		"KUBECONFIG": b.f.kubeconfig, "K8S_JOBS_NAMESPACE": ns,
		"REDIS_HOST": "127.0.0.1", "REDIS_PORT": strconv.Itoa(b.redis.port), "REDIS_QUEUE_PREFIX": s.prefix,
		"WEIGHT_K8S": "100", "WORKER_CONCURRENCY": strconv.Itoa(b.f.c),
		"K8S_CLIENT_QPS": strconv.FormatFloat(b.f.qps, 'f', -1, 64), "K8S_CLIENT_BURST": strconv.Itoa(int(2 * b.f.qps)),
		"ECOSYSTEM_API": b.ciURL, "LOG_LEVEL": "warn",
	}
	if b.f.profileDir != "" {
		env["HTTPD_PROFILING"] = "true"
	}
	for _, m := range []map[string]string{b.startEnv, extra} {
		for k, v := range m {
			env[k] = v
		}
	}
	if s.d, err = startDaemon(b.f.bin, b.f.configDir, env); err != nil {
		return nil, err
	}
	return s, nil
}

func (b *bench) stopWorker(ctx context.Context, s *workerSide) {
	s.d.stop()
	b.dropNamespace(ctx, s.ns)
}

// burstPart: REPS interleaved bursts of each side, each into a fresh
// namespace; held (if any) are builds already pending there.
func (b *bench) burstPart(emit func(string), label string, hold func(ctx context.Context, s *workerSide, bare *bareSide) error) error {
	ctx := context.Background()
	var bare, worker []float64
	for rep := range b.f.reps {
		runBare := func() error {
			ns, err := b.newNamespace(ctx, "bare")
			if err != nil {
				return err
			}
			defer b.dropNamespace(ctx, ns)
			bs := &bareSide{b: b, ns: ns}
			if b.f.bareWatch {
				stop := watchPods(b.rc, ns)
				defer stop()
			}
			if hold != nil {
				if err := hold(ctx, nil, bs); err != nil {
					return err
				}
			}
			settle()
			prof := b.profile(ctx, fmt.Sprintf("bare-%d", rep+1))
			cpu0, api0 := cpuByProcess(), b.apiCounts(ctx)
			took, err := bs.burst(ctx, b.f.n)
			prof()
			if err != nil {
				return fmt.Errorf("bare burst: %w", err)
			}
			cpu := cpuByProcess().since(cpu0)
			bare = append(bare, float64(b.f.n)/took.Seconds())
			logf("burst %s rep %d: bare %.1f builds/s; pods %s; CPU ms per build: %s", label, rep+1, bare[len(bare)-1], b.phases(ctx, ns), cpu.perBuild(b.f.n))
			logf("burst %s rep %d: bare: apiserver requests and watch events per build: %s", label, rep+1, b.apiCounts(ctx).since(api0).perBuild(b.f.n))
			return nil
		}
		runWorker := func() error {
			ws, err := b.startWorker(ctx, "qw", nil)
			if err != nil {
				return err
			}
			defer b.stopWorker(ctx, ws)
			if hold != nil {
				if err := hold(ctx, ws, nil); err != nil {
					return err
				}
			}
			settle()
			prof := b.profile(ctx, fmt.Sprintf("qw-%d", rep+1))
			dprof := ws.d.profile(b.f.profileDir, fmt.Sprintf("queue-worker-%d", rep+1))
			cpu0, api0 := cpuByProcess(), b.apiCounts(ctx)
			took, err := ws.burst(ctx, b.f.n)
			prof()
			dprof()
			if err != nil {
				return fmt.Errorf("queue-worker burst: %w", err)
			}
			cpu := cpuByProcess().since(cpu0)
			worker = append(worker, float64(b.f.n)/took.Seconds())
			logf("burst %s rep %d: queue-worker %.1f builds/s; pods %s; CPU ms per build: %s", label, rep+1, worker[len(worker)-1], b.phases(ctx, ws.ns), cpu.perBuild(b.f.n))
			logf("burst %s rep %d: queue-worker: apiserver requests and watch events per build: %s; pod creates that found the pod existing: %.0f",
				label, rep+1, b.apiCounts(ctx).since(api0).perBuild(b.f.n), ws.d.metric(`queue_worker_executor_pod_creates_total{outcome="exists",runtime="kata"}`))
			return nil
		}
		// Alternate which side goes first, so drift hits both alike.
		first, second := runBare, runWorker
		if rep%2 == 1 {
			first, second = runWorker, runBare
		}
		if err := first(); err != nil {
			return err
		}
		if err := second(); err != nil {
			return err
		}
	}
	mb, mw := median(bare), median(worker)
	if hold == nil && b.bareRate == 0 {
		b.bareRate = mb
	}
	emit(fmt.Sprintf("| burst of %d, C=%d, %s | %.1f builds/s | %.1f builds/s | **%.2f×** | runs: bare %s; qw %s |",
		b.f.n, b.f.c, label, mb, mw, mw/mb, fmtRuns(bare), fmtRuns(worker)))
	return nil
}

// ratePart compares the bare loop's create latency with queue-worker's
// enqueue→pod latency at fixed rates (each a share of the bare loop's
// burst capacity measured in this run), each side alone in its own
// namespace; held (if any) are builds already pending there. Both sides
// share two CPUs with the control plane, so latency climbs steeply as a
// rate nears either side's capacity: the lower rate shows the per-build
// overhead, the higher one the behaviour near saturation.
func (b *bench) ratePart(emit func(string), label string, hold func(ctx context.Context, s *workerSide, bare *bareSide) error) error {
	ctx := context.Background()
	rates := b.rates()
	bl := make([][]time.Duration, len(rates))
	wl := make([][]time.Duration, len(rates))
	err := func() error {
		ns, err := b.newNamespace(ctx, "bare")
		if err != nil {
			return err
		}
		defer b.dropNamespace(ctx, ns)
		bs := &bareSide{b: b, ns: ns}
		if hold != nil {
			if err := hold(ctx, nil, bs); err != nil {
				return err
			}
		}
		for i, r := range rates {
			settle()
			if bl[i], err = bs.rate(ctx, r, b.f.rateFor); err != nil {
				return fmt.Errorf("bare rate: %w", err)
			}
		}
		return nil
	}()
	if err != nil {
		return err
	}
	err = func() error {
		ws, err := b.startWorker(ctx, "qw", nil)
		if err != nil {
			return err
		}
		defer b.stopWorker(ctx, ws)
		if hold != nil {
			if err := hold(ctx, ws, nil); err != nil {
				return err
			}
		}
		for i, r := range rates {
			settle()
			m0 := ws.d.stageMeans()
			tag := strings.ReplaceAll(fmt.Sprintf("%d-%s", r, label), " ", "-")
			prof := b.profile(ctx, "qw-rate-"+tag)
			dprof := ws.d.profile(b.f.profileDir, "queue-worker-rate-"+tag)
			wl[i], err = ws.rate(ctx, r, b.f.rateFor)
			prof()
			dprof()
			if err != nil {
				return fmt.Errorf("queue-worker rate: %w", err)
			}
			logf("rate %d/s %s: queue-worker's own means over the run: %s", r, label, ws.d.stageMeans().since(m0))
		}
		return nil
	}()
	if err != nil {
		return err
	}
	for i, r := range rates {
		bp, wp := percentiles(bl[i]), percentiles(wl[i])
		emit(fmt.Sprintf("| %d builds/s for %s, %s: p50 / p99 | bare create (Secret+Pod) %s / %s | enqueue→pod %s / %s | **p99 %.2f×** | n=%d / %d |",
			r, b.f.rateFor, label, ms(bp[0]), ms(bp[1]), ms(wp[0]), ms(wp[1]), float64(wp[1])/float64(bp[1]), len(bl[i]), len(wl[i])))
	}
	return nil
}

// fullPart holds M builds Pending (hyperd-bound images, hyperd nodes that
// match nothing), counts Redis commands/s of the daemon with and without
// them, then repeats the burst and the rate into the full cluster.
func (b *bench) fullPart(emit func(string)) error {
	ctx := context.Background()
	ws, err := b.startWorker(ctx, "qwfull", map[string]string{
		"K8S_EXECUTOR_EXCLUSION": `["held"]`, "K8S_VM_NODE_SELECTORS": `{"dedicated":"nowhere"}`,
	})
	if err != nil {
		return err
	}
	time.Sleep(3 * time.Second) // settle after start-up
	idle, err := b.redis.commandsPerSecond(ctx, b.f.idleWindow)
	if err != nil {
		return err
	}
	logf("idle daemon: %.2f Redis commands/s", idle)
	if _, err := ws.burstImage(ctx, b.f.held, "registry.example/held:1"); err != nil {
		return err
	}
	if err := b.waitPending(ctx, ws.ns, b.f.held); err != nil {
		return err
	}
	// One-time work is not what is measured: wait until the supervisor has
	// reported every held build waiting once and its queue is empty.
	caughtUp := time.Now()
	for range 600 {
		if ws.d.metric(`queue_worker_supervisor_actions_total{action="report-waiting"}`) >= float64(b.f.held) &&
			ws.d.metric(`workqueue_depth{name="supervisor"}`) == 0 {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	logf("supervisor caught up with %d held builds %.1fs after they were pending", b.f.held, time.Since(caughtUp).Seconds())
	full, err := b.redis.commandsPerSecond(ctx, b.f.idleWindow)
	if err != nil {
		return err
	}
	perPodMin := (full - idle) * 60 / float64(b.f.held)
	emit(fmt.Sprintf("| %d pods Pending: Redis commands/s | idle %.2f | with them %.2f | **%+.4f per pending pod per minute** | window %s |",
		b.f.held, idle, full, perPodMin, b.f.idleWindow))
	b.stopWorker(ctx, ws)

	// The same burst and rate, each into a namespace that holds M pending
	// builds of its own side, supervised (queue-worker) or not (bare).
	hold := func(ctx context.Context, s *workerSide, bare *bareSide) error {
		if bare != nil {
			bare.held = true
			defer func() { bare.held = false }()
			if _, err := bare.burst(ctx, b.f.held); err != nil {
				return err
			}
			return b.waitPending(ctx, bare.ns, b.f.held)
		}
		if _, err := s.burstImage(ctx, b.f.held, "registry.example/held:1"); err != nil {
			return err
		}
		return b.waitPending(ctx, s.ns, b.f.held)
	}
	held := map[string]string{"K8S_EXECUTOR_EXCLUSION": `["held"]`, "K8S_VM_NODE_SELECTORS": `{"dedicated":"nowhere"}`}
	saved := b.startEnv
	b.startEnv = held
	defer func() { b.startEnv = saved }()
	if err := b.burstPart(emit, fmt.Sprintf("%d pods Pending", b.f.held), hold); err != nil {
		return err
	}
	return b.ratePart(emit, fmt.Sprintf("%d pods Pending", b.f.held), hold)
}

// profile starts an 8s CPU profile of the apiserver (with -profile) and
// returns a wait for it.
func (b *bench) profile(ctx context.Context, name string) func() {
	if b.f.profileDir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		raw, err := b.kube.CoreV1().RESTClient().Get().AbsPath("/debug/pprof/profile").Param("seconds", "8").DoRaw(ctx)
		if err != nil {
			logf("profile %s: %v", name, err)
			return
		}
		_ = os.WriteFile(filepath.Join(b.f.profileDir, "apiserver-"+name+".pprof"), raw, 0o644)
	}()
	return func() { <-done }
}

// watchPods runs a protobuf pod informer on ns (diagnosis of the cost of
// a watch), returning its stop.
func watchPods(rc *rest.Config, ns string) func() {
	c := rest.CopyConfig(rc)
	c.ContentType = "application/vnd.kubernetes.protobuf"
	kube := kubernetes.NewForConfigOrDie(c)
	f := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(ns))
	f.Core().V1().Pods().Informer()
	stop := make(chan struct{})
	f.Start(stop)
	f.WaitForCacheSync(stop)
	return func() { close(stop); f.Shutdown() }
}

// phases counts a namespace's pods by phase.
func (b *bench) phases(ctx context.Context, ns string) string {
	time.Sleep(time.Second)
	l, err := b.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return err.Error()
	}
	n := map[corev1.PodPhase]int{}
	for _, p := range l.Items {
		n[p.Status.Phase]++
	}
	return fmt.Sprint(n)
}

func (b *bench) waitPending(ctx context.Context, ns string, n int) error {
	for range 600 {
		l, err := b.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: executor.LabelRuntime + "=hyperd", ResourceVersion: "0"})
		if err == nil && len(l.Items) >= n {
			return nil
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("%d pending pods did not appear in %s", n, ns)
}

// memoryPart: RSS and Go heap of an idle daemon, then with P pods in its
// cache (created directly, labelled as ours, so no job is involved).
func (b *bench) memoryPart(emit func(string)) error {
	ctx := context.Background()
	ws, err := b.startWorker(ctx, "qwmem", map[string]string{"SUPERVISOR_WORKERS": "4"})
	if err != nil {
		return err
	}
	defer b.stopWorker(ctx, ws)
	time.Sleep(5 * time.Second)
	rss0, anon0, heap0 := ws.d.rss("VmRSS"), ws.d.rss("RssAnon"), ws.d.heapInuse()
	bs := &bareSide{b: b, ns: ws.ns}
	// Pods the daemon supervises: labelled as ours (PodSpec does that).
	saved := b.f.c
	b.f.c = 16
	if _, err := bs.burst(ctx, b.f.memPods); err != nil {
		return err
	}
	b.f.c = saved
	for range 300 {
		if ws.d.cachedPods() >= b.f.memPods {
			break
		}
		time.Sleep(time.Second)
	}
	time.Sleep(10 * time.Second) // supervision done (reports, records), GC settled
	rss1, anon1, heap1 := ws.d.rss("VmRSS"), ws.d.rss("RssAnon"), ws.d.heapInuse()
	// VmRSS counts the binary's mapped pages (file-backed, shared with the
	// page cache) as well as the process's own memory (RssAnon).
	emit(fmt.Sprintf("| memory | idle RSS %.1f MB, of which anonymous %.1f MB (heap in use %.1f MB) | with %d pods: RSS %.1f MB, anonymous %.1f MB (heap %.1f MB) | **%.2f KB RSS / %.2f KB heap per pod** | |",
		mb(rss0), mb(anon0), mb(heap0), b.f.memPods, mb(rss1), mb(anon1), mb(heap1), kb(rss1-rss0)/float64(b.f.memPods), kb(heap1-heap0)/float64(b.f.memPods)))
	return nil
}

// ---- the daemon -----------------------------------------------------------

// daemonProc is a queue-worker process of the bench.
type daemonProc struct{ *proc.Daemon }

func startDaemon(bin, configDir string, env map[string]string) (*daemonProc, error) {
	env["GOMAXPROCS"] = strconv.Itoa(daemonProcs())
	for _, kv := range os.Environ() { // QW_*: diagnosis switches for the daemon
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "QW_") {
			env[k] = v
		}
	}
	d, err := proc.StartDaemon(proc.DaemonOptions{Bin: bin, ConfigDir: configDir, Env: env, Stderr: os.Stderr})
	if err != nil {
		return nil, err
	}
	return &daemonProc{d}, nil
}

func (d *daemonProc) stop() { d.Stop() }

func (d *daemonProc) rss(field string) float64 { return d.Status(field) }

func (d *daemonProc) metric(series string) float64 { return d.Metric(series) }

// profile takes an 8s CPU profile of the daemon (it runs with
// HTTPD_PROFILING when -profile is set) and returns a wait for it.
func (d *daemonProc) profile(dir, name string) func() {
	if dir == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(d.URL("/debug/pprof/profile?seconds=8"))
		if err != nil {
			logf("daemon profile: %v", err)
			return
		}
		defer resp.Body.Close()
		raw, _ := io.ReadAll(resp.Body)
		_ = os.WriteFile(filepath.Join(dir, name+".pprof"), raw, 0o644)
	}()
	return func() { <-done }
}

// stageMeans reads the sums and counts of the daemon's take→settle and
// pod create histograms (diagnosis: where enqueue→pod time goes).
func (d *daemonProc) stageMeans() stageSums {
	var s stageSums
	for i, n := range stageNames {
		s[i] = [2]float64{d.metric(n.name + "_sum" + n.labels), d.metric(n.name + "_count" + n.labels)}
	}
	return s
}

var stageNames = [...]struct{ name, labels string }{
	{"queue_worker_queue_take_to_settle_seconds", ""},
	{"queue_worker_executor_pod_create_seconds", `{runtime="kata"}`},
}

type stageSums [len(stageNames)][2]float64

func (s stageSums) since(before stageSums) string {
	parts := make([]string, len(s))
	for i := range s {
		n := s[i][1] - before[i][1]
		mean := 0.0
		if n > 0 {
			mean = (s[i][0] - before[i][0]) / n
		}
		parts[i] = fmt.Sprintf("%s %.1f ms (n=%.0f)", strings.TrimPrefix(stageNames[i].name, "queue_worker_"), 1000*mean, n)
	}
	return strings.Join(parts, ", ")
}

func (d *daemonProc) heapInuse() float64 { return d.metric("go_memstats_heap_inuse_bytes") }

func (d *daemonProc) cachedPods() int {
	return int(d.metric(`queue_worker_supervisor_cached_pods`))
}

// ---- a private Redis ------------------------------------------------------

// miniRedis is the bench's own redis-server, so command counts are the
// daemon's alone.
type miniRedis struct {
	*proc.Redis
	port   int
	client *redis.Client
}

func startRedis() (*miniRedis, error) {
	r, err := proc.StartRedis(proc.RedisOptions{})
	if err != nil {
		return nil, err
	}
	return &miniRedis{Redis: r, port: r.Port(), client: r.Client}, nil
}

func (r *miniRedis) stop() { r.Close() }

// commandsPerSecond is the server's command rate over window, minus the
// two INFO calls that measure it.
func (r *miniRedis) commandsPerSecond(ctx context.Context, window time.Duration) (float64, error) {
	read := func() (float64, error) {
		info, err := r.client.Info(ctx, "stats").Result()
		if err != nil {
			return 0, err
		}
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "total_commands_processed:"); ok {
				return strconv.ParseFloat(v, 64)
			}
		}
		return 0, errors.New("no total_commands_processed in INFO")
	}
	a, err := read()
	if err != nil {
		return 0, err
	}
	start := time.Now()
	time.Sleep(window)
	c, err := read()
	if err != nil {
		return 0, err
	}
	return (c - a - 1) / time.Since(start).Seconds(), nil
}

// ---- figures --------------------------------------------------------------

func median(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	return s[len(s)/2]
}

func percentiles(d []time.Duration) [2]time.Duration {
	s := append([]time.Duration(nil), d...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	at := func(q float64) time.Duration { return s[min(len(s)-1, int(q*float64(len(s))))] }
	return [2]time.Duration{at(0.5), at(0.99)}
}

func fmtRuns(v []float64) string {
	parts := make([]string, len(v))
	for i, x := range v {
		parts[i] = strconv.FormatFloat(x, 'f', 1, 64)
	}
	return strings.Join(parts, ", ")
}

func ms(d time.Duration) string { return strconv.FormatFloat(float64(d)/1e6, 'f', 1, 64) + " ms" }

func mb(b float64) float64 { return b / (1 << 20) }
func kb(b float64) float64 { return b / (1 << 10) }

func numCPU() int {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return 1
	}
	return max(1, strings.Count(string(b), "processor\t:"))
}

// ---- apiserver requests ---------------------------------------------------

// apiCounts reads the apiserver's request counters (by verb and resource)
// and watch events sent (by kind): what a build costs the control plane.
func (b *bench) apiCounts(ctx context.Context) counters {
	raw, err := b.kube.CoreV1().RESTClient().Get().AbsPath("/metrics").DoRaw(ctx)
	if err != nil {
		return nil
	}
	out := counters{}
	for _, line := range strings.Split(string(raw), "\n") {
		var key string
		switch {
		case strings.HasPrefix(line, "apiserver_request_total{"):
			key = label(line, "verb") + " " + label(line, "resource") + label(line, "subresource")
		case strings.HasPrefix(line, "apiserver_watch_events_total{"):
			key = "watch-event " + label(line, "kind")
		default:
			continue
		}
		v, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		out[key] += v
	}
	return out
}

// counters are counts by name.
type counters map[string]float64

func (c counters) since(before counters) counters {
	out := counters{}
	for k, v := range c {
		out[k] = v - before[k]
	}
	return out
}

// perBuild lists the counts of at least 0.05 per build, largest first.
func (c counters) perBuild(n int) string {
	keys := make([]string, 0, len(c))
	for k, v := range c {
		if v/float64(n) >= 0.05 {
			keys = append(keys, k)
		}
	}
	sort.Slice(keys, func(i, j int) bool { return c[keys[i]] > c[keys[j]] })
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s %.2f", k, c[k]/float64(n))
	}
	return strings.Join(parts, ", ")
}

// label is a label's value in a Prometheus text line.
func label(line, name string) string {
	_, rest, ok := strings.Cut(line, name+`="`)
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(rest, `"`)
	return v
}

// ---- CPU by process -------------------------------------------------------

// cpuTimes is CPU seconds per process name, from /proc/<pid>/stat.
type cpuTimes map[string]float64

// cpuByProcess reads utime+stime of the processes a build touches.
func cpuByProcess() cpuTimes {
	names := []string{"etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kwok", "queue-worker", "e2ebench", "redis-server"}
	out := cpuTimes{}
	dirs, _ := os.ReadDir("/proc")
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue
		}
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < 0 {
			continue
		}
		comm := s[open+1 : end]
		f := strings.Fields(s[end+2:])
		if len(f) < 13 {
			continue
		}
		for _, n := range names {
			if strings.HasPrefix(comm, n) {
				u, _ := strconv.ParseFloat(f[11], 64)
				k, _ := strconv.ParseFloat(f[12], 64)
				out[n] += (u + k) / 100 // USER_HZ
			}
		}
	}
	return out
}

// settle waits until the control plane is idle (below 15% of a core over
// a second, at most 60s), so one side's aftermath (events, kwok's status
// updates, the scheduler's cache) is not billed to the next side.
func settle() {
	for range 60 {
		a := cpuByProcess()
		time.Sleep(time.Second)
		d := cpuByProcess().since(a)
		busy := 0.0
		for _, n := range []string{"etcd", "kube-apiserver", "kube-controller", "kube-scheduler", "kwok", "queue-worker"} {
			busy += d[n]
		}
		if busy < 0.15 {
			return
		}
	}
	logf("the control plane did not settle within 60s")
}

func (c cpuTimes) since(before cpuTimes) cpuTimes {
	out := cpuTimes{}
	for k, v := range c {
		out[k] = v - before[k]
	}
	return out
}

func (c cpuTimes) perBuild(n int) string {
	keys := make([]string, 0, len(c))
	total := 0.0
	for k, v := range c {
		if v > 0 {
			keys = append(keys, k)
			total += v
		}
	}
	sort.Strings(keys)
	parts := []string{fmt.Sprintf("total %.1f", 1000*total/float64(n))}
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %.1f", k, 1000*c[k]/float64(n)))
	}
	return strings.Join(parts, ", ")
}

// daemonProcs is the daemon's GOMAXPROCS: $BENCH_DAEMON_PROCS, else the CPUs.
func daemonProcs() int {
	if n, err := strconv.Atoi(os.Getenv("BENCH_DAEMON_PROCS")); err == nil && n > 0 {
		return n
	}
	return numCPU()
}
