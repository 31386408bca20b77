package executor_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/executor"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/weightage"
)

var updateGolden = flag.Bool("update", false, "rewrite testdata/golden/*.yaml from the current pod builder")

// goldenCase is one cell of the pod-shape matrix: a config change, a build
// and the runtime it was routed to.
type goldenCase struct {
	name   string
	config func(c *config.Config)
	build  func(b *build.Config)
	d      weightage.Decision
}

func goldenCases() []goldenCase {
	diskCache := func(c *config.Config) {
		c.Ecosystem.Cache.Strategy = "disk"
		c.Ecosystem.Cache.Path = "/mnt/sdcache"
		c.Ecosystem.Cache.Compress = true
		c.Ecosystem.Cache.MaxSizeMB = 2048
	}
	prJob := func(b *build.Config) {
		b.JobName = "PR-12:main"
		b.PRNum = 12
		b.PRParentJobID = 678
		b.JobID = 901
	}
	return []goldenCase{
		{name: "kata-plain", d: kataDecision},
		{
			name: "kata-high-timeout60-grace300-capped", d: kataDecision,
			build: func(b *build.Config) {
				b.Annotations = map[string]any{
					"screwdriver.cd/cpu": "HIGH", "screwdriver.cd/ram": "HIGH",
					"screwdriver.cd/timeout": float64(60), "screwdriver.cd/terminationGracePeriodSeconds": float64(300),
				}
			},
		},
		{
			name: "kata-max", d: kataDecision,
			build: func(b *build.Config) {
				b.Annotations = map[string]any{"screwdriver.cd/cpu": "MAX", "beta.screwdriver.cd/ram": "MAX"} // ram MAX is not a tier: LOW
			},
		},
		{
			name: "kata-cpu40-capped-ram3", d: kataDecision,
			build: func(b *build.Config) {
				b.Annotations = map[string]any{"screwdriver.cd/cpu": float64(40), "screwdriver.cd/ram": float64(3)}
			},
		},
		{
			name: "kata-micro-string-number-is-low", d: kataDecision,
			build: func(b *build.Config) {
				b.Annotations = map[string]any{"screwdriver.cd/cpu": "MICRO", "screwdriver.cd/ram": "4"}
			},
		},
		{
			name: "kata-dind-requests-ratio", d: kataDecision,
			config: func(c *config.Config) {
				k := &c.Executor.K8s.Options.Kubernetes
				k.DockerFeatureEnabled = true
				k.Privileged = true
				k.Resources.Requests = config.RequestRatios{CPURatio: 0.5, MemoryRatio: 0.75}
			},
			build: func(b *build.Config) {
				b.Annotations = map[string]any{
					"screwdriver.cd/dockerEnabled": true, "screwdriver.cd/dockerCpu": "HIGH",
					"screwdriver.cd/dockerRam": float64(4), // names only: LOW
				}
			},
		},
		{
			// executor-k8s's rootless BuildKit: buildkitd sidecar sized by
			// its tiers, certs volumes, client certs on the build container.
			name: "kata-buildkit", d: kataDecision,
			build: func(b *build.Config) {
				b.Annotations = map[string]any{
					"screwdriver.cd/rootlessBuildkitEnabled": true, "screwdriver.cd/buildkitCpu": "HIGH",
					"screwdriver.cd/buildkitRam": "TURBO",
				}
			},
		},
		{
			// Both sidecars: dind takes the rootless image; both follow the
			// configured pull policy.
			name: "kata-dind-buildkit-ifnotpresent", d: kataDecision,
			config: func(c *config.Config) {
				k := &c.Executor.K8s.Options.Kubernetes
				k.DockerFeatureEnabled = true
				k.ImagePullPolicy = "IfNotPresent"
			},
			build: func(b *build.Config) {
				b.Annotations = map[string]any{"screwdriver.cd/dockerEnabled": true, "screwdriver.cd/rootlessBuildkitEnabled": "true"}
			},
		},
		{
			name: "kata-buildkit-asked-but-cluster-off", d: kataDecision,
			config: func(c *config.Config) {
				c.Executor.K8s.Options.Kubernetes.RootlessBuildkitFeatureEnabled = false
			},
			build: func(b *build.Config) {
				b.Annotations = map[string]any{"screwdriver.cd/rootlessBuildkitEnabled": true}
			},
		},
		{
			name: "kata-dind-asked-but-cluster-off", d: kataDecision,
			build: func(b *build.Config) {
				b.Annotations = map[string]any{"screwdriver.cd/dockerEnabled": true}
			},
		},
		{
			name: "kata-disk-cache-pr-job", d: kataDecision,
			config: func(c *config.Config) {
				diskCache(c)
				c.Executor.K8s.Options.Kubernetes.Resources.Disk.Speed = "screwdriver.cd/disk-speed"
			},
			build: func(b *build.Config) {
				prJob(b)
				b.Annotations = map[string]any{"screwdriver.cd/diskSpeed": "TURBO", "screwdriver.cd/disk": "HIGH"}
			},
		},
		{
			name: "kata-options", d: kataDecision,
			config: func(c *config.Config) {
				k := &c.Executor.K8s.Options.Kubernetes
				k.PodLabels = map[string]string{
					"team": "ci_tools", "sdbuild": "hijack", executor.LabelRuntime: "hyperd", "tier": "gold",
				}
				k.Annotations = map[string]string{"io.kubernetes.cri.untrusted-workload": "true", executor.AnnotationRule: "forged"}
				k.ImagePullSecretName = "regcred"
				k.ImagePullPolicy = "IfNotPresent"
				k.DNSPolicy = "Default"
				k.Privileged = true
				k.AutomountServiceAccountToken = true
				k.PreferredNodeSelectors = map[string]string{"disktype": "ssd"}
				k.LifecycleHooks = map[string]any{
					"preStop":   map[string]any{"exec": map[string]any{"command": []any{"/bin/sh", "-c", "sleep 5"}}},
					"postStart": map[string]any{"httpGet": map[string]any{"path": "/ready", "port": float64(8080)}},
				}
				k.VolumeMounts = []config.VolumeMount{{Name: "kvm", Path: "/dev/kvm", Type: "CharDevice", MountPath: "/dev/kvm", ReadOnly: true}}
				k.BuildSecrets = []config.BuildSecret{{SecretEnv: "SSHCA", SecretName: "sd-secret", SecretKey: "private"}}
				k.BuildSecretsFile = []config.BuildSecretFile{{Name: "gpg", MountPath: "/etc/gpg", SecretName: "sd-gpg", ReadOnly: true}}
			},
			build: func(b *build.Config) {
				b.Template = &build.Template{FullName: "sd/node build", Version: "1.2.3"}
			},
		},
		{name: "hyperd-plain", d: hyperdDecision},
		{
			name: "hyperd-disk-labels-cache-pr", d: hyperdDecision,
			config: func(c *config.Config) {
				diskCache(c)
				c.Executor.K8sVM.Options.Kubernetes.Resources.Disk = config.Disk{Space: "screwdriver.cd/disk", Speed: "screwdriver.cd/disk-speed"}
			},
			build: func(b *build.Config) {
				prJob(b)
				b.Annotations = map[string]any{
					"screwdriver.cd/disk": "HIGH", "screwdriver.cd/diskSpeed": "TURBO",
					"screwdriver.cd/cpu": "MAX", // not a tier on HyperD: LOW
					"screwdriver.cd/ram": float64(3),
				}
			},
		},
		{
			name: "kata-prefix-beta-cache", d: kataDecision,
			config: func(c *config.Config) {
				c.Executor.K8s.Options.Prefix = "beta_"
				diskCache(c)
			},
		},
		{
			name: "hyperd-prefix-beta-cache", d: hyperdDecision,
			config: func(c *config.Config) {
				c.Executor.K8s.Options.Prefix = "beta_"
				diskCache(c)
			},
		},
	}
}

// goldenPod renders a case from the shipped defaults (validated after the
// case's changes, so every cell is a configuration Load would accept).
func goldenPod(t *testing.T, gc goldenCase) *corev1.Pod {
	t.Helper()
	cfg, err := config.Load(config.LoadOptions{DefaultsFile: "../../config/default.yaml", Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	if gc.config != nil {
		gc.config(cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("case config is invalid: %v", err)
	}
	o := cfg.Executor.K8s.Options
	opts := &executor.Options{
		Prefix: o.Prefix, LaunchImage: o.LaunchImage, LaunchVersion: o.LaunchVersion, SDHabEnabled: o.SDHabEnabled,
		Kata: o.Kubernetes, Hyperd: cfg.Executor.K8sVM.Options.Kubernetes, Ecosystem: cfg.Ecosystem,
	}
	b := &build.Config{
		BuildID: 12345, JobID: 678, EventID: 9001, JobName: "main", Container: "node:18",
		APIURI: "https://api.example", Token: secretToken,
		Pipeline: &build.Pipeline{ID: 42, Name: "org/repo"},
	}
	if gc.build != nil {
		gc.build(b)
	}
	pod := executor.PodSpec(opts, b, gc.d, 0)
	// Pure: the same inputs render the same pod.
	if again := executor.PodSpec(opts, b, gc.d, 0); !equalJSON(t, pod, again) {
		t.Fatal("PodSpec is not deterministic")
	}
	return pod
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Equal(ja, jb)
}

func TestPodGolden(t *testing.T) {
	for _, gc := range goldenCases() {
		t.Run(gc.name, func(t *testing.T) {
			pod := goldenPod(t, gc)
			got, err := yaml.Marshal(pod)
			if err != nil {
				t.Fatal(err)
			}
			file := filepath.Join("testdata", "golden", gc.name+".yaml")
			if *updateGolden {
				if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(file, got, 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(file)
			if err != nil {
				t.Fatalf("%v (run go test ./internal/executor -run TestPodGolden -update)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("pod differs from %s (rerun with -update if intended):\n%s", file, lineDiff(string(want), string(got)))
			}
		})
	}
}

// lineDiff lists the first differing lines, enough to see what moved.
func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var sb strings.Builder
	shown := 0
	for i := 0; i < max(len(w), len(g)) && shown < 20; i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			sb.WriteString("line " + strconv.Itoa(i+1) + ":\n  - " + wl + "\n  + " + gl + "\n")
			shown++
		}
	}
	return sb.String()
}

// TestPodGolden_NoLiteralToken: the build token reaches the pod only through
// the per-build Secret (env valueFrom), never as a literal anywhere in the
// spec (the reference put it in env values).
func TestPodGolden_NoLiteralToken(t *testing.T) {
	for _, gc := range goldenCases() {
		t.Run(gc.name, func(t *testing.T) {
			pod := goldenPod(t, gc)
			raw, err := json.Marshal(pod)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(raw, []byte(secretToken)) {
				t.Fatalf("the build token appears in the pod spec")
			}
			var viaSecret bool
			for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
				for _, e := range c.Env {
					if e.Name == "SD_TOKEN" && e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil &&
						e.ValueFrom.SecretKeyRef.Name == executor.TokenSecretName(pod.Name) {
						viaSecret = true
					}
				}
			}
			if !viaSecret {
				t.Fatal("no container reads SD_TOKEN from the build's token Secret")
			}
		})
	}
}

// TestPodGolden_CreatedByAPIServer creates every golden pod for real in the
// dev cluster: admission (RuntimeClass kata, privileged pods) and API
// validation must accept each shape.
func TestPodGolden_CreatedByAPIServer(t *testing.T) {
	cs, ns := testbed.Kube(t)
	ctx := context.Background()
	for _, gc := range goldenCases() {
		t.Run(gc.name, func(t *testing.T) {
			pod := goldenPod(t, gc)
			pod.Namespace = ns
			pod.Name += "-" + strings.ReplaceAll(gc.name, "_", "-")
			if len(pod.Name) > 63 {
				pod.Name = pod.Name[:63]
			}
			pod.Name = strings.TrimRight(pod.Name, "-")
			created, err := cs.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{})
			if err != nil {
				t.Fatalf("apiserver refused the %s pod: %v", gc.name, err)
			}
			if created.UID == "" {
				t.Fatal("created pod has no UID")
			}
			// What the server stored is what we rendered (modulo defaults).
			if created.Spec.TerminationGracePeriodSeconds == nil ||
				*created.Spec.TerminationGracePeriodSeconds != *pod.Spec.TerminationGracePeriodSeconds {
				t.Errorf("grace period changed on the server")
			}
			if len(created.Spec.Containers) != len(pod.Spec.Containers) || len(userVolumes(created)) != len(pod.Spec.Volumes) {
				t.Errorf("containers/volumes changed on the server")
			}
			for i, c := range created.Spec.Containers {
				if !equalJSON(t, c.Resources, pod.Spec.Containers[i].Resources) {
					t.Errorf("container %s resources: stored %v, sent %v", c.Name, c.Resources, pod.Spec.Containers[i].Resources)
				}
			}
		})
	}
}

// userVolumes leaves out the service-account token volume that admission
// adds when automountServiceAccountToken is on.
func userVolumes(p *corev1.Pod) []corev1.Volume {
	var out []corev1.Volume
	for _, v := range p.Spec.Volumes {
		if !strings.HasPrefix(v.Name, "kube-api-access-") {
			out = append(out, v)
		}
	}
	return out
}
