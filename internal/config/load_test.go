package config

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The repo's real files, relative to this package's directory.
const (
	repoDefaults = "../../config/default.yaml"
	repoEnvMap   = "../../config/custom-environment-variables.yaml"
)

// envOf is a hermetic Getenv: the test runner's own env (HOST, PORT,
// KUBECONFIG, ...) must not leak into these tests.
func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeFile(t *testing.T, name, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// loadRepo loads the repo's defaults and env mapping with env, plus an
// overlay file written from overlay when it is not empty.
func loadRepo(t *testing.T, env map[string]string, overlay string) (*Config, string, error) {
	t.Helper()
	opts := LoadOptions{DefaultsFile: repoDefaults, EnvMapFile: repoEnvMap, Getenv: envOf(env)}
	if overlay != "" {
		opts.OverlayFile = writeFile(t, "overlay.yaml", overlay)
	}
	cfg, err := Load(opts)
	return cfg, opts.OverlayFile, err
}

// fieldErrorsOf flattens a joined error into its *FieldErrors.
func fieldErrorsOf(t *testing.T, err error) []*FieldError {
	t.Helper()
	var parts []error
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		parts = j.Unwrap()
	} else if err != nil {
		parts = []error{err}
	}
	var out []*FieldError
	for _, p := range parts {
		var fe *FieldError
		if !errors.As(p, &fe) {
			t.Fatalf("error %q is not a *FieldError", p)
		}
		out = append(out, fe)
	}
	return out
}

func wantErrorContaining(t *testing.T, err error, subs ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one containing %q", subs)
	}
	for _, s := range subs {
		if !strings.Contains(err.Error(), s) {
			t.Errorf("error does not contain %q:\n%v", s, err)
		}
	}
}

func TestLoad_RepoDefaultsLoadCleanly(t *testing.T) {
	cfg, _, err := loadRepo(t, nil, "")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	k := cfg.Executor.K8s.Options.Kubernetes
	checks := []struct {
		name      string
		got, want any
	}{
		{"executor.plugin", cfg.Executor.Plugin, "k8s-vm"},
		{"default runtime", cfg.DefaultRuntime(), RuntimeHyperD},
		{"k8s weightage unset", cfg.Executor.K8s.Weightage == nil, true},
		{"exclusion", cfg.Executor.K8s.Exclusion, []string{"rhel6"}},
		{"kata nodeSelectors", k.NodeSelectors, map[string]string{"dedicated": "screwdriver-kata"}},
		{"runtimeClass", k.RuntimeClass, "kata"},
		{"cpu micro", k.Resources.CPU.Micro, 1.0},
		{"buildTimeout (squashed)", k.BuildTimeout, 90},
		{"vm maxBuildTimeout (squashed)", cfg.Executor.K8sVM.Options.Kubernetes.MaxBuildTimeout, 120},
		{"sdHabEnabled", cfg.Executor.K8s.Options.SDHabEnabled, true},
		{"queues", cfg.Queue.Queues, []string{"builds"}},
		{"blockTimeout", cfg.Queue.BlockTimeout, 2 * time.Second},
		{"shutdownGracePeriod", cfg.Worker.ShutdownGracePeriod, 25 * time.Second},
		{"qps", cfg.Kubernetes.QPS, 50.0},
		{"resque namespace", cfg.ResqueNamespace(), "resque"},
		{"source of a default", cfg.Source("httpd.port"), "file " + repoDefaults},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %#v, want %#v", c.name, c.got, c.want)
		}
	}
}

func TestLoad_OperatorOverlayFromTestdata(t *testing.T) {
	const overlay = "testdata/overlay-operator.yaml"
	cfg, err := Load(LoadOptions{
		DefaultsFile: repoDefaults, EnvMapFile: repoEnvMap, OverlayFile: overlay,
		Getenv: envOf(map[string]string{"WORKER_CONCURRENCY": "8", "K8S_TOKEN": "t"}),
	})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	k := cfg.Executor.K8s.Options.Kubernetes
	if got, want := k.NodeSelectors, map[string]string{"node.example.com/Pool": "Kata"}; !reflect.DeepEqual(got, want) {
		t.Errorf("nodeSelectors = %v, want %v", got, want)
	}
	if got := cfg.ExclusionPatterns(); !slices.Equal(got, []string{"rhel6", "^centos:6"}) {
		t.Errorf("ExclusionPatterns = %q", got)
	}
	if cfg.Worker.Concurrency != 16 {
		t.Errorf("concurrency = %d, want the overlay's 16 over env's 8", cfg.Worker.Concurrency)
	}
	if got := cfg.Queue.RedisClusterConnection.SlotsRefreshTimeout; got != 1000 {
		t.Errorf("slotsRefreshTimeout = %d: a null section must not wipe the defaults", got)
	}
	if got := k.VolumeMounts; len(got) != 1 || got[0].MountPath != "/dev/kvm" || got[0].Type != "CharDevice" {
		t.Errorf("volumeMounts = %+v", got)
	}
	sources := map[string]string{
		"worker.concurrency":                                                     "file " + overlay,
		"executor.k8s.options.kubernetes.token":                                  "env K8S_TOKEN",
		"executor.k8s.options.kubernetes.host":                                   "file " + repoDefaults,
		"executor.k8s.options.kubernetes.nodeSelectors['node.example.com/Pool']": "file " + overlay,
	}
	for key, want := range sources {
		if got := cfg.Sources()[key]; got != want {
			t.Errorf("Sources()[%q] = %q, want %q", key, got, want)
		}
	}
}

func TestLoad_EnvStringsConvertStrictly(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		got     func(*Config) any
		want    any
		wantErr []string
	}{
		{
			name: "IntFromEnv",
			env:  map[string]string{"WORKER_CONCURRENCY": "8"},
			got:  func(c *Config) any { return c.Worker.Concurrency },
			want: 8,
		},
		{
			name: "NegativeIntParsesThenValidationRefuses",
			env:  map[string]string{"TERMINATION_GRACE_PERIOD_SECONDS": "-1"},
			wantErr: []string{`key "executor.k8s.options.kubernetes.terminationGracePeriodSeconds" (from env TERMINATION_GRACE_PERIOD_SECONDS)`,
				"must not be negative"},
		},
		{
			name:    "IntRefusesFraction",
			env:     map[string]string{"WORKER_CONCURRENCY": "4.0"},
			wantErr: []string{`key "worker.concurrency" (from env WORKER_CONCURRENCY): cannot parse "4.0" as an integer`},
		},
		{
			name:    "IntRefusesUnits",
			env:     map[string]string{"K8S_BUILD_TIMEOUT": "90m"},
			wantErr: []string{`cannot parse "90m" as an integer`, "env K8S_BUILD_TIMEOUT"},
		},
		{
			name:    "IntOutOfRange",
			env:     map[string]string{"REDIS_PORT": "99999999999999999999"},
			wantErr: []string{"out of range", "env REDIS_PORT"},
		},
		{
			name:    "ServiceLinkPortGetsHint",
			env:     map[string]string{"REDIS_PORT": "tcp://10.96.0.12:6379"},
			wantErr: []string{`"queue.redisConnection.port" (from env REDIS_PORT)`, "enableServiceLinks: false"},
		},
		{
			name: "FloatFromEnv",
			env:  map[string]string{"K8S_CPU_MICRO": "0.5"},
			got:  func(c *Config) any { return c.Executor.K8s.Options.Kubernetes.Resources.CPU.Micro },
			want: 0.5,
		},
		{
			name: "FloatPointerFromEnv",
			env:  map[string]string{"WEIGHT_K8S": "20"},
			got:  func(c *Config) any { return *c.Executor.K8s.Weightage },
			want: 20.0,
		},
		{
			name:    "FloatRefusesNaN",
			env:     map[string]string{"K8S_CLIENT_QPS": "NaN"},
			wantErr: []string{`key "kubernetes.qps" (from env K8S_CLIENT_QPS): cannot parse "NaN" as a finite number`},
		},
		{
			name:    "FloatRefusesInf",
			env:     map[string]string{"WEIGHT_K8S": "+Inf"},
			wantErr: []string{`"executor.k8s.weightage" (from env WEIGHT_K8S)`, "finite number"},
		},
		{
			name:    "FloatRefusesPercentSign",
			env:     map[string]string{"WEIGHT_K8S": "20%"},
			wantErr: []string{`cannot parse "20%"`},
		},
		{
			name: "BoolTrueAnyCase",
			env:  map[string]string{"DOCKER_FEATURE_ENABLED": "TRUE"},
			got:  func(c *Config) any { return c.Executor.K8s.Options.Kubernetes.DockerFeatureEnabled },
			want: true,
		},
		{
			name: "BoolFalseIsFalse",
			env:  map[string]string{"SD_HAB_ENABLED": "false"},
			got:  func(c *Config) any { return c.Executor.K8s.Options.SDHabEnabled },
			want: false,
		},
		{
			name: "StrictBoolRejectsYes",
			env:  map[string]string{"DOCKER_FEATURE_ENABLED": "yes"},
			wantErr: []string{`key "executor.k8s.options.kubernetes.dockerFeatureEnabled" (from env DOCKER_FEATURE_ENABLED)`,
				`cannot parse "yes" as a boolean (want true or false)`},
		},
		{
			name:    "StrictBoolRejectsOne",
			env:     map[string]string{"REDIS_TLS_ENABLED": "1"},
			wantErr: []string{`cannot parse "1" as a boolean`, "env REDIS_TLS_ENABLED"},
		},
		{
			name: "DurationFromEnv",
			env:  map[string]string{"QUEUE_BLOCK_TIMEOUT": "1500ms"},
			got:  func(c *Config) any { return c.Queue.BlockTimeout },
			want: 1500 * time.Millisecond,
		},
		{
			name: "QueueHardeningKeysFromEnv",
			env: map[string]string{"QUEUE_MAX_JOB_BYTES": "65536", "QUEUE_MAX_JOB_DEPTH": "16",
				"QUEUE_MAX_RECOVERIES": "5", "QUEUE_FENCE_MARGIN": "4s"},
			got: func(c *Config) any {
				return []any{c.Queue.MaxJobBytes, c.Queue.MaxJobDepth, c.Queue.MaxRecoveries, c.Queue.FenceMargin}
			},
			want: []any{65536, 16, 5, 4 * time.Second},
		},
		{
			name:    "QueueMaxJobBytesRefusesUnits",
			env:     map[string]string{"QUEUE_MAX_JOB_BYTES": "1MiB"},
			wantErr: []string{`key "queue.maxJobBytes" (from env QUEUE_MAX_JOB_BYTES): cannot parse "1MiB" as an integer`},
		},
		{
			name:    "DurationNeedsUnit",
			env:     map[string]string{"WORKER_SHUTDOWN_GRACE_PERIOD": "30"},
			wantErr: []string{`key "worker.shutdownGracePeriod" (from env WORKER_SHUTDOWN_GRACE_PERIOD): cannot parse "30" as a duration`},
		},
		{
			name: "StringKeptRaw",
			env:  map[string]string{"K8S_POD_DNS_POLICY": "None", "LAUNCH_VERSION": "1.2.3"},
			got:  func(c *Config) any { return c.Executor.K8s.Options.LaunchVersion },
			want: "1.2.3",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := loadRepo(t, tt.env, "")
			if tt.wantErr != nil {
				wantErrorContaining(t, err, tt.wantErr...)
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := tt.got(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestLoad_EmptyEnvIgnored(t *testing.T) {
	cfg, _, err := loadRepo(t, map[string]string{
		"LOG_LEVEL": "", "K8S_RUNTIME_CLASS": "", "WORKER_CONCURRENCY": "", "K8S_NODE_SELECTORS": "",
	}, "")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	k := cfg.Executor.K8s.Options.Kubernetes
	if cfg.Log.Level != "info" || k.RuntimeClass != "kata" || cfg.Worker.Concurrency != 4 || k.NodeSelectors["dedicated"] != "screwdriver-kata" {
		t.Errorf("an empty env var changed a file value: level=%q runtimeClass=%q concurrency=%d nodeSelectors=%v",
			cfg.Log.Level, k.RuntimeClass, cfg.Worker.Concurrency, k.NodeSelectors)
	}
	if got := cfg.Source("log.level"); got != "file "+repoDefaults {
		t.Errorf("Source(log.level) = %q", got)
	}
}

func TestLoad_EnvJSON(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		got     func(*Config) any
		want    any
		wantErr []string
	}{
		{
			name: "NodeSelectorsKeepKeyCase",
			env:  map[string]string{"K8S_NODE_SELECTORS": `{"node.example.io/Pool":"Kata","Dedicated":"Screwdriver"}`},
			got:  func(c *Config) any { return c.Executor.K8s.Options.Kubernetes.NodeSelectors },
			// Replaced, not merged into the default {dedicated: screwdriver-kata}.
			want: map[string]string{"node.example.io/Pool": "Kata", "Dedicated": "Screwdriver"},
		},
		{
			name: "EmptyObjectClearsDefaultSelectors",
			env:  map[string]string{"K8S_VM_NODE_SELECTORS": `{}`},
			got:  func(c *Config) any { return len(c.Executor.K8sVM.Options.Kubernetes.NodeSelectors) },
			want: 0,
		},
		{
			name: "EnvJSONExclusionApplies",
			env:  map[string]string{"K8S_EXECUTOR_EXCLUSION": `["rhel6","i386"]`},
			got:  func(c *Config) any { return c.ExclusionPatterns() },
			want: []string{"rhel6", "i386"},
		},
		{
			name: "RoutingEnv",
			env: map[string]string{"ROUTING_STICKINESS": "build", "ROUTING_SALT": "s2",
				"ROUTING_PAUSED": `["kata"]`, "ROUTING_BUDGETS": `{"hyperd":40}`},
			// routing.autopilot is covered by autopilot_test.go.
			got:  func(c *Config) any { r := c.Routing; r.Autopilot = Autopilot{}; return r },
			want: Routing{Stickiness: "build", Salt: "s2", Paused: []string{"kata"}, Budgets: map[string]int{"hyperd": 40}},
		},
		{
			name:    "RoutingPausedUnknownRuntimeRefused",
			env:     map[string]string{"ROUTING_PAUSED": `["docker"]`},
			wantErr: []string{`key "routing.paused[0]" (from env ROUTING_PAUSED)`},
		},
		{
			name: "InvalidJSONNamesVar",
			env:  map[string]string{"K8S_EXECUTOR_EXCLUSION": `[rhel6]`},
			wantErr: []string{`key "executor.k8s.exclusion" (from env K8S_EXECUTOR_EXCLUSION)`,
				"invalid JSON in K8S_EXECUTOR_EXCLUSION"},
		},
		{
			name:    "TrailingDataRefused",
			env:     map[string]string{"K8S_POD_LABELS": `{"a":"b"} {"c":"d"}`},
			wantErr: []string{"invalid JSON in K8S_POD_LABELS"},
		},
		{
			name: "WrongShapeNamesVar",
			env:  map[string]string{"K8S_EXECUTOR_EXCLUSION": `"rhel6"`},
			wantErr: []string{`key "executor.k8s.exclusion" (from env K8S_EXECUTOR_EXCLUSION)`,
				`expected list of string, got string "rhel6"`},
		},
		{
			name: "VolumeMountsShape",
			env:  map[string]string{"K8S_VOLUME_MOUNTS": `[{"name":"kvm","mountPath":"/dev/kvm","path":"/dev/kvm/","type":"File","readOnly":true}]`},
			got:  func(c *Config) any { return c.Executor.K8s.Options.Kubernetes.VolumeMounts },
			want: []VolumeMount{{Name: "kvm", MountPath: "/dev/kvm", Path: "/dev/kvm/", Type: "File", ReadOnly: true}},
		},
		{
			name: "JSONValuesAreTypedNotCoerced",
			env:  map[string]string{"K8S_VOLUME_MOUNTS": `[{"name":"kvm","mountPath":"/dev/kvm","path":"/dev/kvm","readOnly":"true"}]`},
			wantErr: []string{`key "executor.k8s.options.kubernetes.volumeMounts[0].readOnly" (from env K8S_VOLUME_MOUNTS)`,
				`expected boolean (true or false), got string "true"`},
		},
		{
			name:    "UnknownKeyInsideJSONListEntry",
			env:     map[string]string{"K8S_SECRETS": `[{"secret_env":"A","secret_name":"s","secretKey":"k"}]`},
			wantErr: []string{`unknown key "executor.k8s.options.kubernetes.buildSecrets[0].secretKey" (from env K8S_SECRETS)`},
		},
		{
			name: "LifecycleHooksFreeForm",
			env:  map[string]string{"K8S_LIFECYCLE_HOOKS": `{"preStop":{"exec":{"command":["sleep","5"]}}}`},
			got: func(c *Config) any {
				return c.Executor.K8s.Options.Kubernetes.LifecycleHooks["preStop"].(map[string]any)["exec"]
			},
			want: map[string]any{"command": []any{"sleep", "5"}},
		},
		{
			name: "ClusterHosts",
			env:  map[string]string{"REDIS_TYPE": "redisCluster", "REDIS_CLUSTER_HOSTS": `["r-0:6379","r-1:6379"]`},
			got:  func(c *Config) any { return []any{c.Queue.RedisClusterConnection.Hosts, c.ResqueNamespace()} },
			want: []any{[]string{"r-0:6379", "r-1:6379"}, "resque:{screwdriver-resque}"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := loadRepo(t, tt.env, "")
			if tt.wantErr != nil {
				wantErrorContaining(t, err, tt.wantErr...)
				return
			}
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := tt.got(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

func TestLoad_OverlayMerging(t *testing.T) {
	tests := []struct {
		name    string
		env     map[string]string
		overlay string
		got     func(*Config) any
		want    any
		source  [2]string // key, want source ("" = overlay file)
	}{
		{
			name:    "OverlayBeatsEnv",
			env:     map[string]string{"WORKER_CONCURRENCY": "8"},
			overlay: "worker: {concurrency: 16}\n",
			got:     func(c *Config) any { return c.Worker.Concurrency },
			want:    16,
			source:  [2]string{"worker.concurrency", ""},
		},
		{
			name:    "EnvBeatsDefaultsWhenOverlaySilent",
			env:     map[string]string{"WORKER_CONCURRENCY": "8"},
			overlay: "log: {level: debug}\n",
			got:     func(c *Config) any { return c.Worker.Concurrency },
			want:    8,
			source:  [2]string{"worker.concurrency", "env WORKER_CONCURRENCY"},
		},
		{
			name:    "MapsDeepMerge",
			overlay: "executor: {k8s: {options: {kubernetes: {nodeSelectors: {Pool: kata}}}}}\n",
			got:     func(c *Config) any { return c.Executor.K8s.Options.Kubernetes.NodeSelectors },
			want:    map[string]string{"dedicated": "screwdriver-kata", "Pool": "kata"},
			source:  [2]string{"executor.k8s.options.kubernetes.nodeSelectors.dedicated", "file " + repoDefaults},
		},
		{
			name:    "NullEntryRemovesDefaultSelector",
			overlay: "executor: {k8s-vm: {options: {kubernetes: {nodeSelectors: {dedicated: null}}}}}\n",
			got:     func(c *Config) any { return len(c.Executor.K8sVM.Options.Kubernetes.NodeSelectors) },
			want:    0,
		},
		{
			name:    "NullSectionChangesNothing",
			overlay: "queue:\nworker:\n",
			got:     func(c *Config) any { return c.Worker.Concurrency },
			want:    4,
		},
		{
			name:    "NullScalarClears",
			overlay: "executor: {k8s: {options: {kubernetes: {runtimeClass: null}}}}\n",
			got:     func(c *Config) any { return c.Executor.K8s.Options.Kubernetes.RuntimeClass },
			want:    "",
			source:  [2]string{"executor.k8s.options.kubernetes.runtimeClass", ""},
		},
		{
			name:    "ListsReplace",
			env:     map[string]string{"K8S_EXECUTOR_EXCLUSION": `["a","b"]`},
			overlay: "executor: {k8s: {exclusion: [c]}}\n",
			got:     func(c *Config) any { return c.Executor.K8s.Exclusion },
			want:    []string{"c"},
		},
		{
			name:    "EmptyOverlayIsFine",
			overlay: "# nothing to change\n",
			got:     func(c *Config) any { return c.Log.Level },
			want:    "info",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, overlay, err := loadRepo(t, tt.env, tt.overlay)
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			if got := tt.got(cfg); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
			if key := tt.source[0]; key != "" {
				want := tt.source[1]
				if want == "" {
					want = "file " + overlay
				}
				if got := cfg.Source(key); got != want {
					t.Errorf("Source(%q) = %q, want %q", key, got, want)
				}
			}
		})
	}
}

func TestLoad_StrictDecodingErrors(t *testing.T) {
	const overlaySrc = "(from file OVERLAY)"
	tests := []struct {
		name    string
		env     map[string]string
		overlay string
		want    []string // OVERLAY is replaced by the overlay's path
	}{
		{
			name:    "UnknownKeyInOverlayNamesPathAndFile",
			overlay: "executor:\n  k8s:\n    exclusionz: [rhel6]\n",
			want:    []string{`config: unknown key "executor.k8s.exclusionz" ` + overlaySrc},
		},
		{
			name:    "UnknownKeySuggestsCase",
			overlay: "executor: {k8s: {options: {launchimage: x}}}\n",
			want:    []string{`unknown key "executor.k8s.options.launchimage" ` + overlaySrc + `; did you mean "launchImage"?`},
		},
		{
			name:    "UnknownTopLevelKey",
			overlay: "rabbitmq: {host: x}\n",
			want:    []string{`unknown key "rabbitmq" ` + overlaySrc},
		},
		{
			name:    "UnknownKeyInListEntry",
			overlay: "executor: {k8s: {options: {kubernetes: {volumeMounts: [{name: a, mountpath: /a, path: /a}]}}}}\n",
			want:    []string{`unknown key "executor.k8s.options.kubernetes.volumeMounts[0].mountpath" ` + overlaySrc},
		},
		{
			name:    "WrongTypeNamesPathValueSource",
			overlay: "queue: {redisConnection: {port: \"6379\"}}\n",
			want:    []string{`config: key "queue.redisConnection.port" ` + overlaySrc + `: expected integer, got string "6379"`},
		},
		{
			name: "WrongTypeFromEnvNamesVar",
			env:  map[string]string{"REDIS_DB_NUMBER": "zero"},
			want: []string{`config: key "queue.redisConnection.database" (from env REDIS_DB_NUMBER): cannot parse "zero" as an integer`},
		},
		{
			name:    "FractionIntoInt",
			overlay: "worker: {concurrency: 2.5}\n",
			want:    []string{`key "worker.concurrency" ` + overlaySrc + `: expected integer, got number 2.5`},
		},
		{
			name:    "NumberIntoDuration",
			overlay: "queue: {blockTimeout: 2}\n",
			want:    []string{`key "queue.blockTimeout" ` + overlaySrc + `: expected duration (such as "30s"), got integer 2`},
		},
		{
			name:    "BoolIntoLabelValue",
			overlay: "executor: {k8s: {options: {kubernetes: {annotations: {io.kubernetes.cri.untrusted-workload: true}}}}}\n",
			want: []string{`key "executor.k8s.options.kubernetes.annotations['io.kubernetes.cri.untrusted-workload']" ` + overlaySrc,
				"expected string, got boolean true; quote it to make it a string"},
		},
		{
			name:    "ScalarWhereSectionExpected",
			overlay: "queue: redis\n",
			want:    []string{`key "queue" ` + overlaySrc + `: expected mapping, got string "redis"`},
		},
		{
			name:    "YAMLNaNRefused",
			overlay: "kubernetes: {qps: .nan}\n",
			want:    []string{`key "kubernetes.qps" ` + overlaySrc + `: expected a finite number`},
		},
		{
			name:    "NullListEntryRefused",
			overlay: "queue: {queues: [builds, null]}\n",
			want:    []string{`key "queue.queues[1]" ` + overlaySrc + `: expected string, got null`},
		},
		{
			name:    "TopLevelMustBeMapping",
			overlay: "- a\n- b\n",
			want:    []string{"config: parsing ", "top level must be a mapping"},
		},
		{
			name:    "SecondDocumentRefused",
			overlay: "log: {level: info}\n---\nlog: {level: debug}\n",
			want:    []string{"more than one YAML document"},
		},
		{
			name:    "DuplicateKeyRefused",
			overlay: "log: {level: info}\nlog: {level: debug}\n",
			want:    []string{"config: parsing ", `"log" already defined`},
		},
		{
			name:    "MultipleErrorsReportedTogether",
			env:     map[string]string{"DOCKER_FEATURE_ENABLED": "on", "K8S_POD_LABELS": "{"},
			overlay: "worker: {concurrency: many}\nhttpd: {prot: 80}\n",
			want: []string{
				`(from env DOCKER_FEATURE_ENABLED)`,
				`invalid JSON in K8S_POD_LABELS`,
				`key "worker.concurrency" ` + overlaySrc,
				`unknown key "httpd.prot" ` + overlaySrc,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, overlay, err := loadRepo(t, tt.env, tt.overlay)
			if cfg != nil {
				t.Errorf("Load returned a Config along with an error")
			}
			want := make([]string, len(tt.want))
			for i, w := range tt.want {
				want[i] = strings.ReplaceAll(w, "OVERLAY", overlay)
			}
			wantErrorContaining(t, err, want...)
		})
	}
}

func TestLoad_UnknownKeyIsErrUnknownKey(t *testing.T) {
	_, overlay, err := loadRepo(t, nil, "httpd: {prot: 80}\nlog: {lvl: x}\n")
	fes := fieldErrorsOf(t, err)
	if len(fes) != 2 {
		t.Fatalf("got %d errors, want 2: %v", len(fes), err)
	}
	for _, fe := range fes {
		if !errors.Is(fe, ErrUnknownKey) || fe.Source != "file "+overlay {
			t.Errorf("%v: Is(ErrUnknownKey)=%t Source=%q", fe, errors.Is(fe, ErrUnknownKey), fe.Source)
		}
	}
}

func TestLoad_EnvMappingDefects(t *testing.T) {
	tests := []struct {
		name    string
		mapping string // written to a temp file unless it names a testdata file
		want    []string
	}{
		{
			name:    "ReferenceValueKeywordRefused",
			mapping: "testdata/env-map-reference-defect.yaml",
			want: []string{`key "executor.k8s.exclusion" (from file testdata/env-map-reference-defect.yaml)`,
				`unexpected key "__value" next to __name`, "{__name: K8S_EXECUTOR_EXCLUSION} needs __format: json"},
		},
		{
			name:    "UnsupportedFormat",
			mapping: "executor: {k8s: {exclusion: {__name: X, __format: yaml}}}\n",
			want:    []string{`key "executor.k8s.exclusion"`, `__format string "yaml" is not supported (only json)`},
		},
		{
			name:    "MissingName",
			mapping: "executor: {k8s: {exclusion: {__format: json}}}\n",
			want:    []string{"__name must name an env var"},
		},
		{
			name:    "UnknownKeyRefusedEvenWhenEnvUnset",
			mapping: "executor: {k8s: {weightagez: WEIGHT_K8S}}\n",
			want:    []string{`unknown key "executor.k8s.weightagez" (from file `},
		},
		{
			name:    "LeafMustBeEnvName",
			mapping: "worker: {concurrency: 4}\n",
			want:    []string{`key "worker.concurrency"`, "must name an env var"},
		},
		{
			name:    "NoSubKeysUnderScalar",
			mapping: "log: {level: {debug: X}}\n",
			want:    []string{`key "log.level"`, "holds a string, so map it to one env var"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := tt.mapping
			if !strings.HasPrefix(path, "testdata/") {
				path = writeFile(t, "env.yaml", tt.mapping)
			}
			_, err := Load(LoadOptions{DefaultsFile: repoDefaults, EnvMapFile: path, Getenv: envOf(nil)})
			wantErrorContaining(t, err, tt.want...)
		})
	}
}

func TestLoad_EnvMappingToFreeFormMapKey(t *testing.T) {
	// A mapping may target one key of a free-form map; its case is kept.
	mapping := writeFile(t, "env.yaml", "executor: {k8s: {options: {kubernetes: {podLabels: {Team: SD_TEAM}}}}}\n")
	cfg, err := Load(LoadOptions{DefaultsFile: repoDefaults, EnvMapFile: mapping, Getenv: envOf(map[string]string{"SD_TEAM": "CI"})})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := cfg.Executor.K8s.Options.Kubernetes.PodLabels; !reflect.DeepEqual(got, map[string]string{"Team": "CI"}) {
		t.Errorf("podLabels = %v", got)
	}
}

func TestLoad_FileErrors(t *testing.T) {
	tests := []struct {
		name   string
		opts   LoadOptions
		want   []string
		wantIs error
	}{
		{
			name: "NoDefaultsFile",
			opts: LoadOptions{},
			want: []string{"no defaults file"},
		},
		{
			name:   "MissingDefaultsWrapsNotExist",
			opts:   LoadOptions{DefaultsFile: "testdata/does-not-exist.yaml"},
			want:   []string{"config: reading config file", "testdata/does-not-exist.yaml"},
			wantIs: fs.ErrNotExist,
		},
		{
			name:   "MissingOverlayWrapsNotExist",
			opts:   LoadOptions{DefaultsFile: repoDefaults, OverlayFile: "testdata/nope.yaml"},
			want:   []string{"testdata/nope.yaml"},
			wantIs: fs.ErrNotExist,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.opts.Getenv = envOf(nil)
			_, err := Load(tt.opts)
			wantErrorContaining(t, err, tt.want...)
			if tt.wantIs != nil && !errors.Is(err, tt.wantIs) {
				t.Errorf("errors.Is(%v, %v) = false", err, tt.wantIs)
			}
		})
	}
}

func TestLoad_NilGetenvReadsProcessEnv(t *testing.T) {
	t.Setenv("LOG_LEVEL", "debug")
	cfg, err := Load(LoadOptions{DefaultsFile: repoDefaults, EnvMapFile: repoEnvMap})
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if cfg.Log.Level != "debug" || cfg.Source("log.level") != "env LOG_LEVEL" {
		t.Errorf("log.level = %q from %q", cfg.Log.Level, cfg.Source("log.level"))
	}
}

// RedactedYAML and the decoder read different tags; they must agree.
func TestConfig_YAMLAndMapstructureTagsAgree(t *testing.T) {
	seen := map[reflect.Type]bool{}
	var walk func(reflect.Type, string)
	walk = func(ty reflect.Type, path string) {
		for ty.Kind() == reflect.Pointer || ty.Kind() == reflect.Slice || ty.Kind() == reflect.Map {
			ty = ty.Elem()
		}
		if ty.Kind() != reflect.Struct || ty == reflect.TypeFor[time.Duration]() || seen[ty] {
			return
		}
		seen[ty] = true
		for i := range ty.NumField() {
			f := ty.Field(i)
			if !f.IsExported() {
				continue
			}
			y, m := f.Tag.Get("yaml"), f.Tag.Get("mapstructure")
			yName, yOpt, _ := strings.Cut(y, ",")
			mName, mOpt, _ := strings.Cut(m, ",")
			if yName != mName || (yOpt == "inline") != (mOpt == "squash") {
				t.Errorf("%s.%s: yaml tag %q and mapstructure tag %q disagree", path, f.Name, y, m)
			}
			walk(f.Type, path+"."+f.Name)
		}
	}
	walk(reflect.TypeFor[Config](), "Config")
}
