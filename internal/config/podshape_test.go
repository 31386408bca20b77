package config

import (
	"testing"
)

// Keys added for the full pod shapes: defaults, env names, and refusals
// that name the key and the env var it came from.
func TestLoad_PodShapeKeysDefaultsAndEnv(t *testing.T) {
	cfg, _, err := loadRepo(t, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	k := cfg.Executor.K8s.Options.Kubernetes
	if k.MaxTerminationGracePeriodSeconds != 120 || k.Resources.Requests != (RequestRatios{1, 1}) ||
		k.Resources.Launcher != (LauncherResources{"250m", "256Mi"}) || k.DockerImage != "docker:20.10-dind" {
		t.Fatalf("defaults: max grace %d, requests %+v, launcher %+v, docker image %q",
			k.MaxTerminationGracePeriodSeconds, k.Resources.Requests, k.Resources.Launcher, k.DockerImage)
	}
	if lc, err := k.Lifecycle(); err != nil || lc != nil {
		t.Fatalf("default lifecycle = %v, %v; want none", lc, err)
	}

	cfg, _, err = loadRepo(t, map[string]string{
		"K8S_MAX_TERMINATION_GRACE_PERIOD_SECONDS": "300",
		"TERMINATION_GRACE_PERIOD_SECONDS":         "200",
		"K8S_CPU_REQUEST_RATIO":                    "0.5",
		"K8S_MEMORY_REQUEST_RATIO":                 "0.25",
		"K8S_LAUNCHER_CPU":                         "100m",
		"K8S_LAUNCHER_MEMORY":                      "64Mi",
		"K8S_DOCKER_IMAGE":                         "docker:27-dind",
		"DOCKER_FEATURE_ENABLED":                   "false",
		"K8S_LIFECYCLE_HOOKS":                      `{"preStop":{"exec":{"command":["/bin/sh","-c","sleep 5"]}}}`,
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	k = cfg.Executor.K8s.Options.Kubernetes
	if k.MaxTerminationGracePeriodSeconds != 300 || k.TerminationGracePeriodSeconds != 200 ||
		k.Resources.Requests != (RequestRatios{0.5, 0.25}) || k.Resources.Launcher != (LauncherResources{"100m", "64Mi"}) ||
		k.DockerImage != "docker:27-dind" || k.DockerFeatureEnabled {
		t.Fatalf("from env: %+v", k)
	}
	lc, err := k.Lifecycle()
	if err != nil || lc == nil || lc.PreStop == nil || lc.PreStop.Exec == nil || len(lc.PreStop.Exec.Command) != 3 || lc.PostStart != nil {
		t.Fatalf("lifecycle from env = %+v, %v", lc, err)
	}
}

func TestLoad_PodShapeKeysRefused(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		overlay string
		want    []string
	}{
		{
			name: "GraceAboveCap",
			env:  map[string]string{"TERMINATION_GRACE_PERIOD_SECONDS": "300"},
			want: []string{`key "executor.k8s.options.kubernetes.terminationGracePeriodSeconds" (from env TERMINATION_GRACE_PERIOD_SECONDS): 300 seconds is above executor.k8s.options.kubernetes.maxTerminationGracePeriodSeconds (120, from file`},
		},
		{
			name: "RatioZeroAndAboveOne",
			env:  map[string]string{"K8S_CPU_REQUEST_RATIO": "0", "K8S_MEMORY_REQUEST_RATIO": "1.5"},
			want: []string{
				`key "executor.k8s.options.kubernetes.resources.requests.cpuRatio" (from env K8S_CPU_REQUEST_RATIO): must be in (0, 1], got 0`,
				`key "executor.k8s.options.kubernetes.resources.requests.memoryRatio" (from env K8S_MEMORY_REQUEST_RATIO): must be in (0, 1], got 1.5`,
			},
		},
		{
			name: "LauncherQuantity",
			env:  map[string]string{"K8S_LAUNCHER_CPU": "a lot", "K8S_LAUNCHER_MEMORY": "-1Mi"},
			want: []string{
				`key "executor.k8s.options.kubernetes.resources.launcher.cpu" (from env K8S_LAUNCHER_CPU): "a lot" is not a Kubernetes quantity`,
				`key "executor.k8s.options.kubernetes.resources.launcher.memory" (from env K8S_LAUNCHER_MEMORY): must be greater than 0`,
			},
		},
		{
			name: "LifecycleUnknownHookAndField",
			env:  map[string]string{"K8S_LIFECYCLE_HOOKS": `{"preStart":{"exec":{"command":["x"]}},"preStop":{"exec":{"cmd":["x"]}}}`},
			want: []string{
				`key "executor.k8s.options.kubernetes.lifecycleHooks.preStart" (from env K8S_LIFECYCLE_HOOKS): unknown hook; want postStart or preStop`,
				`key "executor.k8s.options.kubernetes.lifecycleHooks.preStop" (from env K8S_LIFECYCLE_HOOKS): not a lifecycle handler: unknown field "cmd"`,
			},
		},
		{
			name: "LifecycleTwoActions",
			overlay: `executor: {k8s: {options: {kubernetes: {lifecycleHooks: {postStart: {exec: {command: [x]}, tcpSocket: {port: 80}}}}}}}
`,
			want: []string{`key "executor.k8s.options.kubernetes.lifecycleHooks.postStart"`, "has exec and tcpSocket; exactly one action is allowed"},
		},
		{
			name:    "LifecycleNoAction",
			overlay: "executor: {k8s: {options: {kubernetes: {lifecycleHooks: {preStop: {}}}}}}\n",
			want:    []string{`lifecycleHooks.preStop`, "needs one of exec, httpGet, tcpSocket, sleep"},
		},
		{
			name:    "LifecycleNotAMapping",
			overlay: "executor: {k8s: {options: {kubernetes: {lifecycleHooks: {preStop: sleep 5}}}}}\n",
			want:    []string{`lifecycleHooks.preStop`, `expected a mapping`},
		},
		{
			name:    "LifecycleBadPortAndExec",
			overlay: "executor: {k8s: {options: {kubernetes: {lifecycleHooks: {preStop: {httpGet: {port: 70000}}, postStart: {exec: {command: []}}}}}}}\n",
			want:    []string{"httpGet.port: 70000 is out of range 1..65535", "exec.command must not be empty"},
		},
		{
			name: "DockerImageNeededWhenDindOn",
			overlay: `executor: {k8s: {options: {kubernetes: {dockerFeatureEnabled: true, dockerImage: ""}}}}
`,
			want: []string{`key "executor.k8s.options.kubernetes.dockerImage"`, "must not be empty"},
		},
		{
			name: "DockerFeatureEnabledIsARealBoolean",
			env:  map[string]string{"DOCKER_FEATURE_ENABLED": "yes"},
			want: []string{`(from env DOCKER_FEATURE_ENABLED): cannot parse "yes" as a boolean`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := loadRepo(t, tt.env, tt.overlay)
			wantErrorContaining(t, err, tt.want...)
		})
	}
}

func TestLifecycle_AllActionKinds(t *testing.T) {
	k := &KataKubernetes{LifecycleHooks: map[string]any{
		"postStart": map[string]any{"httpGet": map[string]any{"path": "/x", "port": "http", "scheme": "HTTPS"}},
		"preStop":   map[string]any{"sleep": map[string]any{"seconds": int64(5)}},
	}}
	lc, err := k.Lifecycle()
	if err != nil {
		t.Fatal(err)
	}
	if lc.PostStart.HTTPGet.Port.StrVal != "http" || lc.PreStop.Sleep.Seconds != 5 {
		t.Fatalf("lifecycle %+v", lc)
	}
	k.LifecycleHooks = map[string]any{"preStop": map[string]any{"tcpSocket": map[string]any{"port": 0}}}
	if _, err := k.Lifecycle(); err == nil {
		t.Fatal("tcpSocket port 0 accepted")
	}
}
