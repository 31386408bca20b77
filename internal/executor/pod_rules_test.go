package executor

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
	"github.com/sdkata/queue-worker/internal/weightage"
)

func TestIsPRJob_StatelessAcrossCalls(t *testing.T) {
	// The reference's global-flag regex alternated on repeated matches (it
	// kept state between calls); ours must answer the same every time.
	for i := range 6 {
		for name, want := range map[string]bool{
			"PR-12": true, "PR-12:main": true, "PR-1:a:b": true,
			"main": false, "PR-": false, "PR-x": false, "pr-12": false, "PR-12:": false, "xPR-12": false,
		} {
			if got := isPRJob(&build.Config{JobName: name}); got != want {
				t.Fatalf("call %d: isPRJob(%q) = %v, want %v", i, name, got, want)
			}
		}
	}
	if !isPRJob(&build.Config{JobName: "main", IsPR: true}) {
		t.Fatal("isPR flag ignored")
	}
}

func TestGracePeriod_MaxOfAnnotationAndConfigCapped(t *testing.T) {
	tests := []struct {
		ann  any
		want int64
	}{{nil, 60}, {float64(30), 60}, {float64(90), 90}, {float64(300), 120}, {"100", 100}, {"x", 60}, {float64(-5), 60}}
	for _, tt := range tests {
		b := &build.Config{Annotations: map[string]any{}}
		if tt.ann != nil {
			b.Annotations["screwdriver.cd/terminationGracePeriodSeconds"] = tt.ann
		}
		if got := gracePeriod(b, 60, 120); got != tt.want {
			t.Errorf("annotation %v: got %d, want %d", tt.ann, got, tt.want)
		}
	}
}

func TestDockerRequested(t *testing.T) {
	for v, want := range map[any]bool{true: true, false: false, "true": true, "TRUE": true, "false": false, "yes": false, float64(1): false} {
		b := &build.Config{Annotations: map[string]any{"beta.screwdriver.cd/dockerEnabled": v}}
		if got := dockerRequested(b); got != want {
			t.Errorf("dockerEnabled %#v: got %v, want %v", v, got, want)
		}
	}
	if dockerRequested(&build.Config{}) {
		t.Error("absent annotation enables dind")
	}
}

func TestWithRequests_Ratios(t *testing.T) {
	r := withRequests(kataLimits(6, 12), config.RequestRatios{CPURatio: 0.3, MemoryRatio: 0.7})
	if got := r.Requests.Cpu().MilliValue(); got != 1800 {
		t.Errorf("cpu request %dm, want 1800m", got)
	}
	if got := r.Requests.Memory().Value(); got != 8602*mebibyte {
		t.Errorf("memory request %d, want 8602Mi", got)
	}
	eq := withRequests(hyperdLimits(0.5, 1024), config.RequestRatios{CPURatio: 1, MemoryRatio: 1})
	if !eq.Requests.Cpu().Equal(*eq.Limits.Cpu()) || !eq.Requests.Memory().Equal(*eq.Limits.Memory()) {
		t.Errorf("ratio 1: requests %v != limits %v", eq.Requests, eq.Limits)
	}
	tiny := withRequests(kataLimits(0.001, 0.001), config.RequestRatios{CPURatio: 0.01, MemoryRatio: 0.01})
	if tiny.Requests.Cpu().MilliValue() != 1 || tiny.Requests.Memory().Value() != mebibyte {
		t.Errorf("floors: %v", tiny.Requests)
	}
}

func TestPodLabels_HandlesCannotBeOverridden(t *testing.T) {
	o := &Options{Prefix: "beta_"}
	b := &build.Config{BuildID: 7, JobName: "main"}
	l := podLabels(o, b, map[string]string{
		LabelBuild: "x", LabelRuntime: "hyperd", LabelManaged: "someone", "team": "a b", "screwdriver.cd/job": "other",
	}, weightage.Kata)
	if l[LabelBuild] != "beta_7" || l[LabelRuntime] != "kata" || l[LabelManaged] != managedBy {
		t.Fatalf("handles overridden: %v", l)
	}
	if l["team"] != "a.b" || l["screwdriver.cd/job"] != "other" {
		t.Fatalf("podLabels not merged/sanitised: %v", l)
	}
}

func TestKataPod_QoSGuaranteedByDefault(t *testing.T) {
	k := config.KataKubernetes{
		Resources: config.Resources{
			CPU: config.Tiers{Micro: 1, Low: 2, High: 6, Turbo: 12, Max: 12}, Memory: config.Tiers{Micro: 1, Low: 2, High: 12, Turbo: 16, Max: 16},
			Requests: config.RequestRatios{CPURatio: 1, MemoryRatio: 1}, Launcher: config.LauncherResources{CPU: "250m", Memory: "256Mi"},
		},
		DockerFeatureEnabled: true, DockerImage: "docker:dind", MaxTerminationGracePeriodSeconds: 120,
	}
	o := &Options{LaunchImage: "l", LaunchVersion: "v", Kata: k}
	b := &build.Config{BuildID: 1, Container: "img", Annotations: map[string]any{"screwdriver.cd/dockerEnabled": true}}
	pod := PodSpec(o, b, weightage.Decision{Runtime: weightage.Kata, Bucket: -1}, 0)
	if len(pod.Spec.Containers) != 2 {
		t.Fatalf("want build + dind, got %d containers", len(pod.Spec.Containers))
	}
	for _, c := range append(pod.Spec.InitContainers, pod.Spec.Containers...) {
		for _, res := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			l, r := c.Resources.Limits[res], c.Resources.Requests[res]
			if l.IsZero() || !l.Equal(r) {
				t.Errorf("%s %s: requests %v, limits %v (want equal, for Guaranteed QoS)", c.Name, res, r.String(), l.String())
			}
		}
	}
}
