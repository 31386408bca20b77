package worker_test

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/testbed/stack"
	"github.com/sdkata/queue-worker/internal/weightage"
)

func TestWorker_StartRoutesAndCreatesPods(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100", "K8S_EXECUTOR_EXCLUSION": `["rhel6","i386"]`}})
	b.EnqueueStart(t, 1001, "node:18", nil)
	b.EnqueueStart(t, 1002, "registry:4443/sd/arya-RHEL6:latest", nil)
	b.EnqueueStart(t, 1003, "registry/i386/debian:9", nil)
	b.EnqueueStart(t, 1004, "rhel6-but-forced", map[string]any{"screwdriver.cd/executor": "k8s"})
	b.EnqueueStart(t, 1005, "node:18", map[string]any{"beta.screwdriver.cd/executor": "k8s-vm"})
	want := map[int64][2]string{
		1001: {"kata", "weighted"},
		1002: {"hyperd", "excluded"},
		1003: {"hyperd", "excluded"},
		1004: {"kata", "annotation"},
		1005: {"hyperd", "annotation"},
	}
	for id, w := range want {
		p := b.WaitPod(t, id)
		if p.Labels[executor.LabelRuntime] != w[0] || p.Annotations[executor.AnnotationRule] != w[1] {
			t.Errorf("build %d: runtime %s rule %s, want %v", id, p.Labels[executor.LabelRuntime], p.Annotations[executor.AnnotationRule], w)
		}
	}
}

func TestWorker_StopDeletesPodsAndBuildConfig(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "50"}})
	b.EnqueueStart(t, 2001, "node:18", nil)
	b.WaitPod(t, 2001)
	b.Push(t, `{"class":"stop","queue":"`+b.Prefix+`builds","args":[{"buildId":2001,"jobId":20010,"blockedBy":"20010","started":true}]}`)
	testbed.Eventually(t, 15*time.Second, "pods of build 2001 deleted", func() bool { return len(b.Pods(t, 2001)) == 0 })
	testbed.Eventually(t, 5*time.Second, "buildConfigs entry deleted", func() bool {
		return b.Redis.HExists(context.Background(), b.Prefix+"buildConfigs", "2001").Val() == false
	})
}

func TestWorker_BadJobsGoToFailedListWithReason(t *testing.T) {
	b := stack.Start(t, stack.Options{})
	pq := b.Prefix + "builds"
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
		b.Push(t, tt.job)
	}
	var entries []map[string]any
	testbed.Eventually(t, 15*time.Second, "all bad jobs in the failed list", func() bool {
		entries = b.FailedEntries(t)
		return len(entries) == len(tests)
	})
	for _, tt := range tests {
		found := false
		for _, e := range entries {
			p, _ := json.Marshal(e["payload"])
			var want any
			// The failed list redacts every token value, empty ones too.
			_ = json.Unmarshal([]byte(strings.ReplaceAll(tt.job, `"token":""`, `"token":"[redacted]"`)), &want)
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
	b.EnqueueStart(t, 3100, "node:18", nil)
	b.WaitPod(t, 3100)
}

// A stop with started:false still deletes by label: a start redelivered
// with its original bytes may have made a pod its sender never heard of.
func TestWorker_StopOfANotStartedBuildStillDeletesItsPods(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100"}})
	b.EnqueueStart(t, 2101, "node:18", nil)
	b.WaitPod(t, 2101)
	b.Push(t, `{"class":"stop","queue":"`+b.Prefix+`builds","args":[{"buildId":2101,"jobId":21010,"started":false}]}`)
	testbed.Eventually(t, 15*time.Second, "pods of build 2101 deleted", func() bool { return len(b.Pods(t, 2101)) == 0 })
}

// A valid start that can never run (the apiserver rejects its pod) lands in
// the failed list, and the same settle queues its FAILURE report: the CI
// hears it even though no pod was ever made.
func TestWorker_DeadLetteredStartIsReportedToTheCIAPI(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100", "K8S_RUNTIME_CLASS": "kata-missing"}})
	b.EnqueueStart(t, 2201, "node:18", nil)
	reqs := b.CI.WaitFor(t, 2201, func(r []testbed.CIRequest) bool { return len(r) > 0 }, 15*time.Second)
	if len(reqs) != 1 || reqs[0].Body["status"] != "FAILURE" || reqs[0].Auth != "Bearer jwt-2201" ||
		!strings.Contains(reqs[0].Body["statusMessage"].(string), `RuntimeClass "kata-missing" not found`) {
		t.Fatalf("CI calls %+v", reqs)
	}
	entries := b.FailedEntries(t)
	if len(entries) != 1 || entries[0]["exception"] != "PodRejected" {
		t.Fatalf("failed list %v", entries)
	}
	if n := b.Redis.LLen(context.Background(), b.Keys.Queue(b.Prefix+"builds")).Val(); n != 0 {
		t.Fatalf("%d jobs left in the queue", n)
	}
}

// While the CI API is down the report waits in the delayed schedule; it
// goes through once the API is back, never dropped.
func TestWorker_ReportWaitsForTheCIAPI(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100", "K8S_RUNTIME_CLASS": "kata-missing"}})
	b.CI.Down()
	b.EnqueueStart(t, 2301, "node:18", nil)
	testbed.Eventually(t, 15*time.Second, "start dead-lettered", func() bool { return len(b.FailedEntries(t)) == 1 })
	time.Sleep(2 * time.Second) // the report is postponed at least once
	if n := len(b.FailedEntries(t)); n != 1 {
		t.Fatalf("%d failed entries while the CI API was down (the report must wait, not fail)", n)
	}
	b.CI.Up()
	b.CI.WaitFor(t, 2301, func(r []testbed.CIRequest) bool {
		for _, q := range r {
			if q.Body["status"] == "FAILURE" && q.Status == 200 {
				return true
			}
		}
		return false
	}, 20*time.Second)
}

// A verify job left by an older version is acked (the supervisor owns the
// pod now), never failed.
func TestWorker_LegacyVerifyJobIsAcked(t *testing.T) {
	b := stack.Start(t, stack.Options{})
	b.Push(t, `{"class":"verify","queue":"`+b.Prefix+`builds","args":[{"buildId":2401,"pod":"sdbuild-2401","runtime":"kata","attempt":0,"since":1,"build":{"buildId":2401}}],"attempt":0}`)
	testbed.Eventually(t, 10*time.Second, "verify acked", func() bool {
		return b.Redis.Get(context.Background(), b.Keys.StatProcessed()).Val() == "1"
	})
	if n := len(b.FailedEntries(t)); n != 0 {
		t.Fatalf("%d failed entries", n)
	}
}

// A start retried after its first attempt made the pod, whose build was
// stopped while no pod existed yet (the stop deleted nothing), must delete
// that pod itself: nothing else will.
func TestWorker_RetriedStartOfAStoppedBuildDeletesItsEarlierPod(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100"}})
	ctx := context.Background()
	const id = 2301
	// The earlier attempt's pod, made before the stop ran.
	cfg := &build.Config{BuildID: id, JobID: id * 10, Container: "node:18", APIURI: b.APIURI, Token: "jwt-2301", Pipeline: &build.Pipeline{ID: 42}}
	if _, err := b.Exec.Start(ctx, cfg, weightage.Decision{Runtime: weightage.Kata, Rule: weightage.RuleWeighted}); err != nil {
		t.Fatal(err)
	}
	if err := queue.NewStopMarks(b.Redis, b.Keys, time.Hour, time.Second).MarkStopped(ctx, id); err != nil {
		t.Fatal(err)
	}
	b.Push(t, `{"class":"start","queue":"`+b.Prefix+`builds","args":[{"buildId":2301,"jobId":23010,"container":"node:18","apiUri":"`+b.APIURI+`","token":"jwt-2301"}],"attempt":1}`)
	testbed.Eventually(t, 15*time.Second, "the earlier attempt's pod deleted", func() bool { return len(b.Pods(t, id)) == 0 })
}
