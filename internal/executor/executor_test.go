package executor_test

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/weightage"
)

const secretToken = "eyJhbGciOi.test-build-token.sig"

// testOptions loads the shipped defaults, so tests exercise what operators get.
func testOptions(t *testing.T, ns string) executor.Options {
	t.Helper()
	cfg, err := config.Load(config.LoadOptions{DefaultsFile: "../../config/default.yaml", Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.Executor.K8s.Options
	return executor.Options{
		Namespace: ns, Prefix: "beta_", LaunchImage: o.LaunchImage, LaunchVersion: o.LaunchVersion,
		SDHabEnabled: o.SDHabEnabled, Kata: o.Kubernetes, Hyperd: cfg.Executor.K8sVM.Options.Kubernetes, Ecosystem: cfg.Ecosystem,
		Timeout: 10 * time.Second,
	}
}

func testBuild(id int64) *build.Config {
	return &build.Config{
		BuildID: id, JobID: 678, EventID: 9001, JobName: "main", Container: "node:18",
		APIURI: "https://api.example", Token: secretToken,
		Pipeline:    &build.Pipeline{ID: 42, Name: "org/repo"},
		Annotations: map[string]any{"screwdriver.cd/cpu": "HIGH", "screwdriver.cd/ram": "HIGH", "screwdriver.cd/timeout": float64(60)},
	}
}

var (
	kataDecision   = weightage.Decision{Runtime: weightage.Kata, Rule: weightage.RuleWeighted, Bucket: 17, KataBasisPoints: 2000, RulesVersion: "v1"}
	hyperdDecision = weightage.Decision{Runtime: weightage.Hyperd, Rule: weightage.RuleExcluded, Pattern: "rhel6", Bucket: -1, RulesVersion: "v1"}
)

func newExecutor(t *testing.T) (*executor.Executor, kubernetes.Interface, string) {
	cs, ns := testbed.Kube(t)
	return executor.New(executor.Deps{Client: cs}, testOptions(t, ns)), cs, ns
}

func listPods(t *testing.T, cs kubernetes.Interface, ns string, buildID int64) []corev1.Pod {
	t.Helper()
	l, err := cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "sdbuild=" + executor.BuildLabel("beta_", buildID)})
	if err != nil {
		t.Fatal(err)
	}
	return l.Items
}

func TestExecutor_StartCreatesPodAcceptedByAPIServer(t *testing.T) {
	e, cs, ns := newExecutor(t)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		id   int64
		d    weightage.Decision
	}{{"Kata", 101, kataDecision}, {"Hyperd", 102, hyperdDecision}} {
		t.Run(tc.name, func(t *testing.T) {
			res, err := e.Start(ctx, testBuild(tc.id), tc.d)
			if err != nil {
				t.Fatalf("Start: %v", err)
			}
			if !res.Created || res.Runtime != tc.d.Runtime {
				t.Fatalf("result %+v", res)
			}
			p, err := cs.CoreV1().Pods(ns).Get(ctx, res.Pod, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if p.Labels["sdbuild"] != "beta_"+itoa(tc.id) || p.Labels[executor.LabelRuntime] != string(tc.d.Runtime) {
				t.Fatalf("labels %v", p.Labels)
			}
			if p.Annotations[executor.AnnotationRule] != string(tc.d.Rule) {
				t.Fatalf("annotations %v", p.Annotations)
			}
			isKata := p.Spec.RuntimeClassName != nil && *p.Spec.RuntimeClassName == "kata"
			if isKata != (tc.d.Runtime == weightage.Kata) {
				t.Fatalf("runtimeClassName %v for %s", p.Spec.RuntimeClassName, tc.d.Runtime)
			}
			if tc.d.Runtime == weightage.Hyperd && (p.Spec.Containers[0].Name != "vm-launcher" || !*p.Spec.Containers[0].SecurityContext.Privileged) {
				t.Fatal("hyperd pod is not the privileged vm-launcher")
			}
			sec, err := cs.CoreV1().Secrets(ns).Get(ctx, executor.TokenSecretName(p.Name), metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if string(sec.Data["token"]) != secretToken {
				t.Fatal("token secret does not hold the build token")
			}
			if len(sec.OwnerReferences) != 1 || sec.OwnerReferences[0].UID != p.UID {
				t.Fatalf("token secret owner %v, want pod %s", sec.OwnerReferences, p.UID)
			}
			// The build record reads back the config, token included,
			// for a relaunch of a build whose job is gone.
			rec, err := e.BuildRecord(ctx, p.Name)
			if err != nil {
				t.Fatal(err)
			}
			want := testBuild(tc.id)
			if rec.Token != secretToken || rec.BuildID != tc.id || rec.Container != want.Container || rec.Pipeline.ID != 42 {
				t.Fatalf("build record %+v", rec)
			}
			if strings.Contains(string(sec.Data["build.json"]), secretToken) {
				t.Fatal("the build record repeats the token")
			}
		})
	}
}

func TestExecutor_TokenNeverInPodSpec(t *testing.T) {
	e, cs, ns := newExecutor(t)
	for _, d := range []weightage.Decision{kataDecision, hyperdDecision} {
		id := int64(200)
		if d.Runtime == weightage.Hyperd {
			id = 201
		}
		res, err := e.Start(context.Background(), testBuild(id), d)
		if err != nil {
			t.Fatal(err)
		}
		p, err := cs.CoreV1().Pods(ns).Get(context.Background(), res.Pod, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := json.Marshal(p)
		if strings.Contains(string(raw), secretToken) || strings.Contains(string(raw), "test-build-token") {
			t.Fatalf("%s pod spec contains the build token", d.Runtime)
		}
	}
}

// A redelivered start, even one routed differently, finds the existing pod.
func TestExecutor_RedeliveredStartKeepsOnePodAndItsRuntime(t *testing.T) {
	e, cs, ns := newExecutor(t)
	ctx := context.Background()
	if _, err := e.Start(ctx, testBuild(300), kataDecision); err != nil {
		t.Fatal(err)
	}
	res, err := e.Start(ctx, testBuild(300), hyperdDecision)
	if err != nil {
		t.Fatal(err)
	}
	if res.Created || res.Runtime != weightage.Kata {
		t.Fatalf("second start: created=%v runtime=%s, want existing kata pod", res.Created, res.Runtime)
	}
	if n := len(listPods(t, cs, ns, 300)); n != 1 {
		t.Fatalf("%d pods for one build", n)
	}
}

// Replicas racing on the same build create exactly one pod.
func TestExecutor_RacingStartsCreateOnePod(t *testing.T) {
	cs, ns := testbed.Kube(t)
	opts := testOptions(t, ns)
	var wg sync.WaitGroup
	created := make(chan bool, 8)
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			e := executor.New(executor.Deps{Client: cs}, opts) // one executor per "replica"
			d := kataDecision
			if i%2 == 1 {
				d = hyperdDecision
			}
			res, err := e.Start(context.Background(), testBuild(400), d)
			if err != nil {
				t.Error(err)
				return
			}
			created <- res.Created
		}()
	}
	wg.Wait()
	close(created)
	n := 0
	for c := range created {
		if c {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("%d starts reported creating the pod, want 1", n)
	}
	if pods := listPods(t, cs, ns, 400); len(pods) != 1 {
		t.Fatalf("%d pods for one build", len(pods))
	}
}

func TestExecutor_StopDeletesBuildPodsAndSecrets(t *testing.T) {
	e, cs, ns := newExecutor(t)
	ctx := context.Background()
	if _, err := e.Start(ctx, testBuild(500), hyperdDecision); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Start(ctx, testBuild(501), kataDecision); err != nil {
		t.Fatal(err)
	}
	if err := e.Stop(ctx, 500); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 10*time.Second, "build 500's pod gone", func() bool { return len(listPods(t, cs, ns, 500)) == 0 })
	if len(listPods(t, cs, ns, 501)) != 1 {
		t.Fatal("stop of build 500 touched build 501")
	}
	secs, _ := cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "sdbuild=beta_500"})
	if len(secs.Items) != 0 {
		t.Fatalf("%d token secrets left", len(secs.Items))
	}
	if err := e.Stop(ctx, 999); err != nil {
		t.Fatalf("stopping a build without pods: %v", err)
	}
}

func TestExecutor_MissingRuntimeClassIsPermanent(t *testing.T) {
	cs, ns := testbed.Kube(t)
	opts := testOptions(t, ns)
	opts.Kata.RuntimeClass = "kata-missing-" + testbed.Suffix()
	_, err := executor.New(executor.Deps{Client: cs}, opts).Start(context.Background(), testBuild(600), kataDecision)
	if err == nil || !executor.Permanent(err) {
		t.Fatalf("err = %v, want a permanent admission rejection", err)
	}
}

func itoa(i int64) string { b, _ := json.Marshal(i); return string(b) }

// A Secret whose pod was deleted before the Secret was created (a stop raced
// the start) is collected by the garbage collector: it names a dead owner.
func TestExecutor_SecretOfAVanishedPodIsCollected(t *testing.T) {
	e, cs, ns := newExecutor(t)
	ctx := context.Background()
	res, err := e.Start(ctx, testBuild(700), kataDecision)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.DeletePod(ctx, res.Pod); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 30*time.Second, "secret collected with its pod", func() bool {
		l, err := cs.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{LabelSelector: "sdbuild=beta_700"})
		return err == nil && len(l.Items) == 0
	})
}
