package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/testbed/proc"
)

// outage is how long each dependency stays down. 60 s is longer than every
// timeout and breaker period of the daemon, so the daemon must ride out a
// dependency that is really gone, not a blip.
const outage = 60 * time.Second

// outageBed is one daemon on its own Redis namespace and jobs namespace,
// with builds enqueued as queue-service does.
type outageBed struct {
	t      *testing.T
	rdb    *redis.Client
	keys   queue.Keys
	prefix string
	kube   kubernetes.Interface
	ns     string
	ci     *testbed.FakeAPI
	d      *daemon
}

// enqueue adds builds the way queue-service does: the config in the
// buildConfigs hash, an ids-only start job.
func (b *outageBed) enqueue(ids ...int64) {
	b.t.Helper()
	for _, id := range ids {
		cfg, _ := json.Marshal(map[string]any{"buildId": id, "jobId": id, "pipelineId": 42, "pipeline": map[string]any{"id": 42},
			"apiUri": b.ci.URL(), "container": "node:18", "token": "jwt-" + strconv.FormatInt(id, 10)})
		ctx := context.Background()
		if err := b.rdb.HSet(ctx, b.prefix+"buildConfigs", strconv.FormatInt(id, 10), cfg).Err(); err != nil {
			b.t.Fatal(err)
		}
		job := fmt.Sprintf(`{"class":"start","queue":"%sbuilds","args":[{"buildId":%d,"jobId":%d}]}`, b.prefix, id, id)
		if err := b.rdb.RPush(ctx, b.keys.Queue(b.prefix+"builds"), job).Err(); err != nil {
			b.t.Fatal(err)
		}
	}
}

func (b *outageBed) get(path string) (int, string) {
	resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(b.d.port) + path)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

func (b *outageBed) ready() (bool, string) {
	code, body := b.get("/readyz")
	return code == http.StatusOK, body
}

func (b *outageBed) metric(series string) float64 {
	_, body := b.get("/metrics")
	for _, line := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return -1
}

// waitNotReady waits until /readyz fails with a body naming check.
func (b *outageBed) waitNotReady(check string) {
	b.t.Helper()
	var body string
	testbed.Eventually(b.t, 45*time.Second, "readiness fails on "+check, func() bool {
		var ok bool
		ok, body = b.ready()
		return !ok && strings.Contains(body, check+":") && !strings.Contains(body, check+": ok")
	})
	b.t.Logf("not ready while %s is down:\n%s", check, body)
}

func (b *outageBed) waitReady() {
	b.t.Helper()
	testbed.Eventually(b.t, 90*time.Second, "ready again, without a restart", func() bool { ok, _ := b.ready(); return ok })
}

// settled checks every build ended as if nothing had happened: exactly one
// pod, its node reported exactly once, no FAILURE, nothing in the failed
// list or left in the queue.
func (b *outageBed) settled(ids []int64, within time.Duration) {
	b.t.Helper()
	ctx := context.Background()
	testbed.Eventually(b.t, within, "every build has one pod and its node reported", func() bool {
		for _, id := range ids {
			l, err := b.kube.CoreV1().Pods(b.ns).List(ctx, metav1.ListOptions{LabelSelector: executor.LabelBuild + "=" + strconv.FormatInt(id, 10)})
			if err != nil || len(l.Items) != 1 || l.Items[0].Status.Phase != corev1.PodRunning || hostnameReports(b.ci, id) == 0 {
				return false
			}
		}
		return true
	})
	time.Sleep(3 * time.Second) // a duplicate report would show now
	for _, id := range ids {
		if n := hostnameReports(b.ci, id); n != 1 {
			b.t.Errorf("build %d: node reported %d times", id, n)
		}
		for _, r := range b.ci.RequestsFor(id) {
			if r.Body["status"] == "FAILURE" {
				b.t.Errorf("build %d reported FAILURE: %s", id, r.Raw)
			}
		}
	}
	if n := b.rdb.LLen(ctx, b.keys.Failed()).Val(); n != 0 {
		b.t.Errorf("%d jobs in the failed list: %v", n, b.rdb.LRange(ctx, b.keys.Failed(), 0, -1).Val())
	}
	if n := b.rdb.LLen(ctx, b.keys.Queue(b.prefix+"builds")).Val(); n != 0 {
		b.t.Errorf("%d jobs left in the queue", n)
	}
}

// hostnameReports counts the node reports the CI API accepted (requests
// dropped while it was down never reached it).
func hostnameReports(ci *testbed.FakeAPI, id int64) int {
	n := 0
	for _, r := range ci.RequestsFor(id) {
		if s, ok := r.Body["stats"].(map[string]any); ok && s["hostname"] != nil && r.Status/100 == 2 {
			n++
		}
	}
	return n
}

// newOutageBed starts a daemon whose Redis and apiserver connections may
// go through the given addresses (empty: the shared test servers).
func newOutageBed(t *testing.T, name string, rdb *redis.Client, redisAddr, kubeconfig string) *outageBed {
	t.Helper()
	_, rns, prefix := testbed.Redis(t) // a namespace nobody else uses
	if rdb == nil {
		rdb = redis.NewClient(&redis.Options{Addr: testbed.RedisAddr()})
		t.Cleanup(func() { _ = rdb.Close() })
		redisAddr = testbed.RedisAddr()
	}
	kube, ns := testbed.Kube(t)
	ci := testbed.FakeCIAPI(t)
	if kubeconfig == "" {
		kubeconfig = os.Getenv(testbed.KubeconfigEnv)
	}
	host, port, _ := strings.Cut(redisAddr, ":")
	env := map[string]string{
		"KUBECONFIG": kubeconfig, "K8S_JOBS_NAMESPACE": ns,
		"REDIS_HOST": host, "REDIS_PORT": port, "REDIS_RESQUE_NAMESPACE": rns, "REDIS_QUEUE_PREFIX": prefix,
		"WEIGHT_K8S": "100", "ECOSYSTEM_API": ci.URL(),
		// One replica: no need to wait for a Lease at start.
		"SUPERVISOR_LEADER_ELECTION": "false",
	}
	d := startDaemon(t, name, env)
	return &outageBed{t: t, rdb: rdb, keys: queue.NewKeys(rns), prefix: prefix, kube: kube, ns: ns, ci: ci, d: d}
}

// Each dependency goes away for a minute while builds keep coming; the
// daemon stays up, says it is not ready while the dependency is gone, and
// afterwards every build has exactly one pod and one node report, none
// failed, none reported twice, with no restart.
func TestOutage_RedisStoppedAMinute(t *testing.T) {
	t.Parallel()
	r, err := proc.StartRedis(proc.RedisOptions{AppendOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	b := newOutageBed(t, "redis-outage", r.Client, r.Addr(), "")
	before := []int64{9101, 9102, 9103}
	b.enqueue(before...)
	b.settled(before, 60*time.Second)

	// AOF is fsynced every second: what was written before the kill
	// survives it.
	time.Sleep(1500 * time.Millisecond)
	r.Kill()
	b.waitNotReady("redis")
	time.Sleep(outage)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	b.waitReady()
	after := []int64{9104, 9105, 9106}
	b.enqueue(after...)
	b.settled(append(before, after...), 90*time.Second)
}

func TestOutage_APIServerGoneAMinute(t *testing.T) {
	t.Parallel()
	rc := testbed.RestConfig(t)
	target := strings.TrimPrefix(rc.Host, "https://")
	p, err := proc.StartProxy(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Down)
	// The daemon's kubeconfig points at the proxy: cutting it is, to the
	// daemon, the apiserver going away (refused connections, broken watches).
	kc, err := clientcmd.LoadFromFile(os.Getenv(testbed.KubeconfigEnv))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range kc.Clusters {
		c.Server = "https://" + p.Addr()
	}
	path := t.TempDir() + "/kubeconfig"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	b := newOutageBed(t, "apiserver-outage", nil, "", path)
	before := []int64{9201, 9202, 9203}
	b.enqueue(before...)
	b.settled(before, 60*time.Second)

	p.Down()
	b.waitNotReady("kubernetes")
	during := []int64{9204, 9205, 9206}
	b.enqueue(during...) // postponed while the apiserver is gone, never failed
	testbed.Eventually(t, 45*time.Second, "the Kubernetes breaker opens", func() bool {
		return b.metric(`queue_worker_breaker_state{name="kubernetes"}`) == 2
	})
	time.Sleep(outage)
	if err := p.Up(); err != nil {
		t.Fatal(err)
	}
	b.waitReady()
	after := []int64{9207, 9208, 9209}
	b.enqueue(after...)
	b.settled(append(append(before, during...), after...), 120*time.Second)
	if s := b.metric(`queue_worker_breaker_state{name="kubernetes"}`); s != 0 {
		t.Errorf("Kubernetes breaker state %v after recovery, want 0 (closed)", s)
	}
}

func TestOutage_CIAPIDownAMinute(t *testing.T) {
	t.Parallel()
	b := newOutageBed(t, "ciapi-outage", nil, "", "")
	before := []int64{9301, 9302}
	b.enqueue(before...)
	b.settled(before, 60*time.Second)

	b.ci.Down()
	during := []int64{9303, 9304, 9305}
	b.enqueue(during...) // pods start; their node reports wait
	b.waitNotReady("ci-api")
	time.Sleep(outage)
	b.ci.Up()
	b.waitReady()
	b.settled(append(before, during...), 150*time.Second)
}
