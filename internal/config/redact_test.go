package config

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

func TestRedactedYAML_HidesSecrets(t *testing.T) {
	tests := []struct {
		name       string
		env        map[string]string
		wantAbsent []string
		wantLines  []string
	}{
		{
			name:       "SecretsSet",
			env:        map[string]string{"K8S_TOKEN": "eyJhbGciOi.s3cret", "REDIS_PASSWORD": "hunter2"},
			wantAbsent: []string{"s3cret", "hunter2"},
			wantLines:  []string{"token: <redacted>", "password: <redacted>"},
		},
		{
			name:      "EmptySecretsStayEmpty",
			wantLines: []string{`token: ""`, `password: ""`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := loadRepo(t, tt.env, "")
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			out, err := cfg.RedactedYAML()
			if err != nil {
				t.Fatalf("RedactedYAML: %v", err)
			}
			for _, s := range tt.wantAbsent {
				if strings.Contains(string(out), s) {
					t.Errorf("output contains secret %q:\n%s", s, out)
				}
			}
			for _, l := range tt.wantLines {
				if !strings.Contains(string(out), l) {
					t.Errorf("output lacks %q:\n%s", l, out)
				}
			}
			if cfg.Executor.K8s.Options.Kubernetes.Token != tt.env["K8S_TOKEN"] {
				t.Error("RedactedYAML modified the Config")
			}
		})
	}
}

func TestRedactedYAML_KeepsKeyCaseAndDurations(t *testing.T) {
	cfg, _, err := loadRepo(t, map[string]string{
		"K8S_NODE_SELECTORS": `{"node.example.io/Pool":"Kata"}`,
		"K8S_ANNOTATIONS":    `{"io.kubernetes.cri.untrusted-workload":"true"}`,
		"WEIGHT_K8S":         "12.5",
	}, "")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	out, err := cfg.RedactedYAML()
	if err != nil {
		t.Fatalf("RedactedYAML: %v", err)
	}
	for _, want := range []string{
		"node.example.io/Pool: Kata",
		`io.kubernetes.cri.untrusted-workload: "true"`, // still a string when read back
		"blockTimeout: 2s",
		"shutdownGracePeriod: 25s",
		"weightage: 12.5",
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Struct order, not alphabetical: executor comes before ecosystem.
	if strings.Index(string(out), "executor:") > strings.Index(string(out), "ecosystem:") {
		t.Errorf("sections out of struct order:\n%s", out)
	}
}

func TestRedactedYAML_LoadsBackToSameConfig(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
	}{
		{name: "Defaults"},
		{name: "EverythingTouched", env: map[string]string{
			"WEIGHT_K8S": "30", "WEIGHT_K8S_VM": "70",
			"K8S_EXECUTOR_EXCLUSION": `["rhel6","i386"]`,
			"K8S_VOLUME_MOUNTS":      `[{"name":"kvm","mountPath":"/dev/kvm","path":"/dev/kvm","type":"File","readOnly":true}]`,
			"K8S_LIFECYCLE_HOOKS":    `{"preStop":{"exec":{"command":["sleep","5"]}}}`,
			"K8S_POD_LABELS":         `{"Team":"CI"}`,
			"K8S_CPU_MICRO":          "0.5",
			"REDIS_TYPE":             "redisCluster",
			"REDIS_CLUSTER_HOSTS":    `["r-0:6379"]`,
			"QUEUE_BLOCK_TIMEOUT":    "1500ms",
			"LAUNCH_VERSION":         "true", // a string that looks like a bool
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := loadRepo(t, tt.env, "")
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			first, err := cfg.RedactedYAML()
			if err != nil {
				t.Fatalf("RedactedYAML: %v", err)
			}
			var doc map[string]any
			if err := yaml.Unmarshal(first, &doc); err != nil {
				t.Fatalf("output is not YAML: %v\n%s", err, first)
			}
			again, _, err := loadRepo(t, nil, string(first))
			if err != nil {
				t.Fatalf("loading the output back: %v\n%s", err, first)
			}
			second, err := again.RedactedYAML()
			if err != nil {
				t.Fatalf("RedactedYAML: %v", err)
			}
			if string(first) != string(second) {
				t.Errorf("round trip changed the config:\n--- first\n%s\n--- second\n%s", first, second)
			}
		})
	}
}

func TestConfig_SourcesCoverEveryLayer(t *testing.T) {
	cfg, overlayPath, err := loadRepo(t,
		map[string]string{"K8S_POD_LABELS": `{"Team":"CI","tier":"x"}`, "LOG_LEVEL": "debug"},
		"executor: {k8s: {options: {kubernetes: {podLabels: {tier: y}}}}}\n")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := map[string]string{
		"log.level":  "env LOG_LEVEL",
		"log.format": "file " + repoDefaults,
		"executor.k8s.options.kubernetes.podLabels.Team": "env K8S_POD_LABELS",
		"executor.k8s.options.kubernetes.podLabels.tier": "file " + overlayPath,
		"queue.queues":                                "file " + repoDefaults,
		"executor.k8s.exclusion":                      "file " + repoDefaults,
		"executor.k8s.options.kubernetes.annotations": "file " + repoDefaults, // empty map: a leaf
	}
	src := cfg.Sources()
	for k, w := range want {
		if src[k] != w {
			t.Errorf("Sources()[%q] = %q, want %q", k, src[k], w)
		}
	}
	if got := cfg.Source("executor.k8s.exclusion[0]"); got != "file "+repoDefaults {
		t.Errorf("Source of a list element = %q", got)
	}
	src["log.level"] = "mutated"
	if cfg.Source("log.level") != "env LOG_LEVEL" {
		t.Error("Sources() returned the Config's own map")
	}
	if (&Config{}).Sources() != nil {
		t.Error("a Config built in code should have nil Sources")
	}
}
