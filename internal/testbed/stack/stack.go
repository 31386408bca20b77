// Package stack runs the daemon's parts in-process for integration tests:
// the queue consumer, the worker and (optionally) the pod supervisor, on the
// test Redis and the test control plane, configured from the shipped
// config files plus env, and reporting to a fake CI API.
package stack

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/breaker"
	"github.com/sdkata/queue-worker/internal/ciapi"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/diskcache"
	"github.com/sdkata/queue-worker/internal/exclusion"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/gate"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/supervisor"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/timeouts"
	"github.com/sdkata/queue-worker/internal/weightage"
	"github.com/sdkata/queue-worker/internal/worker"
)

// Options select what runs.
type Options struct {
	// Env is the daemon's environment (the config's env mapping).
	Env map[string]string
	// ConfigDir holds default.yaml and custom-environment-variables.yaml
	// (relative to the test's package directory).
	ConfigDir string
	// Supervise runs the pod supervisor too, with test timings: a 4s
	// pending timeout, a 3s early-exit window and a 2s grace for sandbox
	// and container create errors.
	Supervise bool
	// Executor replaces the Kubernetes side of the worker (e.g. one whose
	// breaker is open); nil uses the real executor.
	Executor worker.Executor
	// Records wraps the supervisor's record store (e.g. to fail writes);
	// nil uses it as is.
	Records func(supervisor.Records) supervisor.Records
	// CacheQueue consumes <prefix>cache too (clear jobs), with its own slot.
	CacheQueue bool
	// Reporter wraps the supervisor's CI API client (e.g. to lose an
	// answer); nil uses it as is.
	Reporter func(supervisor.Reporter) supervisor.Reporter
}

// Stack is a running consumer + worker (+ supervisor) and its test beds.
type Stack struct {
	Redis  *redis.Client
	Keys   queue.Keys
	Prefix string
	Kube   kubernetes.Interface
	NS     string
	APIURI string
	// CI is the fake CI API every report goes to.
	CI   *testbed.FakeAPI
	Exec *executor.Executor
	// Gate is the blockedBy/collapse gate the worker uses (nil when
	// PLUGIN_BLOCKEDBY_ENABLED=false).
	Gate *gate.Gate
	// Timeouts records the started builds' timeout configs; its checker
	// loop does not run (tests call Pass).
	Timeouts *timeouts.Checker
	// Config is the loaded configuration.
	Config *config.Config
}

// Start runs a stack until the test ends.
func Start(t *testing.T, o Options) *Stack {
	t.Helper()
	rdb, rns, prefix := testbed.Redis(t)
	kube, ns := testbed.Kube(t)
	dir := o.ConfigDir
	if dir == "" {
		dir = "../../config"
	}
	cfg, err := config.Load(config.LoadOptions{
		DefaultsFile: dir + "/default.yaml",
		EnvMapFile:   dir + "/custom-environment-variables.yaml",
		Getenv:       func(k string) string { return o.Env[k] },
	})
	if err != nil {
		t.Fatal(err)
	}
	rules, err := routing.Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	holder := weightage.NewHolder(rules)
	opts := cfg.Executor.K8s.Options
	exec := executor.New(executor.Deps{Client: kube}, executor.Options{
		Namespace: ns, Prefix: opts.Prefix, LaunchImage: opts.LaunchImage, LaunchVersion: opts.LaunchVersion,
		Kata: opts.Kubernetes, Hyperd: cfg.Executor.K8sVM.Options.Kubernetes, Ecosystem: cfg.Ecosystem,
		Timeout: 10 * time.Second,
	})
	log := zaptest.NewLogger(t)
	ci := testbed.FakeCIAPI(t)
	s := &Stack{Redis: rdb, Keys: queue.NewKeys(rns), Prefix: prefix, Kube: kube, NS: ns, APIURI: ci.URL(), CI: ci, Exec: exec, Config: cfg}

	configs := queue.NewBuildConfigs(rdb, prefix, 2*time.Second)
	marks := queue.NewStopMarks(rdb, s.Keys, time.Hour, 2*time.Second)
	learned := exclusion.NewStore(rdb, exclusion.Options{Namespace: s.Keys.Namespace(), TTL: time.Hour,
		LearnAfter: cfg.Verify.Fallback.LearnAfter, Window: time.Hour, Timeout: 2 * time.Second})
	reporter := ciapi.New(ciapi.Options{Timeout: 2 * time.Second, MaxAttempts: 2, RetryDelay: 50 * time.Millisecond,
		Breaker: breaker.Settings{OpenTimeout: time.Second}, DefaultAPI: ci.URL()}, log, nil)
	var records supervisor.Records = supervisor.NewRedisRecords(rdb, s.Keys.Namespace(), time.Hour, 2*time.Second)
	if o.Records != nil {
		records = o.Records(records)
	}
	var supReporter supervisor.Reporter = reporter
	if o.Reporter != nil {
		supReporter = o.Reporter(reporter)
	}
	pods := supervisor.NewCache(kube, ns, nil)
	ctx, cancel := context.WithCancel(context.Background())
	if err := pods.Start(ctx, 10*time.Second); err != nil {
		cancel()
		t.Fatal(err)
	}
	sup := supervisor.New(supervisor.Deps{
		Client: kube, Cache: pods, Records: records, Pods: exec, Reporter: supReporter,
		Learner: learned, Marks: marks, Configs: configs,
		Rules: holder, Log: log.Named("supervisor"),
	}, supervisor.Options{
		Namespace: ns, Workers: 4, Fallback: true, DefaultAPIURI: ci.URL(),
		Assess: supervisor.AssessOptions{PendingTimeout: 4 * time.Second, Exit139Window: 3 * time.Second,
			RuntimeErrorGrace: 2 * time.Second},
		RetryBase: 100 * time.Millisecond, RetryMax: time.Second,
	})
	var execDep worker.Executor = exec
	if o.Executor != nil {
		execDep = o.Executor
	}
	bb := cfg.Plugins.BlockedBy
	var gateDep worker.Gate
	if bb.Enabled {
		s.Gate = gate.New(gate.Deps{Redis: rdb}, gate.Options{Prefix: prefix, Timeout: 2 * time.Second})
		gateDep = s.Gate
	}
	s.Timeouts = timeouts.New(timeouts.Deps{Redis: rdb, Reporter: reporter, Pods: exec, Marks: marks, Log: log.Named("timeouts")},
		timeouts.Options{Prefix: prefix, Namespace: rns, Identity: "stack", Interval: cfg.TimeoutChecker.Interval,
			Buffer: cfg.TimeoutChecker.Buffer, Timeout: 2 * time.Second})
	w := worker.New(worker.Deps{
		Executor: execDep, Configs: configs, Marks: marks, Reporter: reporter, Supervisor: sup, Log: log.Named("worker"),
		Router: routing.NewDecider(routing.DeciderDeps{Rules: holder, Learned: learned, InFlight: pods}),
		Gate:   gateDep, Timeouts: s.Timeouts,
		Cache: diskcache.New(diskcache.Options{Strategy: cfg.Ecosystem.Cache.Strategy, Path: cfg.Ecosystem.Cache.Path}),
	}, worker.Options{Prefix: opts.Prefix, HoldDelay: time.Second, UnavailableDelay: time.Second,
		Gate:          gate.Policy{BlockedBySelf: bb.BlockedBySelf, Collapse: bb.Collapse, BlockTimeout: bb.BlockTTL()},
		ReenqueueWait: bb.ReenqueueWait()})
	queues, concurrency := []string{prefix + "builds"}, 4
	if o.CacheQueue {
		queues, concurrency = append(queues, prefix+"cache"), 5
	}
	c, err := queue.NewConsumer(queue.Deps{Redis: rdb, Keys: s.Keys, Log: log.Named("queue")}, queue.Options{
		Queues: queues, Concurrency: concurrency, WorkerName: "stack:" + testbed.Suffix(),
		BlockTimeout: time.Second, OperationTimeout: 2 * time.Second, DrainTimeout: 5 * time.Second,
		SchedulerInterval: 100 * time.Millisecond,
		Retry:             queue.RetryPolicy{MaxRetries: 1, Delay: time.Second},
		Classes:           worker.Classes,
		DeadLetterNotices: worker.DeadLetterNotices,
	})
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- c.Run(ctx, w) }()
	running := 1
	if o.Supervise {
		running++
		go func() { done <- sup.Run(ctx) }()
	}
	t.Cleanup(func() {
		cancel()
		for range running {
			if err := <-done; err != nil {
				t.Error(err)
			}
		}
		pods.Shutdown()
	})
	return s
}

// EnqueueStart does what queue-service does: HSET the full config, then
// enqueue an ids-only job in node-resque's exact bytes. The token is
// "jwt-<id>".
func (s *Stack) EnqueueStart(t *testing.T, id int64, image string, annotations map[string]any) {
	t.Helper()
	cfg := map[string]any{
		"buildId": id, "jobId": id * 10, "eventId": 1, "jobName": "main", "pipelineId": 42,
		"pipeline": map[string]any{"id": 42, "name": "org/repo", "scmContext": "github:github.com"},
		"apiUri":   s.APIURI, "container": image, "token": "jwt-" + strconv.FormatInt(id, 10), "annotations": annotations,
	}
	raw, _ := json.Marshal(cfg)
	if err := s.Redis.HSet(context.Background(), s.Prefix+"buildConfigs", strconv.FormatInt(id, 10), raw).Err(); err != nil {
		t.Fatal(err)
	}
	s.Push(t, `{"class":"start","queue":"`+s.Prefix+`builds","args":[{"buildId":`+strconv.FormatInt(id, 10)+`,"jobId":`+strconv.FormatInt(id*10, 10)+`,"blockedBy":"`+strconv.FormatInt(id*10, 10)+`","blockedBySameJob":true,"blockedBySameJobWaitTime":5,"virtualJob":false}]}`)
}

// Push enqueues raw job bytes on the builds queue.
func (s *Stack) Push(t *testing.T, job string) {
	t.Helper()
	if err := s.Redis.RPush(context.Background(), s.Keys.Queue(s.Prefix+"builds"), job).Err(); err != nil {
		t.Fatal(err)
	}
}

// Pods lists a build's pods.
func (s *Stack) Pods(t *testing.T, id int64) []corev1.Pod {
	t.Helper()
	l, err := s.Kube.CoreV1().Pods(s.NS).List(context.Background(), metav1.ListOptions{LabelSelector: "sdbuild=" + strconv.FormatInt(id, 10)})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

// WaitPod waits for a build's first pod.
func (s *Stack) WaitPod(t *testing.T, id int64) corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	testbed.Eventually(t, 15*time.Second, "pod of build "+strconv.FormatInt(id, 10), func() bool {
		pods = s.Pods(t, id)
		return len(pods) > 0
	})
	return pods[0]
}

// FailedEntries decodes the resque failed list.
func (s *Stack) FailedEntries(t *testing.T) []map[string]any {
	t.Helper()
	raw, err := s.Redis.LRange(context.Background(), s.Keys.Failed(), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for _, r := range raw {
		var m map[string]any
		if err := json.Unmarshal([]byte(r), &m); err != nil {
			t.Fatalf("failed entry not JSON: %s", r)
		}
		out = append(out, m)
	}
	return out
}
