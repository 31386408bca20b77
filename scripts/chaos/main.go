// Command chaos drives `make chaos`: N builds through R queue-worker
// replicas on the dev cluster while a replica is SIGKILLed every few
// seconds and Redis and the kube-apiserver are each SIGKILLed and restarted
// once, then a report: builds, pods, duplicates, lost, failed, and the CI
// API reports each build got. It exits 1 if a build was lost, got two pods
// or was reported twice.
//
// Builds are enqueued as queue-service does (the buildConfigs hash plus an
// ids-only start job), at a steady rate so the chaos spans the run. Redis
// is a private redis-server with AOF (fsync every second), as production
// runs it; the CI API is a stand-in that answers 200 and counts.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
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

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/redis/go-redis/v9"

	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed/proc"
)

type flags struct {
	n, replicas, concurrency int
	rate                     float64
	killEvery, redisDown     time.Duration
	apiserverDown, settle    time.Duration
	bin, configDir, kube     string
	clusterDir, logDir       string
	keep                     bool
	logLevel                 string
}

func main() {
	var f flags
	flag.IntVar(&f.n, "n", 10000, "builds")
	flag.IntVar(&f.replicas, "replicas", 3, "queue-worker replicas")
	flag.IntVar(&f.concurrency, "c", 4, "WORKER_CONCURRENCY of each replica")
	flag.Float64Var(&f.rate, "rate", 100, "builds enqueued per second")
	flag.DurationVar(&f.killEvery, "kill-every", 2*time.Second, "SIGKILL one replica (and start a new one) this often")
	flag.DurationVar(&f.redisDown, "redis-down", 5*time.Second, "how long Redis stays down after its SIGKILL")
	flag.DurationVar(&f.apiserverDown, "apiserver-down", 5*time.Second, "how long the kube-apiserver stays down after its SIGKILL")
	flag.DurationVar(&f.settle, "timeout", 10*time.Minute, "how long to wait for every build after the last enqueue")
	flag.StringVar(&f.bin, "bin", "bin/queue-worker", "queue-worker binary")
	flag.StringVar(&f.configDir, "config-dir", "config", "queue-worker config dir")
	flag.StringVar(&f.kube, "kubeconfig", os.Getenv("KUBECONFIG"), "dev cluster kubeconfig")
	flag.StringVar(&f.clusterDir, "cluster-dir", filepath.Join(os.Getenv("HOME"), ".cache/queue-worker/dev-cluster"), "dev cluster state dir (the apiserver's pid file)")
	flag.StringVar(&f.logDir, "logs", "", "directory for the replicas' logs (default: a temp dir)")
	flag.BoolVar(&f.keep, "keep", false, "keep the namespace afterwards")
	flag.StringVar(&f.logLevel, "log-level", "warn", "LOG_LEVEL of the replicas")
	flag.Parse()
	ok, err := run(f)
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[chaos %s] "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(f flags) (bool, error) {
	if f.kube == "" {
		return false, errors.New("no kubeconfig (run through `make chaos`, which brings the dev cluster up)")
	}
	rc, err := clientcmd.BuildConfigFromFlags("", f.kube)
	if err != nil {
		return false, err
	}
	rc.QPS, rc.Burst = 500, 1000
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return false, err
	}
	ctx := context.Background()
	if f.logDir == "" {
		if f.logDir, err = os.MkdirTemp("", "qw-chaos-"); err != nil {
			return false, err
		}
	}
	stamp := time.Now().Unix()
	ns := fmt.Sprintf("chaos-%d", stamp)
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		return false, err
	}
	if !f.keep {
		defer func() { _ = kube.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) }()
	}
	if err := waitServiceAccount(ctx, kube, ns); err != nil {
		return false, err
	}
	rdb, err := proc.StartRedis(proc.RedisOptions{AppendOnly: true})
	if err != nil {
		return false, err
	}
	defer rdb.Close()
	ci, err := startCI()
	if err != nil {
		return false, err
	}
	defer ci.srv.Close()

	const prefix = "chaos_"
	env := map[string]string{
		"KUBECONFIG": f.kube, "K8S_JOBS_NAMESPACE": ns,
		"REDIS_HOST": "127.0.0.1", "REDIS_PORT": strconv.Itoa(rdb.Port()), "REDIS_QUEUE_PREFIX": prefix,
		"WEIGHT_K8S": "50", "WORKER_CONCURRENCY": strconv.Itoa(f.concurrency),
		"K8S_CLIENT_QPS": "500", "K8S_CLIENT_BURST": "1000",
		"ECOSYSTEM_API": ci.url, "LOG_LEVEL": f.logLevel,
		// Short leases, so a killed replica's jobs and the supervisor's Lease
		// come back within seconds (production keeps the defaults).
		"QUEUE_LEASE_DURATION": "4s", "QUEUE_RECOVER_INTERVAL": "1s",
		"SUPERVISOR_LEASE_DURATION": "4s", "SUPERVISOR_RENEW_DEADLINE": "3s", "SUPERVISOR_RETRY_PERIOD": "500ms",
		// A replica dies every 2 s here, far more often than the poison-job
		// rule (a job whose worker died 3 times is dead-lettered) assumes: a
		// job held through an outage can meet 4 kills without being at fault.
		"QUEUE_MAX_RECOVERIES": "20",
	}
	fleet := &fleet{f: f, env: env}
	for range f.replicas {
		if err := fleet.add(); err != nil {
			return false, err
		}
	}
	defer fleet.stopAll()

	// The chaos runs while the builds are enqueued.
	enqueueFor := time.Duration(float64(f.n) / f.rate * float64(time.Second))
	chaosCtx, stopChaos := context.WithCancel(ctx)
	var chaosWG sync.WaitGroup
	chaosWG.Add(2)
	go func() { defer chaosWG.Done(); fleet.killLoop(chaosCtx) }()
	events := &timeline{}
	go func() {
		defer chaosWG.Done()
		outage(chaosCtx, enqueueFor/3, func() {
			logf("SIGKILL redis-server")
			events.add("redis SIGKILLed")
			rdb.Kill()
			sleep(chaosCtx, f.redisDown)
			if err := rdb.Start(); err != nil {
				logf("restarting redis-server: %v", err)
			}
			events.add("redis back (AOF)")
		})
		outage(chaosCtx, enqueueFor/3, func() {
			logf("SIGKILL kube-apiserver")
			events.add("kube-apiserver SIGKILLed")
			if err := killAPIServer(f.clusterDir); err != nil {
				logf("%v", err)
			}
			sleep(chaosCtx, f.apiserverDown)
			out, err := exec.Command("scripts/dev-cluster.sh", "up").CombinedOutput()
			if err != nil {
				logf("restarting the control plane: %v\n%s", err, out)
			}
			events.add("kube-apiserver back")
		})
	}()

	start := time.Now()
	if err := enqueue(ctx, rdb, prefix, ci.url, f); err != nil {
		stopChaos()
		chaosWG.Wait()
		return false, err
	}
	logf("enqueued %d builds in %s", f.n, time.Since(start).Round(time.Second))
	stopChaos()
	chaosWG.Wait()
	logf("chaos over: %d replicas killed; waiting for every build", fleet.killed)

	// Wait until every build has a pod and nothing is left in Redis.
	deadline := time.Now().Add(f.settle)
	var pods map[int64][]corev1.Pod
	for {
		pods, err = listPods(ctx, kube, ns)
		left := pending(ctx, rdb, prefix)
		if err == nil && len(pods) >= f.n && left == 0 {
			break
		}
		if time.Now().After(deadline) {
			logf("gave up waiting: %d builds with pods, %d jobs left in Redis", len(pods), left)
			break
		}
		time.Sleep(2 * time.Second)
	}
	// Let the supervisor report the last nodes.
	ci.waitQuiet(5 * time.Second)
	pods, err = listPods(ctx, kube, ns)
	if err != nil {
		return false, err
	}
	failed, _ := rdb.Client.LLen(ctx, keys.Failed()).Result()
	ok := report(f, time.Since(start), fleet.killed, events, pods, ci.snapshot(), failed)
	explainUnreported(ctx, kube, ns, pods, ci.snapshot())
	return ok, nil
}

// ---- enqueue ---------------------------------------------------------------

// keys are the daemon's, in its default resque namespace.
var keys = queue.NewKeys("resque")

func enqueue(ctx context.Context, rdb *proc.Redis, prefix, apiURI string, f flags) error {
	tick := time.NewTicker(time.Duration(float64(time.Second) / f.rate))
	defer tick.Stop()
	for id := int64(1); id <= int64(f.n); id++ {
		<-tick.C
		cfg, _ := json.Marshal(map[string]any{
			"buildId": id, "jobId": id, "eventId": 1, "jobName": "main", "pipelineId": 42,
			"pipeline": map[string]any{"id": 42, "name": "org/repo"},
			"apiUri":   apiURI, "container": "node:18", "token": "jwt-" + strconv.FormatInt(id, 10),
		})
		job := fmt.Sprintf(`{"class":"start","queue":"%sbuilds","args":[{"buildId":%d,"jobId":%d,"blockedBy":"%d"}]}`, prefix, id, id, id)
		// Redis may be down: keep trying this build (queue-service would).
		for {
			_, err := rdb.Client.TxPipelined(ctx, func(p redis.Pipeliner) error {
				p.HSet(ctx, prefix+"buildConfigs", strconv.FormatInt(id, 10), cfg)
				p.RPush(ctx, keys.Queue(prefix+"builds"), job)
				return nil
			})
			if err == nil {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	return nil
}

// pending counts jobs not yet done: queued, in flight, delayed.
func pending(ctx context.Context, rdb *proc.Redis, prefix string) int64 {
	c := rdb.Client
	n, err := c.LLen(ctx, keys.Queue(prefix+"builds")).Result()
	if err != nil {
		return -1
	}
	delayed, _ := c.ZCard(ctx, keys.DelayedSchedule()).Result()
	inflight, _ := c.Keys(ctx, keys.InFlightPattern()).Result()
	for _, k := range inflight {
		m, _ := c.LLen(ctx, k).Result()
		n += m
	}
	return n + delayed
}

// ---- replicas ----------------------------------------------------------------

type fleet struct {
	f      flags
	env    map[string]string
	mu     sync.Mutex
	live   []*proc.Daemon
	seq    int
	killed int
}

func (fl *fleet) add() error {
	fl.mu.Lock()
	fl.seq++
	name := filepath.Join(fl.f.logDir, fmt.Sprintf("replica-%03d.log", fl.seq))
	fl.mu.Unlock()
	logFile, err := os.Create(name)
	if err != nil {
		return err
	}
	d, err := proc.StartDaemon(proc.DaemonOptions{Bin: fl.f.bin, ConfigDir: fl.f.configDir, Env: fl.env, Stderr: logFile, ReadyTimeout: 20 * time.Second})
	if err != nil {
		return fmt.Errorf("replica (log %s): %w", name, err)
	}
	fl.mu.Lock()
	fl.live = append(fl.live, d)
	fl.mu.Unlock()
	return nil
}

// killLoop SIGKILLs a random replica every killEvery and starts a new one
// (which may take a while while Redis or the apiserver is down).
func (fl *fleet) killLoop(ctx context.Context) {
	t := time.NewTicker(fl.f.killEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fl.mu.Lock()
		if len(fl.live) > 0 {
			i := rand.IntN(len(fl.live))
			d := fl.live[i]
			fl.live = append(fl.live[:i], fl.live[i+1:]...)
			fl.killed++
			fl.mu.Unlock()
			d.Kill()
		} else {
			fl.mu.Unlock()
		}
		for len(fl.liveCount()) < fl.f.replicas && ctx.Err() == nil {
			if err := fl.add(); err != nil {
				logf("replacement replica not ready yet: %v", err)
				sleep(ctx, time.Second)
			}
		}
	}
}

func (fl *fleet) liveCount() []*proc.Daemon {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return append([]*proc.Daemon(nil), fl.live...)
}

func (fl *fleet) stopAll() {
	for _, d := range fl.liveCount() {
		d.Stop()
	}
}

// ---- outages -----------------------------------------------------------------

func outage(ctx context.Context, after time.Duration, do func()) {
	sleep(ctx, after)
	if ctx.Err() == nil {
		do()
	}
}

func killAPIServer(clusterDir string) error {
	raw, err := os.ReadFile(filepath.Join(clusterDir, "run", "kube-apiserver.pid"))
	if err != nil {
		return fmt.Errorf("finding the kube-apiserver: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(raw)))
	if err != nil {
		return fmt.Errorf("kube-apiserver pid file: %w", err)
	}
	return syscall.Kill(pid, syscall.SIGKILL)
}

type timeline struct {
	mu sync.Mutex
	at []string
}

func (t *timeline) add(what string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.at = append(t.at, time.Now().Format("15:04:05")+" "+what)
}

// ---- the CI API stand-in -----------------------------------------------------

type ciCalls struct {
	hostname, failure, waiting, other, reads int
	// what the API holds, for reads
	node, status, message string
}

type ciStandIn struct {
	srv   *http.Server
	url   string
	mu    sync.Mutex
	calls map[int64]*ciCalls
	last  time.Time
}

func startCI() (*ciStandIn, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	c := &ciStandIn{url: "http://" + ln.Addr().String(), calls: map[int64]*ciCalls{}}
	c.srv = &http.Server{Handler: http.HandlerFunc(c.serve)}
	go func() { _ = c.srv.Serve(ln) }()
	return c, nil
}

func (c *ciStandIn) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	id, err := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/v4/builds/"), 10, 64)
	if err != nil {
		_, _ = w.Write([]byte(`{}`))
		return
	}
	if r.Method == http.MethodGet {
		c.mu.Lock()
		k := c.calls[id]
		var b []byte
		if k == nil {
			b, _ = json.Marshal(map[string]any{"id": id, "status": "QUEUED"})
		} else {
			k.reads++
			status := k.status
			if status == "" {
				status = "QUEUED"
			}
			b, _ = json.Marshal(map[string]any{"id": id, "status": status, "statusMessage": k.message, "stats": map[string]any{"hostname": k.node}})
		}
		c.mu.Unlock()
		_, _ = w.Write(b)
		return
	}
	_, _ = w.Write([]byte(`{}`))
	var b struct {
		Status        string         `json:"status"`
		StatusMessage string         `json:"statusMessage"`
		Stats         map[string]any `json:"stats"`
	}
	_ = json.Unmarshal(body, &b)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = time.Now()
	k := c.calls[id]
	if k == nil {
		k = &ciCalls{}
		c.calls[id] = k
	}
	switch {
	case b.Status == "FAILURE":
		k.failure++
	case b.Stats["hostname"] != nil:
		k.hostname++
		k.node = fmt.Sprint(b.Stats["hostname"])
	case strings.Contains(b.StatusMessage, "Waiting"):
		k.waiting++
	default:
		k.other++
	}
	if b.Status != "" {
		k.status = b.Status
	}
	if b.StatusMessage != "" {
		k.message = b.StatusMessage
	}
}

// waitQuiet waits until no call arrived for quiet (at most a minute).
func (c *ciStandIn) waitQuiet(quiet time.Duration) {
	for range 60 {
		c.mu.Lock()
		idle := time.Since(c.last)
		c.mu.Unlock()
		if idle >= quiet {
			return
		}
		time.Sleep(time.Second)
	}
}

func (c *ciStandIn) snapshot() map[int64]ciCalls {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[int64]ciCalls, len(c.calls))
	for k, v := range c.calls {
		out[k] = *v
	}
	return out
}

// ---- the report ----------------------------------------------------------------

func listPods(ctx context.Context, kube kubernetes.Interface, ns string) (map[int64][]corev1.Pod, error) {
	out := map[int64][]corev1.Pod{}
	opts := metav1.ListOptions{LabelSelector: executor.LabelBuild, Limit: 2000}
	for {
		l, err := kube.CoreV1().Pods(ns).List(ctx, opts)
		if err != nil {
			return out, err
		}
		for _, p := range l.Items {
			if p.DeletionTimestamp != nil {
				continue
			}
			id, err := strconv.ParseInt(p.Labels[executor.LabelBuild], 10, 64)
			if err == nil {
				out[id] = append(out[id], p)
			}
		}
		if l.Continue == "" {
			return out, nil
		}
		opts.Continue = l.Continue
	}
}

func report(f flags, took time.Duration, killed int, events *timeline, pods map[int64][]corev1.Pod, calls map[int64]ciCalls, failed int64) bool {
	var lost, dup, noHost, dupHost, failures, unscheduled, noWaiting, dupWaiting []int64
	byRuntime := map[string]int{}
	reads := 0
	for id := int64(1); id <= int64(f.n); id++ {
		ps := pods[id]
		switch {
		case len(ps) == 0:
			lost = append(lost, id)
		case len(ps) > 1:
			dup = append(dup, id)
		}
		for _, p := range ps {
			byRuntime[p.Labels[executor.LabelRuntime]]++
		}
		c := calls[id]
		reads += c.reads
		scheduled := len(ps) > 0 && ps[0].Spec.NodeName != ""
		switch {
		case len(ps) > 0 && !scheduled:
			// No room on the nodes: its report is "waiting", once.
			unscheduled = append(unscheduled, id)
			if c.waiting == 0 {
				noWaiting = append(noWaiting, id)
			} else if c.waiting > 1 {
				dupWaiting = append(dupWaiting, id)
			}
		case scheduled && c.hostname == 0:
			noHost = append(noHost, id)
		}
		if c.hostname > 1 {
			dupHost = append(dupHost, id)
		}
		if c.failure > 0 {
			failures = append(failures, id)
		}
	}
	fmt.Printf("# make chaos %s: N=%d, %d replicas × concurrency %d, %.0f builds/s enqueued, a replica SIGKILLed every %s\n",
		time.Now().UTC().Format(time.RFC3339), f.n, f.replicas, f.concurrency, f.rate, f.killEvery)
	fmt.Printf("\nOutages: %s; %d replicas SIGKILLed; %s from the first enqueue to the report. Replica logs: %s\n\n",
		strings.Join(events.at, ", "), killed, took.Round(time.Second), f.logDir)
	fmt.Println("| | count |")
	fmt.Println("|---|---|")
	fmt.Printf("| builds enqueued | %d |\n", f.n)
	fmt.Printf("| builds with exactly one pod | %d (kata %d, hyperd %d) |\n", f.n-len(lost)-len(dup), byRuntime["kata"], byRuntime["hyperd"])
	fmt.Printf("| builds lost (no pod) | %d %s |\n", len(lost), sample(lost))
	fmt.Printf("| builds with more than one pod | %d %s |\n", len(dup), sample(dup))
	fmt.Printf("| jobs in the failed list | %d |\n", failed)
	fmt.Printf("| builds scheduled whose node was never reported | %d %s |\n", len(noHost), sample(noHost))
	fmt.Printf("| builds whose node was reported more than once | %d %s |\n", len(dupHost), sample(dupHost))
	fmt.Printf("| builds left unschedulable (nodes full) | %d |\n", len(unscheduled))
	fmt.Printf("| unschedulable builds never reported waiting / reported waiting more than once | %d / %d %s |\n", len(noWaiting), len(dupWaiting), sample(append(noWaiting, dupWaiting...)))
	fmt.Printf("| builds reported FAILURE | %d %s |\n", len(failures), sample(failures))
	fmt.Printf("| reads of a build before repeating an update that may have arrived (a leader died or an answer was lost) | %d |\n", reads)
	return len(lost) == 0 && len(dup) == 0 && len(dupHost) == 0 && len(noHost) == 0 && len(failures) == 0 && failed == 0 &&
		len(noWaiting) == 0 && len(dupWaiting) == 0
}

// explainUnreported prints, for each scheduled build whose node was never
// reported, what its pod and Secret look like (diagnosis).
func explainUnreported(ctx context.Context, kube kubernetes.Interface, ns string, pods map[int64][]corev1.Pod, calls map[int64]ciCalls) {
	n := 0
	for id, ps := range pods {
		if len(ps) == 0 || ps[0].Spec.NodeName == "" || calls[id].hostname > 0 || n >= 10 {
			continue
		}
		n++
		p := ps[0]
		sec, err := kube.CoreV1().Secrets(ns).Get(ctx, executor.TokenSecretName(p.Name), metav1.GetOptions{})
		switch {
		case err != nil:
			logf("build %d: pod %s (uid %s, created %s) has no Secret: %v", id, p.Name, p.UID, p.CreationTimestamp.Format(time.RFC3339), err)
		default:
			owner := ""
			if len(sec.OwnerReferences) > 0 {
				owner = string(sec.OwnerReferences[0].UID)
			}
			logf("build %d: pod %s (uid %s, created %s), Secret created %s owned by uid %s", id, p.Name, p.UID,
				p.CreationTimestamp.Format(time.RFC3339), sec.CreationTimestamp.Format(time.RFC3339), owner)
		}
	}
}

func sample(ids []int64) string {
	if len(ids) == 0 {
		return ""
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	parts := make([]string, 0, 5)
	for _, id := range ids[:min(5, len(ids))] {
		parts = append(parts, strconv.FormatInt(id, 10))
	}
	return "(e.g. " + strings.Join(parts, ", ") + ")"
}

// ---- small things ----------------------------------------------------------------

func waitServiceAccount(ctx context.Context, kube kubernetes.Interface, ns string) error {
	for range 200 {
		if _, err := kube.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{}); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("namespace %s: no default ServiceAccount", ns)
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
