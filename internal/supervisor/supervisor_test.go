package supervisor_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/supervisor"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/testbed/stack"
	"github.com/sdkata/queue-worker/internal/weightage"
)

const kwokPrefix = "kwok.queue-worker.test/"

// kataAnnotations makes every Kata pod of a bed carry kwok's failure
// simulation (K8S_ANNOTATIONS reaches Kata pods only, so a hyperd relaunch
// runs normally).
func kataAnnotations(kv map[string]string) string {
	m := map[string]string{}
	for k, v := range kv {
		m[kwokPrefix+k] = v
	}
	b, _ := json.Marshal(m)
	return string(b)
}

func bodies(reqs []testbed.CIRequest) []string {
	var out []string
	for _, r := range reqs {
		b, _ := json.Marshal(r.Body)
		out = append(out, string(b))
	}
	return out
}

func hasFailure(reqs []testbed.CIRequest) bool {
	for _, r := range reqs {
		if r.Body["status"] == "FAILURE" {
			return true
		}
	}
	return false
}

func hasHostname(reqs []testbed.CIRequest) bool {
	for _, r := range reqs {
		if s, ok := r.Body["stats"].(map[string]any); ok && s["hostname"] != nil {
			return true
		}
	}
	return false
}

// TestSupervisor_FailureMatrix: each scenario produces exactly the expected CI
// calls and pods; fallback relaunches once, only for runtime failures.
func TestSupervisor_FailureMatrix(t *testing.T) {
	tests := []struct {
		name        string
		annotations map[string]string // on Kata pods
		env         map[string]string
		failure     string // substring of the FAILURE message; "" = no FAILURE
		fallback    bool   // a hyperd relaunch must run
		reason      string // pod_start reason metric expectation (class or signature), informative
	}{
		{name: "Success"},
		{name: "ImagePullIsImageFailureNoFallback", annotations: map[string]string{"waiting-reason": "ErrImagePull", "waiting-message": "manifest unknown"}, failure: "check if your image is valid"},
		{name: "CrashLoopIsRuntimeWithoutSignatureNoFallback", annotations: map[string]string{"waiting-reason": "CrashLoopBackOff", "waiting-message": "back-off 10s"}, failure: "reach out to your cluster admin"},
		{name: "UserExitNonZeroNoFallback", annotations: map[string]string{"exit-code": "2"}, failure: "exited with code 2"},
		// learnAfter 1: the first fallback also teaches (see
		// TestSupervisor_OneKataFailureDoesNotTeachASharedImage for the default).
		{name: "Exit139SoonAfterStartFallsBack", annotations: map[string]string{"exit-code": "139", "run-for": "1s"}, fallback: true, env: map[string]string{"KATA_LEARN_AFTER": "1"}},
		{name: "ExecFormatErrorFallsBack", annotations: map[string]string{"terminated-message": "exec /opt/sd/launcher_entrypoint.sh: exec format error", "terminated-reason": "StartError"},
			fallback: true, env: map[string]string{"KATA_LEARN_AFTER": "1"}},
		{name: "UnschedulableWaitsThenTimesOut", env: map[string]string{"K8S_NODE_SELECTORS": `{"dedicated":"nowhere"}`}, failure: "still pending"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"WEIGHT_K8S": "100"}
			for k, v := range tt.env {
				env[k] = v
			}
			if tt.annotations != nil {
				env["K8S_ANNOTATIONS"] = kataAnnotations(tt.annotations)
			}
			b := stack.Start(t, stack.Options{Env: env, Supervise: true})
			id := int64(7000 + i)
			b.EnqueueStart(t, id, "registry.example/app:"+strings.ToLower(tt.name), nil)
			t.Cleanup(func() {
				var pods []string
				for _, p := range b.Pods(t, id) {
					pods = append(pods, p.Name+"("+p.Labels[executor.LabelRuntime]+","+string(p.Status.Phase)+")")
				}
				t.Logf("matrix: %s → CI calls %v; pods %v", tt.name, bodies(b.CI.RequestsFor(id)), pods)
			})

			switch {
			case tt.failure != "":
				reqs := b.CI.WaitFor(t, id, hasFailure, 30*time.Second)
				var msg string
				n := 0
				for _, r := range reqs {
					if r.Body["status"] == "FAILURE" {
						msg, _ = r.Body["statusMessage"].(string)
						n++
					}
					if r.Auth != "Bearer jwt-"+fmt.Sprint(id) {
						t.Errorf("CI call with auth %q", r.Auth)
					}
				}
				if n != 1 || !strings.Contains(msg, tt.failure) {
					t.Fatalf("FAILURE calls %d, message %q, want one containing %q; calls %v", n, msg, tt.failure, bodies(reqs))
				}
				if pods := b.Pods(t, id); len(pods) != 1 || pods[0].Labels[executor.LabelRuntime] != "kata" {
					t.Fatalf("pods after a non-runtime failure: %d (no fallback expected)", len(pods))
				}
			case tt.fallback:
				var hyperd *corev1.Pod
				testbed.Eventually(t, 30*time.Second, "fallback pod running on hyperd", func() bool {
					for _, p := range b.Pods(t, id) {
						if p.Labels[executor.LabelRuntime] == "hyperd" && p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
							hyperd = &p
							return true
						}
					}
					return false
				})
				if hyperd.Annotations[executor.AnnotationRule] != "fallback" || !strings.HasSuffix(hyperd.Name, "-r1") {
					t.Fatalf("relaunch %s rule %q", hyperd.Name, hyperd.Annotations[executor.AnnotationRule])
				}
				reqs := b.CI.WaitFor(t, id, hasHostname, 30*time.Second)
				if hasFailure(reqs) {
					t.Fatalf("a fallen-back build must not be reported FAILURE: %v", bodies(reqs))
				}
				testbed.Eventually(t, 15*time.Second, "kata pod deleted", func() bool { return len(b.Pods(t, id)) == 1 })
				// The deleted Kata pod's records go with it; the relaunch keeps its own.
				testbed.Eventually(t, 10*time.Second, "records left only for the relaunch", func() bool {
					keys := b.Redis.Keys(context.Background(), b.Keys.Namespace()+":qw:supervision:*").Val()
					return len(keys) == 1 && strings.HasSuffix(keys[0], ":"+string(hyperd.UID))
				})
				// The learned exclusion sends the next build of that image to hyperd.
				next := id + 100
				b.EnqueueStart(t, next, "registry.example/app:"+strings.ToLower(tt.name), nil)
				p := b.WaitPod(t, next)
				if p.Labels[executor.LabelRuntime] != "hyperd" || p.Annotations[executor.AnnotationRule] != "learned-exclusion" {
					t.Fatalf("next build of the image: runtime %s rule %s", p.Labels[executor.LabelRuntime], p.Annotations[executor.AnnotationRule])
				}
				// Exactly one relaunch: the build keeps a single pod, its relaunch.
				time.Sleep(2 * time.Second)
				if n := len(b.Pods(t, id)); n != 1 {
					t.Fatalf("build %d has %d pods, want the single relaunch", id, n)
				}
			default:
				b.CI.WaitFor(t, id, hasHostname, 30*time.Second)
				time.Sleep(4 * time.Second) // past the early-exit window: verify is done
				reqs := b.CI.RequestsFor(id)
				if hasFailure(reqs) || len(reqs) != 1 {
					t.Fatalf("success must give exactly one hostname call, got %v", bodies(reqs))
				}
			}
		})
	}
}

// A sandbox failure shows only as a pod event; the watcher sees it and,
// once it has outlasted the kubelet's retries (the stack's 2 s grace), the
// build falls back to hyperd.
func TestSupervisor_SandboxEventFallsBack(t *testing.T) {
	env := map[string]string{"WEIGHT_K8S": "100", "K8S_ANNOTATIONS": kataAnnotations(map[string]string{"waiting-reason": "ContainerCreating"})}
	b := stack.Start(t, stack.Options{Env: env, Supervise: true})
	const id = 7200
	b.EnqueueStart(t, id, "registry.example/sandbox:1", nil)
	pod := b.WaitPod(t, id)
	first := metav1.Now()
	_, err := b.Kube.CoreV1().Events(b.NS).Create(context.Background(), &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{Name: pod.Name + ".sandbox", Namespace: b.NS},
		InvolvedObject: corev1.ObjectReference{Kind: "Pod", Name: pod.Name, Namespace: b.NS, UID: pod.UID},
		Reason:         "FailedCreatePodSandBox", Type: corev1.EventTypeWarning,
		Message: `Failed to create pod sandbox: rpc error: code = Unknown desc = failed to create containerd task: no runtime for "kata" is configured`,
		Source:  corev1.EventSource{Component: "kubelet"}, FirstTimestamp: first, LastTimestamp: first, Count: 1,
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var relaunch corev1.Pod
	testbed.Eventually(t, 30*time.Second, "fallback pod on hyperd", func() bool {
		for _, p := range b.Pods(t, id) {
			if p.Labels[executor.LabelRuntime] == "hyperd" && p.Annotations[executor.AnnotationRule] == "fallback" {
				relaunch = p
				return true
			}
		}
		return false
	})
	// Timestamps have one-second resolution: 2 s of grace shows as ≥ 1 s.
	if waited := relaunch.CreationTimestamp.Sub(first.Time); waited < time.Second {
		t.Fatalf("relaunched %v after the first sandbox failure: the kubelet's retries got no grace", waited)
	}
	if hasFailure(b.CI.RequestsFor(id)) {
		t.Fatal("sandbox fallback reported FAILURE")
	}
}

// A redelivered start (the same job twice) never makes a second pod, and the
// token appears nowhere in the pod.
func TestSupervisor_RedeliveredStartKeepsOnePod(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100"}, Supervise: true})
	const id = 7300
	b.EnqueueStart(t, id, "node:18", nil)
	b.EnqueueStart(t, id, "node:18", nil)
	b.CI.WaitFor(t, id, hasHostname, 30*time.Second)
	time.Sleep(2 * time.Second)
	pods := b.Pods(t, id)
	if len(pods) != 1 {
		t.Fatalf("%d pods for a redelivered start", len(pods))
	}
	raw, _ := json.Marshal(pods[0])
	if strings.Contains(string(raw), "jwt-7300") {
		t.Fatal("token in the pod spec")
	}
}

// An unreachable CI API delays verify instead of failing the build; once
// the API is back the report goes through.
func TestSupervisor_CIAPIDownDelaysNotFails(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100"}, Supervise: true})
	b.CI.Down()
	const id = 7400
	b.EnqueueStart(t, id, "node:18", nil)
	b.WaitPod(t, id)
	time.Sleep(3 * time.Second)
	if n, _ := b.Redis.LLen(context.Background(), b.Keys.Failed()).Result(); n != 0 {
		t.Fatalf("%d jobs failed while the CI API was down", n)
	}
	b.CI.Up()
	b.CI.WaitFor(t, id, hasHostname, 60*time.Second)
}

// A fallback interrupted after its relaunch (the leader died before it
// deleted the Kata pod) is finished by whoever leads next: the relaunch
// supersedes the Kata pod, which is deleted; nothing is reported FAILURE
// and nothing is relaunched twice.
func TestSupervisor_InterruptedFallbackIsFinished(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100"}, Supervise: true})
	const id = 7500
	b.EnqueueStart(t, id, "node:18", nil)
	b.CI.WaitFor(t, id, hasHostname, 30*time.Second)
	// Do by hand what a fallback did before the "crash": the relaunch on
	// hyperd exists, the Kata pod is still there.
	cfg := &build.Config{BuildID: id, JobID: id * 10, Container: "node:18", APIURI: b.APIURI, Token: "jwt-7500", Pipeline: &build.Pipeline{ID: 42}}
	d := weightage.Decision{Runtime: weightage.Hyperd, Rule: weightage.RuleFallback, Bucket: -1}
	if _, err := b.Exec.StartAttempt(context.Background(), cfg, d, 1); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 15*time.Second, "only the relaunch left", func() bool {
		pods := b.Pods(t, id)
		return len(pods) == 1 && strings.HasSuffix(pods[0].Name, "-r1")
	})
	b.CI.WaitFor(t, id, func(r []testbed.CIRequest) bool { return len(r) >= 2 }, 30*time.Second)
	time.Sleep(time.Second)
	if reqs := b.CI.RequestsFor(id); hasFailure(reqs) || len(reqs) != 2 {
		t.Fatalf("want one hostname report per pod and no FAILURE: %v", bodies(reqs))
	}
}

// With the default learnAfter (2 nodes), one Kata failure relaunches its
// build on hyperd but does not move the image: the next build still goes
// to Kata. The image is learned once failures were seen on two nodes.
func TestSupervisor_OneKataFailureDoesNotTeachASharedImage(t *testing.T) {
	env := map[string]string{"WEIGHT_K8S": "100", "K8S_ANNOTATIONS": kataAnnotations(map[string]string{"exit-code": "139", "run-for": "1s"})}
	b := stack.Start(t, stack.Options{Env: env, Supervise: true})
	const image = "registry.example/shared:18"
	fellBack := func(id int64) string {
		t.Helper()
		var node string
		testbed.Eventually(t, 20*time.Second, fmt.Sprintf("build %d's Kata pod scheduled", id), func() bool {
			for _, p := range b.Pods(t, id) {
				if p.Labels[executor.LabelRuntime] == "kata" && p.Spec.NodeName != "" {
					node = p.Spec.NodeName
				}
			}
			return node != ""
		})
		testbed.Eventually(t, 30*time.Second, fmt.Sprintf("build %d relaunched on hyperd, its Kata pod gone", id), func() bool {
			pods := b.Pods(t, id)
			return len(pods) == 1 && pods[0].Labels[executor.LabelRuntime] == "hyperd" && pods[0].Annotations[executor.AnnotationRule] == "fallback"
		})
		return node
	}
	b.EnqueueStart(t, 7400, image, nil)
	first := fellBack(7400)

	b.EnqueueStart(t, 7401, image, nil)
	if p := b.WaitPod(t, 7401); p.Labels[executor.LabelRuntime] != "kata" || p.Annotations[executor.AnnotationRule] != "weighted" {
		t.Fatalf("after one failure the image moved: runtime %s rule %s", p.Labels[executor.LabelRuntime], p.Annotations[executor.AnnotationRule])
	}
	second := fellBack(7401)

	b.EnqueueStart(t, 7402, image, nil)
	p := b.WaitPod(t, 7402)
	learned := p.Labels[executor.LabelRuntime] == "hyperd" && p.Annotations[executor.AnnotationRule] == "learned-exclusion"
	if want := first != second; learned != want {
		t.Fatalf("failures on %s then %s: third build runtime %s rule %s, learned %v, want %v",
			first, second, p.Labels[executor.LabelRuntime], p.Annotations[executor.AnnotationRule], learned, want)
	}
}

// failingWrites fails the first n record writes, as a Redis outage right
// after a report would.
type failingWrites struct {
	supervisor.Records
	left atomic.Int32
}

func (f *failingWrites) Add(ctx context.Context, uid types.UID, rec map[string]string) error {
	if f.left.Add(-1) >= 0 {
		return errors.New("redis: connection refused (test)")
	}
	return f.Records.Add(ctx, uid, rec)
}

// A record whose write fails after its action succeeded is kept and
// written later: the node is reported once, not again on every retry.
func TestSupervisor_FailedRecordWriteDoesNotRepeatTheReport(t *testing.T) {
	var fw *failingWrites
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100"}, Supervise: true,
		Records: func(r supervisor.Records) supervisor.Records {
			fw = &failingWrites{Records: r}
			fw.left.Store(3)
			return fw
		}})
	const id = 7500
	b.EnqueueStart(t, id, "node:18", nil)
	p := b.WaitPod(t, id)
	testbed.Eventually(t, 30*time.Second, "the record written once Redis takes writes again", func() bool {
		node, _ := b.Redis.HGet(context.Background(), b.Keys.Namespace()+":qw:supervision:"+string(p.UID), supervisor.AnnotationReportedNode).Result()
		return node != ""
	})
	time.Sleep(2 * time.Second)
	n := 0
	for _, r := range b.CI.RequestsFor(id) {
		if s, ok := r.Body["stats"].(map[string]any); ok && s["hostname"] != nil {
			n++
		}
	}
	if n != 1 || fw.left.Load() >= 0 {
		t.Fatalf("node reported %d times (want 1) with %d failed writes left", n, fw.left.Load())
	}
}

// lostAnswer delivers the first node report and then fails it, as a leader
// killed while the update was in flight (or a lost answer) would look.
type lostAnswer struct {
	supervisor.Reporter
	lost atomic.Bool
}

func (l *lostAnswer) ReportScheduled(ctx context.Context, api string, id int64, tok, node string, at time.Time) error {
	err := l.Reporter.ReportScheduled(ctx, api, id, tok, node, at)
	if err == nil && l.lost.CompareAndSwap(false, true) {
		return errors.New("connection reset by peer (test: the answer was lost)")
	}
	return err
}

// An update whose answer was lost is not sent again: the intent recorded
// before it makes the next sync read the build, which already has it.
func TestSupervisor_UpdateInFlightWhenItFailedIsNotSentTwice(t *testing.T) {
	b := stack.Start(t, stack.Options{Env: map[string]string{"WEIGHT_K8S": "100"}, Supervise: true,
		Reporter: func(r supervisor.Reporter) supervisor.Reporter { return &lostAnswer{Reporter: r} }})
	const id = 7600
	b.EnqueueStart(t, id, "node:18", nil)
	p := b.WaitPod(t, id)
	testbed.Eventually(t, 30*time.Second, "the report recorded as done", func() bool {
		node, _ := b.Redis.HGet(context.Background(), b.Keys.Namespace()+":qw:supervision:"+string(p.UID), supervisor.AnnotationReportedNode).Result()
		return node != ""
	})
	time.Sleep(time.Second)
	puts, gets := 0, 0
	for _, r := range b.CI.RequestsFor(id) {
		switch {
		case r.Method == "GET":
			gets++
		case r.Body["stats"] != nil:
			puts++
		}
	}
	if puts != 1 || gets != 1 {
		t.Fatalf("node sent %d times and read %d times, want 1 and 1", puts, gets)
	}
}
