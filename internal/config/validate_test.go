package config

import (
	"errors"
	"math"
	"slices"
	"strings"
	"testing"
	"time"
)

func ptr[T any](v T) *T { return &v }

func TestValidate_Rules(t *testing.T) {
	tests := []struct {
		name     string
		mutate   func(c *Config)
		wantKeys []string // keys of the FieldErrors, in order; nil = valid
		wantMsg  string   // optional substring of the joined error
	}{
		{name: "RepoDefaultsAreValid", mutate: func(c *Config) {}},
		{
			name:     "PluginMustBeKnown",
			mutate:   func(c *Config) { c.Executor.Plugin = "jenkins" },
			wantKeys: []string{"executor.plugin"},
			wantMsg:  `"jenkins" is not one of k8s, kata, k8s-vm, hyperd`,
		},
		{name: "PluginAliasKata", mutate: func(c *Config) { c.Executor.Plugin = "kata" }},
		{
			name:     "KubernetesHostOverPlainHTTPRefused",
			mutate:   func(c *Config) { c.Executor.K8s.Options.Kubernetes.Host = "http://10.0.0.1:6443" },
			wantKeys: []string{"executor.k8s.options.kubernetes.host"},
			wantMsg:  "credentials in clear",
		},
		{name: "KubernetesHostWithoutSchemeIsHTTPS", mutate: func(c *Config) { c.Executor.K8s.Options.Kubernetes.Host = "10.0.0.1:6443" }},
		{
			name:     "TrustedAPIURIsMustBeURLs",
			mutate:   func(c *Config) { c.Ecosystem.TrustedAPIURIs = []string{"https://api.internal", "api.internal"} },
			wantKeys: []string{"ecosystem.trustedApiUris[1]"},
		},
		{
			name: "LearnAfterAndRuntimeErrorGraceBounds",
			mutate: func(c *Config) {
				c.Verify.Fallback.LearnAfter = 0
				c.Verify.Fallback.LearnWindow = 0
				c.Verify.RuntimeErrorGrace = -time.Second
			},
			wantKeys: []string{"verify.runtimeErrorGrace", "verify.fallback.learnAfter", "verify.fallback.learnWindow"},
		},
		{
			name:     "PercentageAbove100",
			mutate:   func(c *Config) { c.Executor.K8s.Weightage = ptr(100.5) },
			wantKeys: []string{"executor.k8s.weightage"},
			wantMsg:  "above 100",
		},
		{name: "Percentage100", mutate: func(c *Config) { c.Executor.K8s.Weightage = ptr(100.0) }},
		{
			name: "RelativeWeightsMayExceed100",
			mutate: func(c *Config) {
				c.Executor.K8s.Weightage = ptr(300.0)
				c.Executor.K8sVM.Weightage = ptr(100.0)
			},
		},
		{
			name: "NegativeAndNonFiniteWeights",
			mutate: func(c *Config) {
				c.Executor.K8s.Weightage = ptr(-1.0)
				c.Executor.K8sVM.Weightage = ptr(math.Inf(1))
			},
			wantKeys: []string{"executor.k8s.weightage", "executor.k8s-vm.weightage"},
		},
		{
			name: "InvalidRegexNamesKeyAndIndex",
			mutate: func(c *Config) {
				c.Executor.K8s.Exclusion = []string{"rhel6", "i386("}
				c.Executor.K8s.Exclusions = []string{"[z-a]"}
			},
			wantKeys: []string{"executor.k8s.exclusion[1]", "executor.k8s.exclusions[0]"},
			wantMsg:  `invalid regexp "i386("`,
		},
		{
			name: "RoutingSwitchesValid",
			mutate: func(c *Config) {
				c.Routing = Routing{Stickiness: "pipeline", Salt: "s", Paused: []string{"kata"}, Budgets: map[string]int{"kata": 10, "hyperd": 0}, Autopilot: c.Routing.Autopilot}
			},
		},
		{
			name: "RoutingSwitchesRefused",
			mutate: func(c *Config) {
				c.Routing = Routing{Stickiness: "user", Paused: []string{"hyperd", "k8s", "hyperd"}, Budgets: map[string]int{"docker": 1, "kata": -1}, Autopilot: c.Routing.Autopilot}
			},
			wantKeys: []string{"routing.stickiness", "routing.paused[1]", "routing.paused[2]", "routing.budgets.docker", "routing.budgets.kata"},
			wantMsg:  `runtime "hyperd" is listed twice`,
		},
		{
			name:     "EmptyPatternRefused",
			mutate:   func(c *Config) { c.Executor.K8s.Exclusions = []string{""} },
			wantKeys: []string{"executor.k8s.exclusions[0]"},
		},
		{
			name: "KataEnumerations",
			mutate: func(c *Config) {
				c.Executor.K8s.Options.Kubernetes.DNSPolicy = "clusterfirst"
				c.Executor.K8s.Options.Kubernetes.ImagePullPolicy = "always"
			},
			wantKeys: []string{"executor.k8s.options.kubernetes.dnsPolicy", "executor.k8s.options.kubernetes.imagePullPolicy"},
		},
		{
			name: "TiersPositiveAndMaxIsMax",
			mutate: func(c *Config) {
				c.Executor.K8s.Options.Kubernetes.Resources.CPU.Micro = 0
				c.Executor.K8s.Options.Kubernetes.Resources.Memory.Turbo = 32
			},
			wantKeys: []string{"executor.k8s.options.kubernetes.resources.cpu.micro", "executor.k8s.options.kubernetes.resources.memory.turbo"},
			wantMsg:  "32 is above executor.k8s.options.kubernetes.resources.memory.max (16",
		},
		{
			name: "BuildTimeoutsOnBothPaths",
			mutate: func(c *Config) {
				c.Executor.K8s.Options.Kubernetes.BuildTimeout = 0
				c.Executor.K8sVM.Options.Kubernetes.BuildTimeout = 200
			},
			wantKeys: []string{"executor.k8s.options.kubernetes.buildTimeout", "executor.k8s-vm.options.kubernetes.buildTimeout"},
			wantMsg:  "200 minutes is above executor.k8s-vm.options.kubernetes.maxBuildTimeout (120",
		},
		{
			name: "PodShapeChecks",
			mutate: func(c *Config) {
				k := &c.Executor.K8s.Options.Kubernetes
				k.TerminationGracePeriodSeconds = -1
				k.PodLabels = map[string]string{"app": "has space"}
				k.Annotations = map[string]string{"-bad": "any value at all"}
				k.VolumeMounts = []VolumeMount{{Name: "kvm", Path: "/dev/kvm", MountPath: "dev/kvm", Type: "file"}}
				k.BuildSecrets = []BuildSecret{{SecretEnv: "A", SecretName: "s"}}
			},
			wantKeys: []string{
				"executor.k8s.options.kubernetes.terminationGracePeriodSeconds",
				"executor.k8s.options.kubernetes.podLabels.app",
				"executor.k8s.options.kubernetes.annotations.-bad",
				"executor.k8s.options.kubernetes.volumeMounts[0].mountPath",
				"executor.k8s.options.kubernetes.volumeMounts[0].type",
				"executor.k8s.options.kubernetes.buildSecrets[0].secret_key",
			},
		},
		{
			name: "SelectorKeysCheckedOnHyperDPath",
			mutate: func(c *Config) {
				c.Executor.K8sVM.Options.Kubernetes.NodeSelectors = map[string]string{"Bad.Prefix/x": "y"}
			},
			wantKeys: []string{"executor.k8s-vm.options.kubernetes.nodeSelectors['Bad.Prefix/x']"},
		},
		{
			name: "LauncherBreakerRetry",
			mutate: func(c *Config) {
				o := &c.Executor.K8s.Options
				o.LaunchImage, o.LaunchVersion = "", ""
				o.Fusebox.Breaker.Timeout = 0
				o.RequestRetry.MaxAttempts = 0
				c.Executor.K8sVM.Options.Kubernetes.BaseImage = ""
			},
			wantKeys: []string{
				"executor.k8s.options.launchImage",
				"executor.k8s.options.launchVersion",
				"executor.k8s.options.fusebox.breaker.timeout",
				"executor.k8s.options.requestretry.maxAttempts",
				"executor.k8s-vm.options.kubernetes.baseImage",
			},
		},
		{
			name: "EcosystemURLs",
			mutate: func(c *Config) {
				c.Ecosystem.API = "api.screwdriver.cd"
				c.Ecosystem.Store = "ftp://store"
			},
			wantKeys: []string{"ecosystem.api", "ecosystem.store"},
			wantMsg:  "must be an absolute http or https URL",
		},
		{
			name:     "EcosystemAPIRequired",
			mutate:   func(c *Config) { c.Ecosystem.API = "" },
			wantKeys: []string{"ecosystem.api"},
		},
		{
			name:     "ConnectionTypeEnum",
			mutate:   func(c *Config) { c.Queue.ConnectionType = "cluster" },
			wantKeys: []string{"queue.connectionType"},
		},
		{
			name:     "ClusterNeedsHosts",
			mutate:   func(c *Config) { c.Queue.ConnectionType = "redisCluster" },
			wantKeys: []string{"queue.redisClusterConnection.hosts"},
		},
		{
			name: "ClusterNamespaceNeedsHashTag",
			mutate: func(c *Config) {
				c.Queue.ConnectionType = "redisCluster"
				c.Queue.RedisClusterConnection.Hosts = []string{"r-0:6379"}
				c.Queue.Namespace = "resque:builds"
			},
			wantKeys: []string{"queue.namespace"},
		},
		{
			name: "SentinelNeedsHostPortAndMaster",
			mutate: func(c *Config) {
				c.Queue.ConnectionType = "redisSentinel"
				c.Queue.RedisClusterConnection.Hosts = []string{"s-0:26379", "s-1"}
			},
			wantKeys: []string{"queue.redisClusterConnection.hosts[1]", "queue.redisClusterConnection.masterName"},
		},
		{
			name: "RedisPortAndDatabase",
			mutate: func(c *Config) {
				c.Queue.RedisConnection.Port = 65536
				c.Queue.RedisConnection.Database = -1
			},
			wantKeys: []string{"queue.redisConnection.port", "queue.redisConnection.database"},
		},
		{
			name: "QueueNames",
			mutate: func(c *Config) {
				c.Queue.Queues = []string{"builds", "", "builds"}
			},
			wantKeys: []string{"queue.queues[1]", "queue.queues[2]"},
		},
		{
			name:     "QueuesRequired",
			mutate:   func(c *Config) { c.Queue.Queues = nil },
			wantKeys: []string{"queue.queues"},
		},
		{
			name: "QueueTimeouts",
			mutate: func(c *Config) {
				c.Queue.BlockTimeout = time.Minute
				c.Queue.OperationTimeout = 0
			},
			wantKeys: []string{"queue.blockTimeout", "queue.operationTimeout"},
		},
		{
			name: "QueueJobLimitsRecoveriesAndFence",
			mutate: func(c *Config) {
				c.Queue.MaxJobBytes = 100
				c.Queue.MaxJobDepth = 2
				c.Queue.MaxRecoveries = 0
				c.Queue.FenceMargin = 20 * time.Second // lease 30s: the 10s heartbeat would come after the fence
			},
			wantKeys: []string{"queue.maxJobBytes", "queue.maxJobDepth", "queue.maxRecoveries", "queue.fenceMargin"},
			wantMsg:  "must be under two thirds of queue.leaseDuration",
		},
		{name: "QueueFenceMarginZeroMeansDefault", mutate: func(c *Config) { c.Queue.FenceMargin = 0 }},
		{
			name: "WorkerKubernetesHTTPDLog",
			mutate: func(c *Config) {
				c.Worker.Concurrency = 1025
				c.Worker.ShutdownGracePeriod = -time.Second
				c.Kubernetes.QPS = 0
				c.Kubernetes.Burst = 0
				c.Kubernetes.RequestTimeout = 0
				c.HTTPD.Port = 0
				c.Log.Level = "warning"
				c.Log.Format = "text"
			},
			wantKeys: []string{
				"worker.concurrency", "worker.shutdownGracePeriod",
				"kubernetes.qps", "kubernetes.burst", "kubernetes.requestTimeout",
				"httpd.port", "log.level", "log.format",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := loadRepo(t, nil, "")
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			tt.mutate(cfg)
			err = cfg.Validate()
			var keys []string
			for _, fe := range fieldErrorsOf(t, err) {
				keys = append(keys, fe.Key)
			}
			if !slices.Equal(keys, tt.wantKeys) {
				t.Errorf("error keys = %q, want %q\n%v", keys, tt.wantKeys, err)
			}
			if tt.wantMsg != "" && (err == nil || !strings.Contains(err.Error(), tt.wantMsg)) {
				t.Errorf("error does not contain %q:\n%v", tt.wantMsg, err)
			}
		})
	}
}

func TestLoad_WeightK8SAbove100RefusedNamingEnv(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{
			name:    "PercentageMode",
			env:     map[string]string{"WEIGHT_K8S": "101"},
			wantErr: `config: key "executor.k8s.weightage" (from env WEIGHT_K8S): 101 is above 100`,
		},
		{name: "RelativeModeAllowsIt", env: map[string]string{"WEIGHT_K8S": "101", "WEIGHT_K8S_VM": "20"}},
		{
			name:    "NegativeRelativeWeight",
			env:     map[string]string{"WEIGHT_K8S": "1", "WEIGHT_K8S_VM": "-3"},
			wantErr: `key "executor.k8s-vm.weightage" (from env WEIGHT_K8S_VM): must not be negative, got -3`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := loadRepo(t, tt.env, "")
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Load: %v", err)
				}
				return
			}
			wantErrorContaining(t, err, tt.wantErr)
		})
	}
}

func TestLoad_ExclusionKeys(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		overlay string
		want    []string
		wantErr []string
	}{
		{
			name: "InvalidRegexNamesKeyIndexAndPattern",
			env:  map[string]string{"K8S_EXECUTOR_EXCLUSION": `["rhel6","i386(","ok"]`},
			wantErr: []string{`config: key "executor.k8s.exclusion[1]" (from env K8S_EXECUTOR_EXCLUSION): invalid regexp "i386("`,
				"missing closing )"},
		},
		{
			name:    "ExclusionsKeyAlsoAccepted",
			overlay: "executor: {k8s: {exclusions: ['^centos:6', rhel6, i386]}}\n",
			want:    []string{"rhel6", "^centos:6", "i386"},
		},
		{
			name:    "BothKeysUnionedInOrder",
			env:     map[string]string{"K8S_EXECUTOR_EXCLUSION": `["i386","rhel6"]`},
			overlay: "executor: {k8s: {exclusions: [rhel6, fedora]}}\n",
			want:    []string{"i386", "rhel6", "fedora"},
		},
		{
			name:    "InvalidRegexInPluralKey",
			overlay: "executor: {k8s: {exclusions: [ok, '*bad']}}\n",
			wantErr: []string{`key "executor.k8s.exclusions[1]" (from file `, `invalid regexp "*bad"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := loadRepo(t, tt.env, tt.overlay)
			if tt.wantErr != nil {
				wantErrorContaining(t, err, tt.wantErr...)
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := cfg.ExclusionPatterns(); !slices.Equal(got, tt.want) {
				t.Errorf("ExclusionPatterns = %q, want %q", got, tt.want)
			}
			res, err := cfg.ExclusionRegexps()
			if err != nil {
				t.Fatalf("ExclusionRegexps: %v", err)
			}
			if len(res) != len(tt.want) || !res[len(res)-1].MatchString(strings.ToUpper(tt.want[len(tt.want)-1])) {
				t.Errorf("ExclusionRegexps = %v: want %d case-insensitive regexps", res, len(tt.want))
			}
		})
	}
}

func TestLoad_ValidationErrorsReportedTogether(t *testing.T) {
	_, overlay, err := loadRepo(t,
		map[string]string{"WEIGHT_K8S": "101", "K8S_EXECUTOR_EXCLUSION": `["("]`},
		"log: {level: verbose}\nhttpd: {port: 0}\n")
	fes := fieldErrorsOf(t, err)
	want := []struct{ key, source string }{
		{"executor.k8s.weightage", "env WEIGHT_K8S"},
		{"executor.k8s.exclusion[0]", "env K8S_EXECUTOR_EXCLUSION"},
		{"httpd.port", "file " + overlay},
		{"log.level", "file " + overlay},
	}
	if len(fes) != len(want) {
		t.Fatalf("got %d errors, want %d:\n%v", len(fes), len(want), err)
	}
	for i, w := range want {
		if fes[i].Key != w.key || fes[i].Source != w.source {
			t.Errorf("error %d = (%q, %q), want (%q, %q)", i, fes[i].Key, fes[i].Source, w.key, w.source)
		}
	}
}

func TestValidate_UnsetKeySaysNotSet(t *testing.T) {
	defaults := writeFile(t, "defaults.yaml", "log: {format: json}\n")
	_, err := Load(LoadOptions{DefaultsFile: defaults, Getenv: envOf(nil)})
	wantErrorContaining(t, err, `config: key "log.level" (not set): "" is not one of debug, info, warn, error`)
}

func TestValidate_ConfigBuiltInCodeHasNoSource(t *testing.T) {
	err := (&Config{}).Validate()
	if err == nil {
		t.Fatal("zero Config validated")
	}
	for _, fe := range fieldErrorsOf(t, err) {
		if msg := fe.Error(); fe.Source != "" || strings.Contains(msg, "(from ") || strings.Contains(msg, "(not set)") {
			t.Errorf("%v: a Config built in code has no sources", fe)
		}
	}
	if !errors.As(err, new(*FieldError)) {
		t.Error("errors.As(*FieldError) failed on the joined error")
	}
}

func TestConfig_Runtime(t *testing.T) {
	tests := []struct {
		name, want string
		ok         bool
	}{
		{"k8s", RuntimeKata, true},
		{"kata", RuntimeKata, true},
		{"k8s-vm", RuntimeHyperD, true},
		{"hyperd", RuntimeHyperD, true},
		{"k8s-sandbox", "", false},
		{"K8S", "", false},
		{"", "", false},
	}
	var c Config
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := c.Runtime(tt.name)
			if got != tt.want || ok != tt.ok {
				t.Errorf("Runtime(%q) = %q, %t; want %q, %t", tt.name, got, ok, tt.want, tt.ok)
			}
		})
	}
}

func TestConfig_ResqueNamespace(t *testing.T) {
	tests := []struct {
		name           string
		connectionType string
		namespace      string
		want           string
	}{
		{"Redis", "redis", "", "resque"},
		{"Sentinel", "redisSentinel", "", "resque"},
		{"ClusterHashTag", "redisCluster", "", "resque:{screwdriver-resque}"},
		{"ExplicitWins", "redisCluster", "resque:{mine}", "resque:{mine}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := Config{Queue: Queue{ConnectionType: tt.connectionType, Namespace: tt.namespace}}
			if got := c.ResqueNamespace(); got != tt.want {
				t.Errorf("ResqueNamespace() = %q, want %q", got, tt.want)
			}
		})
	}
}
