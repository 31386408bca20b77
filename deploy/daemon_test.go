package deploy

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// identity is the deployed ServiceAccount in a fresh namespace pair, bound
// by exactly the Role of deploy/base/rbac.yaml.
type identity struct {
	admin            kubernetes.Interface
	daemonNS, jobsNS string
	kubeconfig       string
	client           kubernetes.Interface // as the ServiceAccount
}

// deployedIdentity applies the ServiceAccount, Role and RoleBinding of the
// base (renamed into two fresh namespaces) and gets a token for the
// ServiceAccount through the TokenRequest API: the credentials a pod of
// the Deployment would have.
func deployedIdentity(t *testing.T) identity {
	t.Helper()
	admin, daemonNS, jobsNS, rename := namespacePair(t)
	var rbac []obj
	for _, o := range render(t, "base") {
		switch str(o, "kind") {
		case "ServiceAccount", "Role", "RoleBinding":
			rbac = append(rbac, o)
		}
	}
	if len(rbac) != 3 {
		t.Fatalf("the base has %d ServiceAccount/Role/RoleBinding objects, want 3", len(rbac))
	}
	rename.apply(rbac)
	kubectl(t, encodeAll(t, rbac), "apply", "--server-side", "--field-manager="+fieldManager, "-f", "-")

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	sa := str(find(rbac, "ServiceAccount", "queue-worker"), "metadata", "name")
	expiry := int64(3600)
	tr, err := admin.CoreV1().ServiceAccounts(daemonNS).CreateToken(ctx, sa,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiry}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s/%s: %v", daemonNS, sa, err)
	}

	// A kubeconfig with the dev cluster's endpoint and CA, and only the
	// ServiceAccount's token: nothing of the admin's credentials.
	adminCfg, err := clientcmd.LoadFromFile(os.Getenv(testbed.KubeconfigEnv))
	if err != nil {
		t.Fatal(err)
	}
	cluster := adminCfg.Clusters[adminCfg.Contexts[adminCfg.CurrentContext].Cluster]
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["dev"] = cluster
	cfg.AuthInfos["queue-worker"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["dev"] = &clientcmdapi.Context{Cluster: "dev", AuthInfo: "queue-worker", Namespace: jobsNS}
	cfg.CurrentContext = "dev"
	path := filepath.Join(t.TempDir(), "queue-worker.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	rc, err := clientcmd.BuildConfigFromFlags("", path)
	if err != nil {
		t.Fatal(err)
	}
	rc.Timeout = 10 * time.Second
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	return identity{admin: admin, daemonNS: daemonNS, jobsNS: jobsNS, kubeconfig: path, client: client}
}

// daemonBinary builds queue-worker once per test binary.
var daemonBinary = sync.OnceValues(func() (string, error) { return testbed.BuildDaemon("../cmd/queue-worker") })

// runningDaemon is a queue-worker process started by a test.
type runningDaemon struct {
	url string
	log string
}

// startDaemon runs the real binary as the Deployment does (run --config-dir
// with the shipped config, --config with an overlay file), on env.
func startDaemon(t *testing.T, overlay string, env map[string]string) runningDaemon {
	t.Helper()
	bin, err := daemonBinary()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	overlayPath := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(overlayPath, []byte(overlay), 0o600); err != nil {
		t.Fatal(err)
	}
	port := testbed.FreePort(t)
	d := runningDaemon{url: "http://127.0.0.1:" + strconv.Itoa(port), log: filepath.Join(dir, "daemon.log")}
	logf, err := os.Create(d.log)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "run", "--config-dir", "../config", "--config", overlayPath)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + dir, "HOST=127.0.0.1", "PORT=" + strconv.Itoa(port), "LOG_LEVEL=debug"}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		_ = cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(d.log)
			if len(b) > 6000 {
				b = b[len(b)-6000:]
			}
			t.Logf("--- daemon log (last 6k) ---\n%s", b)
		}
	})
	testbed.Eventually(t, 60*time.Second, "the daemon ready", func() bool {
		resp, err := http.Get(d.url + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
	return d
}

func (d runningDaemon) scrape(t *testing.T) string {
	t.Helper()
	resp, err := http.Get(d.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// sampleNames returns the series names of a Prometheus text exposition.
func sampleNames(text string) map[string]bool {
	out := map[string]bool{}
	for _, line := range strings.Split(text, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if i := strings.IndexAny(line, "{ "); i > 0 {
			out[line[:i]] = true
		}
	}
	return out
}

// knownMissing are metrics the dashboard or the alerts use ahead of the
// daemon exporting them, with the reason; empty when all are exported.
var knownMissing = map[string]string{}

// The daemon runs with the deployed ServiceAccount's token and nothing
// else, bound by exactly the base's Role in the jobs namespace, and does
// its whole job: a start on Kata that fails with exit 139 and is relaunched
// on hyperd by the supervisor (leader election included), a start excluded
// to hyperd, a malformed job dead-lettered, and the stops of both builds.
// No API call is refused along the way. Then every metric the dashboard
// and the alerts use is in its /metrics.
func TestDaemon_UnderDeployedRole(t *testing.T) {
	id := deployedIdentity(t)
	rdb, rns, prefix := testbed.Redis(t)
	ci := testbed.FakeCIAPI(t)
	redisHost, redisPort, _ := strings.Cut(testbed.RedisAddr(), ":")
	// The deployed shape: the config overlay file names the jobs namespace.
	overlay := fmt.Sprintf("executor:\n  k8s:\n    weightage: 100\n    options:\n      kubernetes:\n        jobsNamespace: %s\n", id.jobsNS)
	d := startDaemon(t, overlay, map[string]string{
		"KUBECONFIG":             id.kubeconfig,
		"REDIS_HOST":             redisHost,
		"REDIS_PORT":             redisPort,
		"REDIS_RESQUE_NAMESPACE": rns,
		"REDIS_QUEUE_PREFIX":     prefix,
		"ECOSYSTEM_API":          ci.URL(),
		// Every Kata pod of this daemon fails like a broken runtime: it
		// runs for a second and exits 139 (kwok, scripts/kwok/stages.yaml).
		"K8S_ANNOTATIONS":           `{"kwok.queue-worker.test/exit-code":"139","kwok.queue-worker.test/run-for":"1s"}`,
		"VERIFY_EXIT139_WINDOW":     "3s",
		"SUPERVISOR_LEASE_DURATION": "3s",
		"SUPERVISOR_RENEW_DEADLINE": "2s",
		"SUPERVISOR_RETRY_PERIOD":   "500ms",
	})
	ctx := context.Background()
	queue := rns + ":queue:" + prefix + "builds"
	push := func(job string) {
		t.Helper()
		if err := rdb.RPush(ctx, queue, job).Err(); err != nil {
			t.Fatal(err)
		}
	}
	start := func(build int, image string) string {
		return fmt.Sprintf(`{"class":"start","queue":"%sbuilds","args":[{"buildId":%d,"jobId":%d,"container":%q,"apiUri":%q,"token":"jwt-%d","pipeline":{"id":42}}]}`,
			prefix, build, build*10, image, ci.URL(), build)
	}
	pods := func(build int) map[string]corev1.Pod {
		t.Helper()
		l, err := id.admin.CoreV1().Pods(id.jobsNS).List(ctx, metav1.ListOptions{LabelSelector: "sdbuild=" + strconv.Itoa(build)})
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]corev1.Pod{}
		for _, p := range l.Items {
			out[p.Name] = p
		}
		return out
	}
	const kataBuild, excludedBuild = 9100, 9101

	t.Run("start on Kata, exit 139, fallback to hyperd", func(t *testing.T) {
		push(start(kataBuild, "registry.example/node:18"))
		testbed.Eventually(t, 60*time.Second, "the Kata pod replaced by its hyperd relaunch, running", func() bool {
			p := pods(kataBuild)
			r, ok := p["sdbuild-9100-r1"]
			return len(p) == 1 && ok && r.Labels[executor.LabelRuntime] == "hyperd" && r.Status.Phase == corev1.PodRunning
		})
	})
	t.Run("start excluded to hyperd", func(t *testing.T) {
		push(start(excludedBuild, "registry.example/rhel6:latest"))
		testbed.Eventually(t, 30*time.Second, "the excluded build running on hyperd", func() bool {
			p, ok := pods(excludedBuild)["sdbuild-9101"]
			return ok && p.Labels[executor.LabelRuntime] == "hyperd" && p.Status.Phase == corev1.PodRunning
		})
	})
	t.Run("malformed job dead-lettered", func(t *testing.T) {
		push(`{"class":"start","queue":"` + prefix + `builds","args":`)
		testbed.Eventually(t, 20*time.Second, "a failed-list entry", func() bool {
			n, err := rdb.LLen(ctx, rns+":failed").Result()
			return err == nil && n == 1
		})
	})
	t.Run("the supervisor counts both hyperd pods as running", func(t *testing.T) {
		// Once a pod has run through the early-exit window (3 s here).
		testbed.Eventually(t, 30*time.Second, "pod_start_total{runtime=hyperd,outcome=running} at 2", func() bool {
			return strings.Contains(d.scrape(t), `queue_worker_pod_start_total{outcome="running",reason="",runtime="hyperd"} 2`)
		})
	})
	t.Run("stop both builds", func(t *testing.T) {
		for _, b := range []int{kataBuild, excludedBuild} {
			push(fmt.Sprintf(`{"class":"stop","queue":"%sbuilds","args":[{"buildId":%d,"jobId":%d,"started":true}]}`, prefix, b, b*10))
		}
		testbed.Eventually(t, 30*time.Second, "no build pod and no build Secret left", func() bool {
			p, err := id.admin.CoreV1().Pods(id.jobsNS).List(ctx, metav1.ListOptions{LabelSelector: "sdbuild"})
			if err != nil || len(p.Items) > 0 {
				return false
			}
			s, err := id.admin.CoreV1().Secrets(id.jobsNS).List(ctx, metav1.ListOptions{LabelSelector: "sdbuild"})
			return err == nil && len(s.Items) == 0
		})
	})
	t.Run("nothing was refused", func(t *testing.T) {
		b, err := os.ReadFile(d.log)
		if err != nil {
			t.Fatal(err)
		}
		if m := regexp.MustCompile(`(?i).{0,200}(forbidden|unauthorized).{0,200}`).Find(b); m != nil {
			t.Fatalf("the daemon was refused an API call with the deployed Role:\n%s", m)
		}
		// The Lease (leader election) worked with the Role too.
		if !strings.Contains(string(b), "became the supervisor leader") {
			t.Error("the daemon never became the supervisor leader")
		}
	})
	t.Run("every metric of the dashboard and the alerts is exported", func(t *testing.T) {
		have := sampleNames(d.scrape(t))
		var missing []string
		for _, n := range usedMetricNames(t) {
			if have[n] {
				if why, known := knownMissing[n]; known {
					t.Logf("%s is exported now (%s): take it off knownMissing", n, why)
				}
				continue
			}
			if _, known := knownMissing[n]; known {
				t.Logf("known missing: %s", n)
				continue
			}
			missing = append(missing, n)
		}
		if len(missing) > 0 {
			t.Fatalf("used by the dashboard or the rules but not in the daemon's /metrics: %v", missing)
		}
	})
}

// The deployed Role grants nothing beyond what the daemon needs: with the
// ServiceAccount's token, Secrets cannot be listed or watched (tokens stay
// out of caches), nothing can be done in any other namespace or at cluster
// scope, and pods can be created and deleted but not modified.
func TestDeployedRole_RefusesEverythingElse(t *testing.T) {
	id := deployedIdentity(t)
	sa := id.client
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// What the daemon does works with this token (so a refusal below is
	// the Role's, not a broken token's).
	if _, err := sa.CoreV1().Pods(id.jobsNS).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
		t.Fatalf("listing pods in the jobs namespace, which the daemon needs: %v", err)
	}
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"list Secrets in the jobs namespace", func() error {
			_, err := sa.CoreV1().Secrets(id.jobsNS).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"watch Secrets in the jobs namespace", func() error {
			w, err := sa.CoreV1().Secrets(id.jobsNS).Watch(ctx, metav1.ListOptions{})
			if err == nil {
				w.Stop()
			}
			return err
		}},
		{"delete one Secret by name", func() error {
			return sa.CoreV1().Secrets(id.jobsNS).Delete(ctx, "anything", metav1.DeleteOptions{})
		}},
		{"list pods in the daemon's own namespace", func() error {
			_, err := sa.CoreV1().Pods(id.daemonNS).List(ctx, metav1.ListOptions{})
			return err
		}},
		{"create a pod in another namespace", func() error {
			_, err := sa.CoreV1().Pods(id.daemonNS).Create(ctx, &corev1.Pod{
				ObjectMeta: metav1.ObjectMeta{Name: "escape"},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x"}}},
			}, metav1.CreateOptions{})
			return err
		}},
		{"list pods in every namespace", func() error {
			_, err := sa.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"patch a build pod", func() error {
			_, err := sa.CoreV1().Pods(id.jobsNS).Patch(ctx, "sdbuild-1", types.MergePatchType, []byte(`{"metadata":{"labels":{"x":"y"}}}`), metav1.PatchOptions{})
			return err
		}},
		{"list nodes", func() error {
			_, err := sa.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
			return err
		}},
		{"read the kube-system Secrets", func() error {
			_, err := sa.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
			return err
		}},
		{"change its own Role", func() error {
			return sa.RbacV1().Roles(id.jobsNS).Delete(ctx, "queue-worker", metav1.DeleteOptions{})
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(); !apierrors.IsForbidden(err) {
				t.Fatalf("want Forbidden, got %v", err)
			}
		})
	}
}
