package worker_test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap/zaptest"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/ciapi"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/exclusion"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/routing"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/weightage"
	"github.com/sdkata/queue-worker/internal/worker"
)

// bed is the whole spine on real Redis and a real apiserver.
type bed struct {
	rdb    *redis.Client
	keys   queue.Keys
	prefix string
	kube   kubernetes.Interface
	ns     string
	apiURI string
	ci     *testbed.FakeAPI // set when verify is on
	exec   *executor.Executor
}

func startBed(t *testing.T, env map[string]string) *bed { return startBedWith(t, env, false) }

// startBedWith optionally turns on verify, CI API reporting (to a fake CI
// API) and the Kata fallback, as the daemon wires them.
func startBedWith(t *testing.T, env map[string]string, verify bool) *bed {
	t.Helper()
	rdb, rns, prefix := testbed.Redis(t)
	kube, ns := testbed.Kube(t)
	cfg, err := config.Load(config.LoadOptions{
		DefaultsFile: "../../config/default.yaml",
		EnvMapFile:   "../../config/custom-environment-variables.yaml",
		Getenv:       func(k string) string { return env[k] },
	})
	if err != nil {
		t.Fatal(err)
	}
	rules, err := routing.Rules(cfg)
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.Executor.K8s.Options
	exec := executor.New(kube, executor.Options{
		Namespace: ns, Prefix: o.Prefix, LaunchImage: o.LaunchImage, LaunchVersion: o.LaunchVersion,
		Kata: o.Kubernetes, Hyperd: cfg.Executor.K8sVM.Options.Kubernetes, Ecosystem: cfg.Ecosystem,
	}, 10*time.Second, nil)
	log := zaptest.NewLogger(t)
	b := &bed{rdb: rdb, keys: queue.NewKeys(rns), prefix: prefix, kube: kube, ns: ns, apiURI: "https://api.example", exec: exec}
	w := worker.New(exec, queue.NewBuildConfigs(rdb, prefix, 2*time.Second), weightage.NewHolder(rules),
		queue.NewStopMarks(rdb, b.keys, time.Hour, 2*time.Second), log, nil)
	if verify {
		b.ci = testbed.FakeCIAPI(t)
		b.apiURI = b.ci.URL()
		watcher := executor.NewWatcher(kube, ns)
		wctx, stopWatch := context.WithCancel(context.Background())
		t.Cleanup(func() { stopWatch(); watcher.Shutdown() })
		if err := watcher.Start(wctx, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		exec.Watch(watcher, executor.AssessOptions{PendingTimeout: 4 * time.Second, ImagePullGrace: 0, Exit139Window: 10 * time.Second})
		ci := ciapi.New(ciapi.Options{Timeout: 2 * time.Second, MaxAttempts: 2, RetryDelay: 50 * time.Millisecond}, log, nil)
		w.SetVerify(exec, ci, exclusion.NewStore(rdb, b.keys.Namespace(), time.Hour, 2*time.Second),
			worker.VerifyOptions{Interval: 300 * time.Millisecond, MissingGrace: 5 * time.Second, Fallback: true, EarlyExitWindow: 3 * time.Second})
	}
	c, err := queue.NewConsumer(rdb, b.keys, queue.Options{
		Queues: []string{prefix + "builds"}, Concurrency: 4, WorkerName: "wtest:" + testbed.Suffix(),
		BlockTimeout: time.Second, OperationTimeout: 2 * time.Second, DrainTimeout: 5 * time.Second,
		SchedulerInterval: 100 * time.Millisecond,
		Retry:             queue.RetryPolicy{MaxRetries: 1, Delay: time.Second},
		OnDeadLetter:      w.DeadLettered,
	}, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, w) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
	return b
}

// enqueueStart does what queue-service does: HSET the full config, then
// enqueue an ids-only job in node-resque's exact bytes.
func (b *bed) enqueueStart(t *testing.T, id int64, image string, annotations map[string]any) {
	t.Helper()
	ctx := context.Background()
	cfg := map[string]any{
		"buildId": id, "jobId": id * 10, "eventId": 1, "jobName": "main", "pipelineId": 42,
		"pipeline": map[string]any{"id": 42, "name": "org/repo", "scmContext": "github:github.com"},
		"apiUri":   b.apiURI, "container": image, "token": "jwt-" + strconv.FormatInt(id, 10), "annotations": annotations,
	}
	raw, _ := json.Marshal(cfg)
	if err := b.rdb.HSet(ctx, b.prefix+"buildConfigs", strconv.FormatInt(id, 10), raw).Err(); err != nil {
		t.Fatal(err)
	}
	b.push(t, `{"class":"start","queue":"`+b.prefix+`builds","args":[{"buildId":`+strconv.FormatInt(id, 10)+`,"jobId":`+strconv.FormatInt(id*10, 10)+`,"blockedBy":"`+strconv.FormatInt(id*10, 10)+`","blockedBySameJob":true,"blockedBySameJobWaitTime":5,"virtualJob":false}]}`)
}

func (b *bed) push(t *testing.T, job string) {
	t.Helper()
	if err := b.rdb.RPush(context.Background(), b.keys.Queue(b.prefix+"builds"), job).Err(); err != nil {
		t.Fatal(err)
	}
}

func (b *bed) pods(t *testing.T, id int64) []corev1.Pod {
	t.Helper()
	l, err := b.kube.CoreV1().Pods(b.ns).List(context.Background(), metav1.ListOptions{LabelSelector: "sdbuild=" + strconv.FormatInt(id, 10)})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func (b *bed) waitPod(t *testing.T, id int64) corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	testbed.Eventually(t, 15*time.Second, "pod of build "+strconv.FormatInt(id, 10), func() bool {
		pods = b.pods(t, id)
		return len(pods) > 0
	})
	return pods[0]
}

func (b *bed) failedEntries(t *testing.T) []map[string]any {
	t.Helper()
	raw, err := b.rdb.LRange(context.Background(), b.keys.Failed(), 0, -1).Result()
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

func TestWorker_StartRoutesAndCreatesPods(t *testing.T) {
	b := startBed(t, map[string]string{"WEIGHT_K8S": "100", "K8S_EXECUTOR_EXCLUSION": `["rhel6","i386"]`})
	b.enqueueStart(t, 1001, "node:18", nil)
	b.enqueueStart(t, 1002, "registry:4443/sd/arya-RHEL6:latest", nil)
	b.enqueueStart(t, 1003, "registry/i386/debian:9", nil)
	b.enqueueStart(t, 1004, "rhel6-but-forced", map[string]any{"screwdriver.cd/executor": "k8s"})
	b.enqueueStart(t, 1005, "node:18", map[string]any{"beta.screwdriver.cd/executor": "k8s-vm"})
	want := map[int64][2]string{
		1001: {"kata", "weighted"},
		1002: {"hyperd", "excluded"},
		1003: {"hyperd", "excluded"},
		1004: {"kata", "annotation"},
		1005: {"hyperd", "annotation"},
	}
	for id, w := range want {
		p := b.waitPod(t, id)
		if p.Labels[executor.LabelRuntime] != w[0] || p.Annotations[executor.AnnotationRule] != w[1] {
			t.Errorf("build %d: runtime %s rule %s, want %v", id, p.Labels[executor.LabelRuntime], p.Annotations[executor.AnnotationRule], w)
		}
	}
}

func TestWorker_StopDeletesPodsAndBuildConfig(t *testing.T) {
	b := startBed(t, map[string]string{"WEIGHT_K8S": "50"})
	b.enqueueStart(t, 2001, "node:18", nil)
	b.waitPod(t, 2001)
	b.push(t, `{"class":"stop","queue":"`+b.prefix+`builds","args":[{"buildId":2001,"jobId":20010,"blockedBy":"20010","started":true}]}`)
	testbed.Eventually(t, 15*time.Second, "pods of build 2001 deleted", func() bool { return len(b.pods(t, 2001)) == 0 })
	testbed.Eventually(t, 5*time.Second, "buildConfigs entry deleted", func() bool {
		return b.rdb.HExists(context.Background(), b.prefix+"buildConfigs", "2001").Val() == false
	})
}

func TestWorker_BadJobsGoToFailedListWithReason(t *testing.T) {
	b := startBed(t, nil)
	pq := b.prefix + "builds"
	tests := []struct {
		job       string
		exception string
		reason    string
	}{
		{`{"class":"rebuild","queue":"` + pq + `","args":[{"buildId":1}]}`, "Error", `No job defined for class "rebuild"`},
		{`{"class":"start","queue":"` + pq + `","args":[{"buildId":3001,"container":"node:18","apiUri":"https://a","token":""}]}`, "InvalidPayload", "token is required"},
		{`{"class":"start","queue":"` + pq + `","args":[{"buildId":3002,"jobId":1}]}`, "MissingBuildConfig", "no entry in the buildConfigs hash"},
		{`{"class":"start","queue":"` + pq + `","args":["not an object"]}`, "InvalidPayload", "expected a JSON object"},
		{`{"class":"start","queue":"` + pq + `","args":[]}`, "InvalidPayload", `"args" is empty`},
		{`{"class":"stop","queue":"` + pq + `","args":[{"buildId":"12"}]}`, "InvalidPayload", "cannot unmarshal"},
	}
	for _, tt := range tests {
		b.push(t, tt.job)
	}
	var entries []map[string]any
	testbed.Eventually(t, 15*time.Second, "all bad jobs in the failed list", func() bool {
		entries = b.failedEntries(t)
		return len(entries) == len(tests)
	})
	for _, tt := range tests {
		found := false
		for _, e := range entries {
			p, _ := json.Marshal(e["payload"])
			var want any
			_ = json.Unmarshal([]byte(tt.job), &want)
			wp, _ := json.Marshal(want)
			if string(p) == string(wp) {
				found = true
				if e["exception"] != tt.exception || !strings.Contains(e["error"].(string), tt.reason) {
					t.Errorf("job %s: exception %v error %q, want %s / %q", tt.job, e["exception"], e["error"], tt.exception, tt.reason)
				}
			}
		}
		if !found {
			t.Errorf("job %s not in the failed list", tt.job)
		}
	}
	// The worker kept going: a good job after the bad ones still runs.
	b.enqueueStart(t, 3100, "node:18", nil)
	b.waitPod(t, 3100)
}
