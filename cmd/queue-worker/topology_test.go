package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// topologyJobs is how many start jobs each topology run consumes.
const topologyJobs = 200

// loadConfigEnv loads the shipped config with env as the only environment.
func loadConfigEnv(env map[string]string) (*config.Config, error) {
	return config.Load(config.LoadOptions{
		DefaultsFile: "../../config/default.yaml",
		EnvMapFile:   "../../config/custom-environment-variables.yaml",
		Getenv:       func(k string) string { return env[k] },
	})
}

// withEnv is base plus extra (extra wins).
func withEnv(base map[string]string, extra map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range base {
		out[k] = v
	}
	for k, v := range extra {
		out[k] = v
	}
	return out
}

// answeringPort is the tcp_port of the server that answered rdb (for a
// cluster client, the node owning key's slot).
func answeringPort(ctx context.Context, rdb redis.UniversalClient, key string) (string, error) {
	var info string
	var err error
	if c, ok := rdb.(*redis.ClusterClient); ok {
		var node *redis.Client
		if node, err = c.MasterForKey(ctx, key); err != nil {
			return "", err
		}
		info, err = node.Info(ctx, "server").Result()
	} else {
		info, err = rdb.Info(ctx, "server").Result()
	}
	if err != nil {
		return "", err
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "tcp_port:"); ok {
			return v, nil
		}
	}
	return "", fmt.Errorf("no tcp_port in INFO server")
}

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// REDIS_TYPE unset (or redis) means the one server of REDIS_HOST and
// REDIS_PORT, even with cluster hosts configured.
func TestTopology_RedisTypeDefaultIsOneServer(t *testing.T) {
	host, port, _ := net.SplitHostPort(testbed.RedisAddr())
	for _, typ := range []string{"", "redis"} {
		t.Run("REDIS_TYPE="+typ, func(t *testing.T) {
			cfg, err := loadConfigEnv(map[string]string{"REDIS_TYPE": typ, "REDIS_HOST": host, "REDIS_PORT": port,
				"REDIS_CLUSTER_HOSTS": `["127.0.0.1:1"]`, "REDIS_SENTINEL_MASTER_NAME": "nobody"})
			if err != nil {
				t.Fatal(err)
			}
			rdb := newRedis(cfg)
			defer rdb.Close()
			if _, ok := rdb.(*redis.Client); !ok {
				t.Fatalf("client is %T, want *redis.Client", rdb)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			got, err := answeringPort(ctx, rdb, "k")
			if err != nil || got != port {
				t.Fatalf("answered by port %q (%v), want %s", got, err, port)
			}
		})
	}
}

// One Sentinel set (passwords on the sentinels and on the data nodes,
// different ones) serves the checks in order; the failover comes last.
func TestTopology_Sentinel(t *testing.T) {
	tp := testbed.SentinelSet(t)
	if tp.SentinelPassword == "" || tp.SentinelPassword == tp.Password {
		t.Fatalf("the bed must give the sentinels their own password")
	}

	t.Run("RedisTypeSelectsTheSentinelsPrimary", func(t *testing.T) {
		cfg, err := loadConfigEnv(tp.Env)
		if err != nil {
			t.Fatal(err)
		}
		if cfg.Queue.ConnectionType != "redisSentinel" {
			t.Fatalf("connectionType %q", cfg.Queue.ConnectionType)
		}
		rdb := newRedis(cfg)
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		primary, err := tp.Primary(ctx)
		if err != nil {
			t.Fatal(err)
		}
		got, err := answeringPort(ctx, rdb, "k")
		if err != nil || got != portOf(primary) {
			t.Fatalf("answered by port %q (%v), want the primary %s", got, err, primary)
		}
	})

	t.Run("SentinelPasswordIsSeparateFromTheDataPassword", func(t *testing.T) {
		tests := []struct {
			name     string
			env      map[string]string
			wantErr  string // "" = the primary answers
			dropKeys []string
		}{
			{name: "BothPasswords", env: tp.Env},
			{name: "NoSentinelPassword", env: tp.Env, dropKeys: []string{"REDIS_SENTINEL_PASSWORD"}, wantErr: "NOAUTH"},
			{name: "DataPasswordSentToSentinels", env: withEnv(tp.Env, map[string]string{"REDIS_SENTINEL_PASSWORD": tp.Password}), wantErr: "WRONGPASS"},
			{name: "NoDataPassword", env: tp.Env, dropKeys: []string{"REDIS_PASSWORD"}, wantErr: "NOAUTH"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				env := withEnv(tt.env, nil)
				for _, k := range tt.dropKeys {
					delete(env, k)
				}
				cfg, err := loadConfigEnv(env)
				if err != nil {
					t.Fatal(err)
				}
				rdb := newRedis(cfg)
				defer rdb.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				err = rdb.Ping(ctx).Err()
				switch {
				case tt.wantErr == "" && err != nil:
					t.Fatalf("PING: %v", err)
				case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
					t.Fatalf("PING: %v, want an error with %q", err, tt.wantErr)
				}
			})
		}
	})

	t.Run("FailoverMidRunLosesNoJob", func(t *testing.T) {
		run := startTopologyRun(t, tp.Client(t), tp.Env, "")
		// The daemon's Kubernetes client is throttled so the run lasts
		// about 10s and the failover lands in the middle of it.
		testbed.Eventually(t, 30*time.Second, "a fifth of the builds started", func() bool {
			return run.podCount(t) >= topologyJobs/5
		})
		old := tp.StartFailover(t)
		t.Logf("failover from %s started with %d builds started", old, run.podCount(t))
		primary := tp.WaitFailedOver(t, old, 40*time.Second)
		t.Logf("failed over to %s with %d builds started", primary, run.podCount(t))
		if run.podCount(t) == topologyJobs {
			t.Errorf("every build had started before the failover completed: the run is too fast to test a failover mid-run")
		}
		run.waitEveryJobDoneOnce(t, 45*time.Second)
		run.logWarnings(t)
	})
}

// One Redis Cluster serves the checks in order.
func TestTopology_Cluster(t *testing.T) {
	tp := testbed.RedisCluster(t)

	t.Run("RedisTypeSelectsTheCluster", func(t *testing.T) {
		cfg, err := loadConfigEnv(tp.Env)
		if err != nil {
			t.Fatal(err)
		}
		rdb := newRedis(cfg)
		defer rdb.Close()
		c, ok := rdb.(*redis.ClusterClient)
		if !ok {
			t.Fatalf("client is %T, want *redis.ClusterClient", rdb)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// Keys of different slots answered by different primaries: the
		// client routes by slot, so it is a cluster client of this cluster.
		ports := map[string]bool{}
		for i := range 30 {
			p, err := answeringPort(ctx, c, "k"+strconv.Itoa(i))
			if err != nil {
				t.Fatal(err)
			}
			ports[p] = true
		}
		for _, n := range tp.DataNodes {
			if !ports[portOf(n)] {
				t.Fatalf("no key answered by %s (answered by %v)", n, ports)
			}
		}
	})

	t.Run("UntaggedNamespaceRefusedAtStart", func(t *testing.T) {
		bin, err := daemonBinary()
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, bin, "run", "--config-dir", "../../config")
		cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "REDIS_RESQUE_NAMESPACE=resque:screwdriver"}
		for k, v := range tp.Env {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
		out, err := cmd.CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 1 {
			t.Fatalf("exit: %v, want status 1\n%s", err, out)
		}
		for _, want := range []string{`"queue.namespace" (from env REDIS_RESQUE_NAMESPACE)`, "hash tag"} {
			if !strings.Contains(string(out), want) {
				t.Fatalf("output lacks %q:\n%s", want, out)
			}
		}
	})

	t.Run("SlotsRefreshTimeoutBoundsEachNode", func(t *testing.T) {
		silent, contacted := silentNode(t)
		// loadSlots times the first slot-table load of the daemon's client
		// for hosts. ForEachMaster loads the table and nothing else (a first
		// keyed command would also load command metadata from a random
		// node, under the operation timeout).
		loadSlots := func(t *testing.T, refresh string, hosts ...string) (time.Duration, error) {
			t.Helper()
			cfg, err := loadConfigEnv(withEnv(tp.Env, map[string]string{
				"REDIS_CLUSTER_HOSTS":                 `["` + strings.Join(hosts, `","`) + `"]`,
				"REDIS_CLUSTER_SLOTS_REFRESH_TIMEOUT": refresh,
				"QUEUE_OPERATION_TIMEOUT":             "2s",
			}))
			if err != nil {
				t.Fatal(err)
			}
			rdb := newRedis(cfg)
			defer rdb.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			start := time.Now()
			err = rdb.(*redis.ClusterClient).ForEachMaster(ctx, func(context.Context, *redis.Client) error { return nil })
			return time.Since(start), err
		}

		t.Run("ZeroLeavesItToTheOperationTimeout", func(t *testing.T) {
			// What the key changes: without it a silent node holds the load
			// for the operation timeout (2s; ForEachMaster loads twice).
			took, err := loadSlots(t, "0", silent)
			if err == nil || took < 1900*time.Millisecond {
				t.Fatalf("load took %v and returned %v, want an error after at least 2s", took, err)
			}
		})
		t.Run("SilentNodeGivenUpAfterTheTimeout", func(t *testing.T) {
			took, err := loadSlots(t, "300", silent)
			if err == nil || !strings.Contains(err.Error(), "slotsRefreshTimeout 300ms") || took > 1500*time.Millisecond {
				t.Fatalf("load took %v and returned %v, want the slotsRefreshTimeout error within twice 300ms", took, err)
			}
		})
		t.Run("NextNodeAskedAfterASilentOne", func(t *testing.T) {
			// go-redis asks the seeds in random order: load until the silent
			// one was asked first.
			for range 30 {
				before := contacted()
				took, err := loadSlots(t, "300", silent, tp.DataNodes[0])
				if err != nil || took > 1500*time.Millisecond {
					t.Fatalf("load took %v and returned %v, want the table from the second seed within 1.5s", took, err)
				}
				if contacted() > before {
					return
				}
			}
			t.Fatal("the silent seed was never asked first in 30 loads")
		})
	})

	t.Run("HashTaggedNamespaceRunsEveryJobOnce", func(t *testing.T) {
		id := testbed.Suffix()
		rns := "resque:{qwtest-" + id + "}"
		run := startTopologyRun(t, tp.Client(t), tp.Env, rns)
		run.waitEveryJobDoneOnce(t, 60*time.Second)
		// Every key of the namespace sits on the one node of its tag.
		c := run.rdb.(*redis.ClusterClient)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var nodes atomic.Int32
		err := c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error {
			keys, _, err := m.Scan(ctx, 0, rns+":*", 1000).Result()
			if len(keys) > 0 {
				nodes.Add(1)
			}
			return err
		})
		if err != nil || nodes.Load() != 1 {
			t.Fatalf("the namespace's keys are on %d nodes (%v), want 1", nodes.Load(), err)
		}
	})
}

// topologyRun is one daemon consuming topologyJobs start jobs through a
// topology, each build its own id.
type topologyRun struct {
	rdb    redis.UniversalClient
	keys   queue.Keys
	prefix string
	kube   kubernetes.Interface
	ns     string
	ci     *testbed.FakeAPI
	d      *daemon
}

// startTopologyRun starts a daemon on the topology of env and queues the
// jobs (through rdb, a client of the same topology). rns "" picks a private
// untagged namespace.
func startTopologyRun(t *testing.T, rdb redis.UniversalClient, env map[string]string, rns string) *topologyRun {
	t.Helper()
	id := testbed.Suffix()
	if rns == "" {
		rns = "qwtest-" + id
	}
	r := &topologyRun{rdb: rdb, keys: queue.NewKeys(rns), prefix: "qwtest" + id + "_", ci: testbed.FakeCIAPI(t)}
	r.kube, r.ns = testbed.Kube(t)
	r.d = startDaemon(t, "daemon", withEnv(env, map[string]string{
		"KUBECONFIG":             os.Getenv(testbed.KubeconfigEnv),
		"K8S_JOBS_NAMESPACE":     r.ns,
		"REDIS_RESQUE_NAMESPACE": rns,
		"REDIS_QUEUE_PREFIX":     r.prefix,
		"ECOSYSTEM_API":          r.ci.URL(),
		"WORKER_CONCURRENCY":     "8",
		// Two API writes per build (pod, Secret): about 20 builds a second.
		"K8S_CLIENT_QPS":   "40",
		"K8S_CLIENT_BURST": "10",
		// A slot that lost its lease in the failover gives its job back
		// within seconds.
		"QUEUE_LEASE_DURATION":   "6s",
		"QUEUE_RECOVER_INTERVAL": "1s",
	}))

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	pipe := rdb.Pipeline()
	for i := 1; i <= topologyJobs; i++ {
		buildID := 9000 + i
		pipe.RPush(ctx, r.keys.Queue(r.prefix+"builds"), fmt.Sprintf(
			`{"class":"start","queue":"%sbuilds","args":[{"buildId":%d,"jobId":%d,"container":"node:22","apiUri":%q,"token":"jwt-%d","pipeline":{"id":42}}]}`,
			r.prefix, buildID, 90000+i, r.ci.URL(), buildID))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatalf("queueing the jobs: %v", err)
	}
	if c, ok := rdb.(*redis.Client); ok {
		// Replicated before anything fails over: a job the test itself
		// lost would say nothing about the daemon.
		n, err := c.Wait(ctx, 1, 5*time.Second).Result()
		if err != nil || n < 1 {
			t.Fatalf("WAIT for the replica: %d, %v", n, err)
		}
	}
	return r
}

// podsByBuild counts the build pods of the run by build id.
func (r *topologyRun) podsByBuild(t *testing.T) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	l, err := r.kube.CoreV1().Pods(r.ns).List(ctx, metav1.ListOptions{LabelSelector: executor.LabelBuild})
	if err != nil {
		t.Fatalf("listing build pods: %v", err)
	}
	out := map[string]int{}
	for _, p := range l.Items {
		out[p.Labels[executor.LabelBuild]]++
	}
	return out
}

func (r *topologyRun) podCount(t *testing.T) int {
	n := 0
	for _, c := range r.podsByBuild(t) {
		n += c
	}
	return n
}

// leftovers says what of the run is still in Redis: jobs in the queue, in
// any in-flight list (on every primary), in the failed list, or scheduled.
func (r *topologyRun) leftovers(ctx context.Context) (string, error) {
	var parts []string
	q, err := r.rdb.LLen(ctx, r.keys.Queue(r.prefix+"builds")).Result()
	if err != nil {
		return "", err
	}
	failed, err := r.rdb.LLen(ctx, r.keys.Failed()).Result()
	if err != nil {
		return "", err
	}
	delayed, err := r.rdb.ZCard(ctx, r.keys.DelayedSchedule()).Result()
	if err != nil {
		return "", err
	}
	if q+failed+delayed > 0 {
		parts = append(parts, fmt.Sprintf("queue %d, failed %d, delayed timestamps %d", q, failed, delayed))
	}
	var mu sync.Mutex // ForEachMaster scans the primaries at once
	scan := func(ctx context.Context, c redis.Cmdable) error {
		iter := c.Scan(ctx, 0, r.keys.InFlightPattern(), 500).Iterator()
		for iter.Next(ctx) {
			jobs, err := c.LRange(ctx, iter.Val(), 0, -1).Result()
			if err != nil {
				return err
			}
			mu.Lock()
			for _, j := range jobs {
				parts = append(parts, "in flight in "+iter.Val()+": "+j)
			}
			mu.Unlock()
		}
		return iter.Err()
	}
	if c, ok := r.rdb.(*redis.ClusterClient); ok {
		err = c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return scan(ctx, m) })
	} else {
		err = scan(ctx, r.rdb)
	}
	if err != nil {
		return "", err
	}
	return strings.Join(parts, "; "), nil
}

// waitEveryJobDoneOnce waits until every build has exactly one pod and no
// job of the run is left anywhere in Redis, checks that this holds on (a
// job that reappeared would start over), and that no build was reported
// failed.
func (r *topologyRun) waitEveryJobDoneOnce(t *testing.T, timeout time.Duration) {
	t.Helper()
	check := func() string {
		pods := r.podsByBuild(t)
		for i := 1; i <= topologyJobs; i++ {
			if n := pods[strconv.Itoa(9000+i)]; n != 1 {
				return fmt.Sprintf("build %d has %d pods (%d builds with pods)", 9000+i, n, len(pods))
			}
		}
		if len(pods) != topologyJobs {
			return fmt.Sprintf("%d builds have pods, want %d", len(pods), topologyJobs)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		left, err := r.leftovers(ctx)
		if err != nil {
			return "reading Redis: " + err.Error()
		}
		if left != "" {
			return "left in Redis: " + left
		}
		return ""
	}
	deadline := time.Now().Add(timeout)
	why := check()
	for why != "" {
		if time.Now().After(deadline) {
			t.Fatalf("not every job done exactly once after %v: %s", timeout, why)
		}
		time.Sleep(200 * time.Millisecond)
		why = check()
	}
	// Nothing may come back: an idle slot finds a stale in-flight entry at
	// its next heartbeat (every 2s, a third of the lease), and a second
	// start of a build would show as a queued job or a second pod.
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		if why := check(); why != "" {
			t.Fatalf("every job was done once, then: %s", why)
		}
	}
	for _, req := range r.ci.Requests() {
		if req.Body["status"] == "FAILURE" {
			t.Fatalf("build %d reported FAILURE: %s", req.BuildID, req.Raw)
		}
	}
}

// logWarnings logs how often the daemon logged each warning or error: what
// the topology change did to it, for whoever reads a -v run.
func (r *topologyRun) logWarnings(t *testing.T) {
	b, err := os.ReadFile(r.d.log)
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]int{}
	for _, line := range strings.Split(string(b), "\n") {
		var e struct{ Level, Msg string }
		if json.Unmarshal([]byte(line), &e) == nil && (e.Level == "warn" || e.Level == "error") {
			counts[e.Level+": "+e.Msg]++
		}
	}
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		t.Logf("daemon logged %dx %s", counts[k], k)
	}
}

// silentNode listens on loopback, accepts connections and never answers;
// contacted counts the connections it accepted.
func silentNode(t *testing.T) (addr string, contacted func() int64) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var n atomic.Int64
	var mu sync.Mutex
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-done
		for _, c := range conns {
			c.Close()
		}
	})
	return ln.Addr().String(), n.Load
}
