package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/supervisor"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// daemonBinary builds queue-worker once per test binary.
var daemonBinary = sync.OnceValues(func() (string, error) { return testbed.BuildDaemon(".") })

// daemon is one queue-worker process.
type daemon struct {
	cmd  *exec.Cmd
	port int
	log  string
}

// startDaemon runs the real binary with env on top of a minimal
// environment, logging to a file in the test's temp dir.
func startDaemon(t *testing.T, name string, env map[string]string) *daemon {
	t.Helper()
	bin, err := daemonBinary()
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{port: testbed.FreePort(t), log: filepath.Join(t.TempDir(), name+".log")}
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	d.cmd = exec.Command(bin, "run", "--config-dir", "../../config")
	d.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOST=127.0.0.1", "PORT=" + strconv.Itoa(d.port), "LOG_LEVEL=debug"}
	for k, v := range env {
		d.cmd.Env = append(d.cmd.Env, k+"="+v)
	}
	d.cmd.Stdout, d.cmd.Stderr = logf, logf
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = d.cmd.Process.Signal(syscall.SIGTERM)
		_ = d.cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			t.Logf("--- %s log (last 4k) ---\n%s", name, tail(b, 4096))
		}
	})
	testbed.Eventually(t, 30*time.Second, name+" ready", func() bool {
		resp, err := http.Get("http://127.0.0.1:" + strconv.Itoa(d.port) + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	return d
}

// daemonEnv is the environment of a daemon on the test Redis and control
// plane: the resque namespace, queue prefix, jobs namespace and CI API of
// one test, plus extra.
func daemonEnv(rns, prefix, ns, ciURL string, extra map[string]string) map[string]string {
	host, port, _ := strings.Cut(testbed.RedisAddr(), ":")
	return withEnv(map[string]string{
		"KUBECONFIG":             os.Getenv(testbed.KubeconfigEnv),
		"K8S_JOBS_NAMESPACE":     ns,
		"REDIS_HOST":             host,
		"REDIS_PORT":             port,
		"REDIS_RESQUE_NAMESPACE": rns,
		"REDIS_QUEUE_PREFIX":     prefix,
		"ECOSYSTEM_API":          ciURL,
	}, extra)
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (d *daemon) identity() string { return ":" + strconv.Itoa(d.cmd.Process.Pid) }

func leaseHolder(t *testing.T, kube kubernetes.Interface, ns string) string {
	l, err := kube.CoordinationV1().Leases(ns).Get(context.Background(), "queue-worker-supervisor", metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// holdKataPods makes the apiserver refuse deletes of Kata pods in ns (a
// ValidatingAdmissionPolicy), so a fallback stops between its relaunch and
// the delete of the Kata pod. It returns the release.
func holdKataPods(t *testing.T, kube kubernetes.Interface, ns string) (release func()) {
	t.Helper()
	ctx := context.Background()
	name := "qwtest-hold-kata-" + testbed.Suffix()
	sel := &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": ns}}
	fail := admissionv1.Fail
	_, err := kube.AdmissionregistrationV1().ValidatingAdmissionPolicies().Create(ctx, &admissionv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionv1.MatchResources{
				NamespaceSelector: sel,
				ResourceRules: []admissionv1.NamedRuleWithOperations{{RuleWithOperations: admissionv1.RuleWithOperations{
					Operations: []admissionv1.OperationType{admissionv1.Delete},
					Rule:       admissionv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}}},
			},
			Validations: []admissionv1.Validation{{
				Expression: "!has(oldObject.metadata.labels) || !('" + executor.LabelRuntime + "' in oldObject.metadata.labels) || oldObject.metadata.labels['" + executor.LabelRuntime + "'] != 'kata'",
				Message:    "test: Kata pods are held",
			}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating the hold policy: %v", err)
	}
	_, err = kube.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Create(ctx, &admissionv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{PolicyName: name,
			ValidationActions: []admissionv1.ValidationAction{admissionv1.Deny},
			MatchResources:    &admissionv1.MatchResources{NamespaceSelector: sel}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("binding the hold policy: %v", err)
	}
	release = func() {
		_ = kube.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Delete(ctx, name, metav1.DeleteOptions{})
		_ = kube.AdmissionregistrationV1().ValidatingAdmissionPolicies().Delete(ctx, name, metav1.DeleteOptions{})
	}
	t.Cleanup(release)
	// The apiserver picks policies up from a watch: wait until a Kata pod
	// really cannot be deleted (checked on a dummy, with a dry run).
	probe := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hold-probe", Labels: map[string]string{executor.LabelRuntime: "kata"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}, NodeSelector: map[string]string{"nowhere": "x"}}}
	if _, err := kube.CoreV1().Pods(ns).Create(ctx, probe, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	testbed.Eventually(t, 20*time.Second, "hold policy in force", func() bool {
		err := kube.CoreV1().Pods(ns).Delete(ctx, probe.Name, metav1.DeleteOptions{DryRun: []string{metav1.DryRunAll}})
		return apierrors.IsInvalid(err) || apierrors.IsForbidden(err)
	})
	return release
}

// The supervisor leader is SIGKILLed in the middle of a fallback: the Kata
// pod failed with exit 139, its hyperd relaunch exists, and the delete of
// the Kata pod has not gone through. The other replica takes the Lease and
// finishes: one -r1 pod on hyperd, the Kata pod gone, no FAILURE, and at
// most one CI report of each kind per pod.
func TestLeader_KilledMidFallbackNewLeaderFinishes(t *testing.T) {
	rdb, rns, prefix := testbed.Redis(t)
	kube, ns := testbed.Kube(t)
	ci := testbed.FakeCIAPI(t)
	env := daemonEnv(rns, prefix, ns, ci.URL(), map[string]string{
		"WEIGHT_K8S":            "100",
		"K8S_ANNOTATIONS":       `{"kwok.queue-worker.test/exit-code":"139","kwok.queue-worker.test/run-for":"1s"}`,
		"VERIFY_EXIT139_WINDOW": "5s",
		// A short Lease so the test is quick; a killed leader's Lease runs out.
		"SUPERVISOR_LEASE_DURATION": "3s",
		"SUPERVISOR_RENEW_DEADLINE": "2s",
		"SUPERVISOR_RETRY_PERIOD":   "500ms",
		"QUEUE_LEASE_DURATION":      "3s",
		"QUEUE_RECOVER_INTERVAL":    "1s",
	})
	a := startDaemon(t, "a", env)
	testbed.Eventually(t, 20*time.Second, "a leads", func() bool { return strings.HasSuffix(leaseHolder(t, kube, ns), a.identity()) })
	b := startDaemon(t, "b", env)
	release := holdKataPods(t, kube, ns)

	const id = 8100
	job := fmt.Sprintf(`{"class":"start","queue":"%sbuilds","args":[{"buildId":%d,"jobId":81000,"container":"registry.example/legacy:6","apiUri":%q,"token":"jwt-%d","pipeline":{"id":42}}]}`,
		prefix, id, ci.URL(), id)
	if err := rdb.RPush(context.Background(), rns+":queue:"+prefix+"builds", job).Err(); err != nil {
		t.Fatal(err)
	}
	pods := func() map[string]corev1.Pod {
		l, err := kube.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: "sdbuild=" + strconv.Itoa(id)})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]corev1.Pod{}
		for _, p := range l.Items {
			out[p.Name] = p
		}
		return out
	}
	testbed.Eventually(t, 30*time.Second, "relaunch made while the Kata pod is held", func() bool {
		p := pods()
		_, kata := p["sdbuild-8100"]
		_, relaunch := p["sdbuild-8100-r1"]
		return kata && relaunch
	})
	testbed.Eventually(t, 10*time.Second, "a tried to delete the Kata pod and was refused", func() bool {
		b, _ := os.ReadFile(a.log)
		return strings.Contains(string(b), "Kata pods are held")
	})
	if err := a.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = a.cmd.Wait()
	release()

	testbed.Eventually(t, 30*time.Second, "b leads", func() bool { return strings.HasSuffix(leaseHolder(t, kube, ns), b.identity()) })
	testbed.Eventually(t, 30*time.Second, "only the relaunch is left, running on hyperd, its node reported", func() bool {
		p := pods()
		r, ok := p["sdbuild-8100-r1"]
		if len(p) != 1 || !ok || r.Labels[executor.LabelRuntime] != "hyperd" || r.Status.Phase != corev1.PodRunning {
			return false
		}
		node, err := rdb.HGet(context.Background(), rns+":qw:supervision:"+string(r.UID), supervisor.AnnotationReportedNode).Result()
		return err == nil && node != ""
	})
	time.Sleep(2 * time.Second) // anything duplicated would show now
	hostnames := map[string]int{}
	for _, r := range ci.RequestsFor(id) {
		if r.Body["status"] == "FAILURE" {
			t.Fatalf("a fallen-back build was reported FAILURE: %s", r.Raw)
		}
		if s, ok := r.Body["stats"].(map[string]any); ok {
			hostnames[fmt.Sprint(s["hostname"])]++
		}
	}
	hyperd := 0
	for node, n := range hostnames {
		if n > 1 {
			t.Fatalf("node %s reported %d times: %v", node, n, hostnames)
		}
		if strings.HasPrefix(node, "kwok-hyperd") {
			hyperd++
		}
	}
	if hyperd != 1 {
		t.Fatalf("the relaunch's node was reported %d times, want once: %v", hyperd, hostnames)
	}
	if n := len(pods()); n != 1 {
		t.Fatalf("%d pods for the build", n)
	}
}
