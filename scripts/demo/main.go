// Command demo drives `make demo`: it enqueues builds the way Screwdriver's
// queue-service does (buildConfigs hash + ids-only resque job), waits for the
// worker to turn them into pods, prints where each build went and why, shows
// the worker's metrics, then stops every build and waits for its pods to go.
// With -autopilot it plays the autopilot scene instead (autopilot.go): it
// runs the worker itself, configured by its own environment.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func main() {
	redisAddr := flag.String("redis", "127.0.0.1:6379", "Redis address")
	namespace := flag.String("resque-namespace", "resque", "resque namespace")
	prefix := flag.String("prefix", "demo_", "queue prefix (REDIS_QUEUE_PREFIX of the worker)")
	kubeNS := flag.String("kube-namespace", "qw-demo", "namespace the worker creates pods in")
	metricsURL := flag.String("metrics", "http://127.0.0.1:18080/metrics", "worker metrics URL")
	count := flag.Int("builds", 50, "number of builds to enqueue")
	reset := flag.Bool("reset", false, "only clear the demo's queue, hash and pods, and make sure its namespace exists")
	ciAddr := flag.String("ci-api", "127.0.0.1:18090", "address of the demo's stand-in CI API (it records the worker's build updates)")
	scene := flag.Bool("autopilot", false, "play the autopilot scene: run -worker (configured by this environment: REDIS_RESQUE_NAMESPACE, REDIS_QUEUE_PREFIX, K8S_JOBS_NAMESPACE, PORT, WEIGHT_K8S, ROUTING_AUTOPILOT_*), feed it builds and print the autopilot's decisions")
	workerBin := flag.String("worker", "bin/queue-worker", "queue-worker binary (-autopilot)")
	logDir := flag.String("log-dir", os.TempDir(), "where the worker logs go (-autopilot)")
	rate := flag.Float64("rate", 8, "builds enqueued per second (-autopilot)")
	timeout := flag.Duration("timeout", 90*time.Second, "longest wait for the rollout to the maximum, and again for the step back to the floor (-autopilot)")
	flag.Parse()
	var err error
	switch {
	case *scene:
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err = runAutopilotScene(ctx, sceneOptions{redisAddr: *redisAddr, ciAddr: *ciAddr, workerBin: *workerBin, logDir: *logDir, rate: *rate, timeout: *timeout})
		stop()
	case *reset:
		err = resetDemo(*redisAddr, *namespace, *prefix, *kubeNS)
	default:
		err = run(*redisAddr, *namespace, *prefix, *kubeNS, *metricsURL, *ciAddr, *count)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

type demoBuild struct {
	id          int64
	image       string
	annotations map[string]any
}

// builds mixes ordinary images, images the exclusion list sends to hyperd,
// and one build whose annotation forces its executor.
func builds(n int, base int64) []demoBuild {
	images := []string{"node:18", "golang:1.22", "python:3.12", "registry.example.com/sd/centos-rhel6:latest", "maven:3-jdk-11", "ruby:3.3"}
	out := make([]demoBuild, n)
	for i := range out {
		b := demoBuild{id: base + int64(i), image: images[i%len(images)]}
		switch i {
		case 7:
			b.annotations = map[string]any{"screwdriver.cd/executor": "k8s-vm", "screwdriver.cd/cpu": "HIGH"}
		case 8:
			b.annotations = map[string]any{"screwdriver.cd/executor": "k8s", "screwdriver.cd/ram": "TURBO"}
			b.image = "registry.example.com/sd/rhel6-legacy:2"
		}
		out[i] = b
	}
	return out
}

func clients(redisAddr string) (*redis.Client, kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", os.Getenv("KUBECONFIG"))
	if err != nil {
		return nil, nil, fmt.Errorf("kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 200, 400
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	return redis.NewClient(&redis.Options{Addr: redisAddr}), kube, nil
}

func resetDemo(redisAddr, ns, prefix, kubeNS string) error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rdb, kube, err := clients(redisAddr)
	if err != nil {
		return err
	}
	defer rdb.Close()
	if err := rdb.Del(ctx, ns+":queue:"+prefix+"builds", prefix+"buildConfigs").Err(); err != nil {
		return fmt.Errorf("clearing demo keys: %w", err)
	}
	_, err = kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: kubeNS}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", kubeNS, err)
	}
	sel := metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=queue-worker"}
	if err := kube.CoreV1().Pods(kubeNS).DeleteCollection(ctx, metav1.DeleteOptions{}, sel); err != nil {
		return fmt.Errorf("clearing old demo pods: %w", err)
	}
	return nil
}

func run(redisAddr, ns, prefix, kubeNS, metricsURL, ciAddr string, n int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	rdb, kube, err := clients(redisAddr)
	if err != nil {
		return err
	}
	defer rdb.Close()

	ci, err := startCIAPI(ciAddr)
	if err != nil {
		return err
	}
	defer ci.srv.Close()

	base := time.Now().Unix() % 1_000_000 * 100
	bs := builds(n, base)
	queueKey := ns + ":queue:" + prefix + "builds"
	q := producer{rdb: rdb, ns: ns, prefix: prefix, apiURI: "http://" + ciAddr + "/", eventID: base}
	fmt.Printf("enqueueing %d builds into %s (buildConfigs hash %sbuildConfigs), plus one job of an unknown class\n", n, queueKey, prefix)
	for _, b := range bs {
		// Each build its own job: none waits for another here (see gateDemo).
		if err := q.start(ctx, b, b.id); err != nil {
			return err
		}
	}
	bad := fmt.Sprintf(`{"class":"rebuild","queue":"%sbuilds","args":[{"buildId":%d}]}`, prefix, base+999)
	if err := rdb.RPush(ctx, queueKey, bad).Err(); err != nil {
		return err
	}

	fmt.Println("waiting for every build's pod to be scheduled...")
	start := time.Now()
	var pods map[int64]corev1.Pod
	for {
		pods, err = buildPods(ctx, kube, kubeNS, bs)
		if err != nil {
			return err
		}
		scheduled := 0
		for _, p := range pods {
			if p.Spec.NodeName != "" {
				scheduled++
			}
		}
		if scheduled == n {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("only %d of %d pods scheduled before the deadline", scheduled, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("all %d pods scheduled in %.1fs\n\n", n, time.Since(start).Seconds())

	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "BUILD\tIMAGE\tRUNTIME\tRULE\tWHY\tPOD\tNODE\tPHASE")
	for _, b := range bs {
		p := pods[b.id]
		why := p.Annotations["queue-worker.screwdriver.cd/matched-pattern"]
		if bk, ok := p.Annotations["queue-worker.screwdriver.cd/bucket"]; ok {
			why = "bucket " + bk + " vs " + p.Annotations["queue-worker.screwdriver.cd/kata-basis-points"]
		}
		if why == "" && b.annotations != nil {
			why = fmt.Sprint("executor=", b.annotations["screwdriver.cd/executor"])
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", b.id, b.image, p.Labels["queue-worker.screwdriver.cd/runtime"],
			p.Annotations["queue-worker.screwdriver.cd/rule"], why, p.Name, p.Spec.NodeName, p.Status.Phase)
	}
	tw.Flush()

	failed, _ := rdb.LRange(ctx, ns+":failed", -1, -1).Result()
	if len(failed) == 1 {
		fmt.Printf("\nthe unknown-class job is in %s:failed:\n  %s\n", ns, failed[0])
	}

	fmt.Println("\nwaiting for the supervisor to see every pod running and report it to the CI API...")
	for ci.hostnames() < n && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Printf("CI API received %d build updates: %s\n", ci.count(), ci.summary())
	for setupCount(ctx, metricsURL) < n && ctx.Err() == nil {
		time.Sleep(200 * time.Millisecond)
	}

	if err := gateDemo(ctx, q, kube, kubeNS, ci, base+500); err != nil {
		return err
	}

	fmt.Println("\nworker metrics:")
	if err := printMetrics(ctx, metricsURL); err != nil {
		return err
	}
	printSetup(ctx, metricsURL)

	fmt.Printf("\nstopping all %d builds through the queue...\n", n)
	for _, b := range bs {
		if err := q.stop(ctx, b.id, b.id); err != nil {
			return err
		}
	}
	for {
		left, err := buildPods(ctx, kube, kubeNS, bs)
		if err != nil {
			return err
		}
		if len(left) == 0 {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%d pods left after stop", len(left))
		}
		time.Sleep(200 * time.Millisecond)
	}
	fmt.Println("all build pods deleted")
	return nil
}

func buildPods(ctx context.Context, kube kubernetes.Interface, ns string, bs []demoBuild) (map[int64]corev1.Pod, error) {
	l, err := kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=queue-worker"})
	if err != nil {
		return nil, fmt.Errorf("listing pods: %w", err)
	}
	want := map[string]int64{}
	for _, b := range bs {
		want[strconv.FormatInt(b.id, 10)] = b.id
	}
	out := map[int64]corev1.Pod{}
	for _, p := range l.Items {
		if id, ok := want[p.Labels["sdbuild"]]; ok && p.DeletionTimestamp == nil {
			out[id] = p
		}
	}
	return out, nil
}

// printMetrics shows the worker's own series, without Go runtime noise.
func printMetrics(ctx context.Context, url string) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("reading worker metrics: %w", err)
	}
	defer resp.Body.Close()
	var lines []string
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "#") || !strings.HasPrefix(l, "queue_worker_") || strings.Contains(l, "_bucket{") || strings.HasSuffix(l, " 0") {
			continue
		}
		lines = append(lines, "  "+l)
	}
	sort.Strings(lines)
	fmt.Println(strings.Join(lines, "\n"))
	return sc.Err()
}

// producer writes what Screwdriver's queue-service writes for a start or a
// stop: the build config into the buildConfigs hash and an ids-only job
// (node-resque's bytes), or queue-service's abort mark and a stop job.
type producer struct {
	rdb                *redis.Client
	ns, prefix, apiURI string
	eventID            int64
}

func (q producer) start(ctx context.Context, b demoBuild, jobID int64, blockedBy ...int64) error {
	by := append([]int64{jobID}, blockedBy...)
	cfg := map[string]any{
		"buildId": b.id, "jobId": jobID, "eventId": q.eventID, "jobName": "main", "pipelineId": 42, "blockedBy": by,
		"pipeline": map[string]any{"id": 42, "name": "demo/repo", "scmContext": "github:github.com"},
		"apiUri":   q.apiURI, "container": b.image, "token": "demo-token-" + strconv.FormatInt(b.id, 10),
		"annotations": b.annotations,
	}
	raw, _ := json.Marshal(cfg)
	job := fmt.Sprintf(`{"class":"start","queue":"%sbuilds","args":[{"buildId":%d,"jobId":%d,"blockedBy":"%s","blockedBySameJob":true,"blockedBySameJobWaitTime":5}]}`,
		q.prefix, b.id, jobID, joinIDs(by))
	_, err := q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, q.prefix+"buildConfigs", strconv.FormatInt(b.id, 10), raw)
		p.SAdd(ctx, q.ns+":queues", q.prefix+"builds")
		p.RPush(ctx, q.ns+":queue:"+q.prefix+"builds", job)
		return nil
	})
	if err != nil {
		return fmt.Errorf("enqueueing build %d: %w", b.id, err)
	}
	return nil
}

func (q producer) stop(ctx context.Context, buildID, jobID int64) error {
	job := fmt.Sprintf(`{"class":"stop","queue":"%sbuilds","args":[{"buildId":%d,"jobId":%d,"blockedBy":"%d","started":true}]}`, q.prefix, buildID, jobID, jobID)
	_, err := q.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, fmt.Sprintf("deleted_%d_%d", jobID, buildID), "", 30*time.Minute)
		p.RPush(ctx, q.ns+":queue:"+q.prefix+"builds", job)
		return nil
	})
	if err != nil {
		return fmt.Errorf("stopping build %d: %w", buildID, err)
	}
	return nil
}

func joinIDs(ids []int64) string {
	parts := make([]string, len(ids))
	for i, id := range ids {
		parts[i] = strconv.FormatInt(id, 10)
	}
	return strings.Join(parts, ",")
}

// gateDemo shows queue-service's blockedBy and collapse: a deploy build of
// job D runs; two builds of job E, blocked by D, wait (BLOCKED); once D's
// build stops, the newer E build runs and the older one is COLLAPSED.
func gateDemo(ctx context.Context, q producer, kube kubernetes.Interface, kubeNS string, ci *ciAPI, base int64) error {
	jobD, jobE := base, base+1
	d1 := demoBuild{id: base + 10, image: "alpine:3"}
	e1, e2 := demoBuild{id: base + 11, image: "alpine:3"}, demoBuild{id: base + 12, image: "alpine:3"}
	all := []demoBuild{d1, e1, e2}
	fmt.Printf("\nblockedBy and collapse: build %d of job %d (deploy) runs; builds %d and %d of job %d are blocked by job %d\n",
		d1.id, jobD, e1.id, e2.id, jobE, jobD)
	if err := q.start(ctx, d1, jobD); err != nil {
		return err
	}
	if err := waitFor(ctx, "build "+strconv.FormatInt(d1.id, 10)+"'s pod", func() (bool, error) {
		p, err := buildPods(ctx, kube, kubeNS, []demoBuild{d1})
		return len(p) == 1, err
	}); err != nil {
		return err
	}
	for _, e := range []demoBuild{e1, e2} {
		if err := q.start(ctx, e, jobE, jobD); err != nil {
			return err
		}
		if err := waitFor(ctx, "BLOCKED for build "+strconv.FormatInt(e.id, 10), func() (bool, error) {
			return ci.lastStatus(e.id) == "BLOCKED", nil
		}); err != nil {
			return err
		}
	}
	printGate(ci, all)
	fmt.Printf("stopping build %d; the job's waiting builds are tried again within the re-enqueue wait\n", d1.id)
	if err := q.stop(ctx, d1.id, jobD); err != nil {
		return err
	}
	if err := waitFor(ctx, "build "+strconv.FormatInt(e2.id, 10)+"'s pod and "+strconv.FormatInt(e1.id, 10)+" COLLAPSED", func() (bool, error) {
		p, err := buildPods(ctx, kube, kubeNS, []demoBuild{e2})
		return len(p) == 1 && ci.lastStatus(e1.id) == "COLLAPSED", err
	}); err != nil {
		return err
	}
	pods, err := buildPods(ctx, kube, kubeNS, all)
	if err != nil {
		return err
	}
	printGate(ci, all)
	for _, b := range all {
		if _, ok := pods[b.id]; ok {
			fmt.Printf("  build %d has pod %s\n", b.id, pods[b.id].Name)
		}
	}
	if _, ok := pods[e1.id]; ok {
		return fmt.Errorf("collapsed build %d has a pod", e1.id)
	}
	return q.stop(ctx, e2.id, jobE)
}

func printGate(ci *ciAPI, bs []demoBuild) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  BUILD\tLAST STATUS TO THE CI API\tMESSAGE")
	for _, b := range bs {
		st, msg := ci.last(b.id)
		if st == "" {
			st = "(running: no status update from the worker)"
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\n", b.id, st, msg)
	}
	tw.Flush()
}

func waitFor(ctx context.Context, what string, cond func() (bool, error)) error {
	for {
		ok, err := cond()
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("waiting for %s: %w", what, ctx.Err())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// ciAPI stands in for Screwdriver's API: it records PUT /v4/builds/<id>.
type ciAPI struct {
	srv     *http.Server
	mu      sync.Mutex
	updates []map[string]any
	// byBuild holds each build's status updates, in order.
	byBuild map[int64][]map[string]any
}

// last is the build's last status update (status and message).
func (c *ciAPI) last(build int64) (string, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.byBuild[build]) - 1; i >= 0; i-- {
		if st, ok := c.byBuild[build][i]["status"].(string); ok {
			msg, _ := c.byBuild[build][i]["statusMessage"].(string)
			return st, msg
		}
	}
	return "", ""
}

func (c *ciAPI) lastStatus(build int64) string {
	st, _ := c.last(build)
	return st
}

func startCIAPI(addr string) (*ciAPI, error) {
	c := &ciAPI{byBuild: map[int64][]map[string]any{}}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("starting the stand-in CI API on %s: %w", addr, err)
	}
	c.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		id, _ := strconv.ParseInt(strings.TrimPrefix(r.URL.Path, "/v4/builds/"), 10, 64)
		c.mu.Lock()
		c.updates = append(c.updates, body)
		c.byBuild[id] = append(c.byBuild[id], body)
		c.mu.Unlock()
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("{}"))
	})}
	go func() { _ = c.srv.Serve(ln) }()
	return c, nil
}

func (c *ciAPI) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.updates)
}

func (c *ciAPI) hostnames() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, u := range c.updates {
		if _, ok := u["stats"]; ok {
			n++
		}
	}
	return n
}

func (c *ciAPI) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	kinds := map[string]int{}
	for _, u := range c.updates {
		switch {
		case u["status"] != nil:
			kinds["status "+fmt.Sprint(u["status"])]++
		case u["stats"] != nil:
			kinds["stats.hostname"]++
		default:
			kinds["statusMessage"]++
		}
	}
	var parts []string
	for k, v := range kinds {
		parts = append(parts, fmt.Sprintf("%d × %s", v, k))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// setupCount is how many pod setups the worker has measured so far.
func setupCount(ctx context.Context, url string) int {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	total := 0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		if strings.HasPrefix(l, "queue_worker_pod_setup_seconds_count{") && strings.Contains(l, `phase="total"`) {
			f := strings.Fields(l)
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			total += int(v)
		}
	}
	return total
}

// printSetup shows the mean pod setup time per runtime and phase, from the
// queue_worker_pod_setup_seconds histogram (kwok nodes start pods at once, so
// these are control-plane numbers, not a real Kata VM boot).
func printSetup(ctx context.Context, url string) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return
	}
	defer resp.Body.Close()
	sums, counts := map[string]float64{}, map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		l := sc.Text()
		for suffix, m := range map[string]map[string]float64{"_sum{": sums, "_count{": counts} {
			if p := "queue_worker_pod_setup_seconds" + suffix; strings.HasPrefix(l, p) {
				f := strings.Fields(l)
				v, _ := strconv.ParseFloat(f[len(f)-1], 64)
				m[strings.TrimPrefix(f[0], p[:len(p)-1])] = v
			}
		}
	}
	fmt.Println("\npod setup time by runtime and phase (mean seconds, from queue_worker_pod_setup_seconds):")
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RUNTIME\tPHASE\tPODS\tMEAN")
	var keys []string
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if counts[k] == 0 {
			continue
		}
		rt, phase := labelValue(k, "runtime"), labelValue(k, "phase")
		fmt.Fprintf(tw, "%s\t%s\t%.0f\t%.3fs\n", rt, phase, counts[k], sums[k]/counts[k])
	}
	tw.Flush()
}

func labelValue(labels, name string) string {
	i := strings.Index(labels, name+`="`)
	if i < 0 {
		return ""
	}
	rest := labels[i+len(name)+2:]
	return rest[:strings.IndexByte(rest, '"')]
}
