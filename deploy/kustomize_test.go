package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/sdkata/queue-worker/internal/testbed"
)

// The namespaces the manifests name: the daemon's and the build pods'.
const (
	daemonNamespace = "screwdriver"
	jobsNamespace   = "sd-builds"
	fieldManager    = "qw-deploy-test"
)

// obj is one Kubernetes object as rendered YAML decodes.
type obj = map[string]any

func str(m obj, path ...string) string {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(obj)
		if !ok {
			return ""
		}
		cur = mm[p]
	}
	s, _ := cur.(string)
	return s
}

func child(m obj, path ...string) obj {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(obj)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	mm, _ := cur.(obj)
	return mm
}

func list(m obj, path ...string) []any {
	var cur any = m
	for _, p := range path {
		mm, ok := cur.(obj)
		if !ok {
			return nil
		}
		cur = mm[p]
	}
	l, _ := cur.([]any)
	return l
}

func kubectl(t *testing.T, stdin []byte, args ...string) []byte {
	t.Helper()
	out, err := kubectlErr(stdin, args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// kubectlErr runs kubectl against the test control plane, never KUBECONFIG.
func kubectlErr(stdin []byte, args ...string) ([]byte, error) {
	kc := os.Getenv(testbed.KubeconfigEnv)
	if kc == "" && !(len(args) > 0 && args[0] == "kustomize") {
		return nil, fmt.Errorf("%s is not set: run `make test`, or `eval \"$(scripts/dev-cluster.sh up)\"` and export it", testbed.KubeconfigEnv)
	}
	cmd := exec.Command("kubectl", args...)
	cmd.Env = append(os.Environ(), "KUBECONFIG="+kc)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%w: %s", err, stderr.String())
	}
	return out, nil
}

// render runs kubectl kustomize on dir and decodes every object.
func render(t *testing.T, dir string) []obj {
	t.Helper()
	return decodeAll(t, kubectl(t, nil, "kustomize", dir))
}

func decodeAll(t *testing.T, b []byte) []obj {
	t.Helper()
	var out []obj
	dec := yaml.NewDecoder(bytes.NewReader(b))
	for {
		var o obj
		err := dec.Decode(&o)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("decoding rendered objects: %v", err)
		}
		if o != nil {
			out = append(out, o)
		}
	}
	return out
}

func encodeAll(t *testing.T, objs []obj) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	for _, o := range objs {
		if err := enc.Encode(o); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func find(objs []obj, kind, name string) obj {
	for _, o := range objs {
		if str(o, "kind") == kind && str(o, "metadata", "name") == name {
			return o
		}
	}
	return nil
}

// renamer moves rendered objects from the manifests' namespaces into a
// test's own: object namespaces, Namespace objects, RoleBinding subjects,
// the jobs namespace in the config overlay and in env, and ServiceMonitor
// namespace selectors.
type renamer map[string]string

var jobsNamespaceKey = regexp.MustCompile(`(?m)^(\s*jobsNamespace:\s*)(\S+)\s*$`)

func (r renamer) apply(objs []obj) {
	for _, o := range objs {
		md := child(o, "metadata")
		if ns, ok := r[str(md, "namespace")]; ok {
			md["namespace"] = ns
		}
		switch str(o, "kind") {
		case "Namespace":
			if ns, ok := r[str(md, "name")]; ok {
				md["name"] = ns
			}
		case "RoleBinding", "ClusterRoleBinding":
			for _, s := range list(o, "subjects") {
				if sm, ok := s.(obj); ok {
					if ns, ok := r[str(sm, "namespace")]; ok {
						sm["namespace"] = ns
					}
				}
			}
		case "ConfigMap":
			for k, v := range child(o, "data") {
				s, _ := v.(string)
				child(o, "data")[k] = jobsNamespaceKey.ReplaceAllStringFunc(s, func(line string) string {
					m := jobsNamespaceKey.FindStringSubmatch(line)
					if ns, ok := r[m[2]]; ok {
						return m[1] + ns
					}
					return line
				})
			}
		case "Deployment":
			for _, c := range list(o, "spec", "template", "spec", "containers") {
				for _, e := range list(c.(obj), "env") {
					em := e.(obj)
					if str(em, "name") == "K8S_JOBS_NAMESPACE" {
						if ns, ok := r[str(em, "value")]; ok {
							em["value"] = ns
						}
					}
				}
			}
		case "ServiceMonitor":
			names := list(o, "spec", "namespaceSelector", "matchNames")
			for i, n := range names {
				if ns, ok := r[n.(string)]; ok {
					names[i] = ns
				}
			}
		}
	}
}

// namespacePair makes two fresh namespaces (the daemon's, the jobs'),
// deleted when the test ends, and the renamer onto them.
func namespacePair(t *testing.T) (kubernetes.Interface, string, string, renamer) {
	t.Helper()
	kube, daemonNS := testbed.Kube(t)
	_, jobsNS := testbed.Kube(t)
	return kube, daemonNS, jobsNS, renamer{daemonNamespace: daemonNS, jobsNamespace: jobsNS}
}

var crdsOnce sync.Once

// installCRDs applies the vendored ServiceMonitor, PrometheusRule and
// ScaledObject CRDs (idempotent; left installed, see crds/README.md).
func installCRDs(t *testing.T) {
	t.Helper()
	var err error
	crdsOnce.Do(func() {
		_, err = kubectlErr(nil, "apply", "--server-side", "--force-conflicts", "--field-manager="+fieldManager, "-f", "crds/")
		if err == nil {
			_, err = kubectlErr(nil, "wait", "--for=condition=Established", "--timeout=60s",
				"crd/servicemonitors.monitoring.coreos.com", "crd/prometheusrules.monitoring.coreos.com", "crd/scaledobjects.keda.sh")
		}
	})
	if err != nil {
		t.Fatalf("installing the vendored CRDs: %v", err)
	}
}

// checkConsistent checks what the API server does not: that the objects
// of an overlay refer to each other correctly.
func checkConsistent(t *testing.T, objs []obj, daemonNS, jobsNS string) {
	t.Helper()
	dep := find(objs, "Deployment", "queue-worker")
	if dep == nil {
		t.Fatal("no Deployment queue-worker")
	}
	podLabels := child(dep, "spec", "template", "metadata", "labels")
	matches := func(sel obj) bool {
		if len(sel) == 0 {
			return false
		}
		for k, v := range sel {
			if podLabels[k] != v {
				return false
			}
		}
		return true
	}
	sa := str(dep, "spec", "template", "spec", "serviceAccountName")
	if o := find(objs, "ServiceAccount", sa); o == nil || str(o, "metadata", "namespace") != daemonNS {
		t.Errorf("the Deployment runs as ServiceAccount %q, which is not in %s", sa, daemonNS)
	}
	rb := find(objs, "RoleBinding", "queue-worker")
	role := find(objs, "Role", str(rb, "roleRef", "name"))
	if rb == nil || role == nil || str(rb, "metadata", "namespace") != jobsNS || str(role, "metadata", "namespace") != jobsNS {
		t.Errorf("the RoleBinding and its Role must be in the jobs namespace %s", jobsNS)
	}
	bound := false
	for _, s := range list(rb, "subjects") {
		sm := s.(obj)
		bound = bound || str(sm, "kind") == "ServiceAccount" && str(sm, "name") == sa && str(sm, "namespace") == daemonNS
	}
	if !bound {
		t.Errorf("the RoleBinding does not bind ServiceAccount %s/%s: %v", daemonNS, sa, list(rb, "subjects"))
	}
	if !jobsNamespaceKey.MatchString(str(find(objs, "ConfigMap", "queue-worker-config"), "data", "config.yaml")) ||
		jobsNamespaceKey.FindStringSubmatch(str(find(objs, "ConfigMap", "queue-worker-config"), "data", "config.yaml"))[2] != jobsNS {
		t.Errorf("the config overlay does not name the jobs namespace %s", jobsNS)
	}
	svc := find(objs, "Service", "queue-worker")
	if !matches(child(svc, "spec", "selector")) {
		t.Errorf("the Service selects %v, not the Deployment's pods %v", child(svc, "spec", "selector"), podLabels)
	}
	if !matches(child(find(objs, "PodDisruptionBudget", "queue-worker"), "spec", "selector", "matchLabels")) {
		t.Error("the PodDisruptionBudget does not select the Deployment's pods")
	}
	sm := find(objs, "ServiceMonitor", "queue-worker")
	svcLabels := child(svc, "metadata", "labels")
	for k, v := range child(sm, "spec", "selector", "matchLabels") {
		if svcLabels[k] != v {
			t.Errorf("the ServiceMonitor selects %s=%v, the Service has %v", k, v, svcLabels)
		}
	}
	ports := map[string]bool{}
	for _, p := range list(svc, "spec", "ports") {
		ports[str(p.(obj), "name")] = true
	}
	for _, e := range list(sm, "spec", "endpoints") {
		if p := str(e.(obj), "port"); !ports[p] {
			t.Errorf("the ServiceMonitor scrapes port %q, the Service has %v", p, ports)
		}
	}
	if find(objs, "PrometheusRule", "queue-worker") == nil || find(objs, "RuntimeClass", "kata") == nil {
		t.Error("PrometheusRule queue-worker or RuntimeClass kata missing")
	}
	if so := find(objs, "ScaledObject", "queue-worker"); so != nil {
		if str(so, "spec", "scaleTargetRef", "name") != "queue-worker" {
			t.Errorf("the ScaledObject scales %q", str(so, "spec", "scaleTargetRef", "name"))
		}
		if _, ok := child(dep, "spec")["replicas"]; ok {
			t.Error("with KEDA, the Deployment must not set spec.replicas (an apply would undo KEDA's count)")
		}
		if n, _ := child(so, "spec")["minReplicaCount"].(int); n < 1 {
			t.Errorf("minReplicaCount %d: a replica must stay to supervise running builds", n)
		}
	}
}

// Each overlay renders, its objects refer to each other correctly, and the
// API server accepts all of them (server-side apply, strict field
// validation, with the real CRDs of the Prometheus Operator and KEDA) in a
// fresh pair of namespaces.
func TestOverlays_ApplyServerSide(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Fatal("kubectl is required")
	}
	installCRDs(t)
	for _, tt := range []struct {
		overlay string
		kinds   []string // must exist after the apply
	}{
		{"overlays/dev", []string{"Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service",
			"PodDisruptionBudget", "ServiceMonitor", "PrometheusRule", "RuntimeClass"}},
		{"overlays/keda", []string{"ScaledObject", "Deployment", "PrometheusRule", "ServiceMonitor"}},
	} {
		t.Run(filepath.Base(tt.overlay), func(t *testing.T) {
			kube, daemonNS, jobsNS, rename := namespacePair(t)
			objs := render(t, tt.overlay)
			rename.apply(objs)
			checkConsistent(t, objs, daemonNS, jobsNS)
			for _, o := range objs {
				if ns := str(o, "metadata", "namespace"); ns == daemonNamespace || ns == jobsNamespace {
					t.Fatalf("%s %s still in %s after the rename", str(o, "kind"), str(o, "metadata", "name"), ns)
				}
			}
			kubectl(t, encodeAll(t, objs), "apply", "--server-side", "--field-manager="+fieldManager, "--validate=strict", "-f", "-")

			// Read every object back (one kubectl get of the same manifest).
			got := strings.Fields(string(kubectl(t, encodeAll(t, objs), "get", "-f", "-", "-o", "name")))
			if len(got) != len(objs) {
				t.Errorf("applied %d objects, found %d: %v", len(objs), len(got), got)
			}
			have := map[string]bool{}
			for _, o := range objs {
				have[str(o, "kind")] = true
			}
			for _, k := range tt.kinds {
				if !have[k] {
					t.Errorf("the overlay has no %s", k)
				}
			}
			// The Deployment really is in the daemon namespace, with the
			// ServiceAccount the Role is bound to.
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			d, err := kube.AppsV1().Deployments(daemonNS).Get(ctx, "queue-worker", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if d.Spec.Template.Spec.ServiceAccountName != "queue-worker" {
				t.Errorf("serviceAccountName %q", d.Spec.Template.Spec.ServiceAccountName)
			}
			if _, err := kube.CoreV1().ServiceAccounts(daemonNS).Get(ctx, "queue-worker", metav1.GetOptions{}); err != nil {
				t.Error(err)
			}
		})
	}
}

// The shipped stand-alone files (deploy/*.yaml, kept for kubectl apply -f)
// are the base's own files.
func TestStandaloneFiles_AreTheBase(t *testing.T) {
	for _, f := range []string{"queue-worker.yaml", "rbac.yaml", "runtimeclass-kata.yaml"} {
		a, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join("base", f))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("deploy/%s differs from deploy/base/%s", f, f)
		}
	}
}

// The config overlay each installation mounts is one the daemon accepts
// (strict validation: unknown keys, types, ranges), with the shipped
// config files underneath, as in the image.
func TestOverlays_ConfigLoads(t *testing.T) {
	bin, err := daemonBinary()
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"base", "overlays/dev", "overlays/keda"} {
		t.Run(dir, func(t *testing.T) {
			cm := find(render(t, dir), "ConfigMap", "queue-worker-config")
			overlay := str(cm, "data", "config.yaml")
			if overlay == "" {
				t.Fatal("no ConfigMap queue-worker-config with config.yaml")
			}
			path := filepath.Join(t.TempDir(), "config.yaml")
			if err := os.WriteFile(path, []byte(overlay), 0o600); err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(bin, "config", "print", "--config-dir", "../config", "--config", path)
			cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("queue-worker config print refused the overlay of %s: %v\n%s", dir, err, out)
			}
		})
	}
}
