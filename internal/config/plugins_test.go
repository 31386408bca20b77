package config

import (
	"testing"
	"time"
)

// queue-service's plugins.blockedBy settings come in under its own env
// names, in minutes; the timeout checker and BuildKit keys under ours.
func TestLoad_QueueServicePluginKeysAndEnv(t *testing.T) {
	cfg, _, err := loadRepo(t, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	b := cfg.Plugins.BlockedBy
	if !b.Enabled || !b.BlockedBySelf || !b.Collapse || b.ReenqueueWait() != time.Minute || b.BlockTTL() != 2*time.Hour {
		t.Errorf("defaults %+v, want queue-service's (on, self, collapse, 1 min, 120 min)", b)
	}
	k := cfg.Executor.K8s.Options.Kubernetes
	if !k.RootlessBuildkitFeatureEnabled || k.BuildkitImage != "screwdrivercd/buildkit-rootless:latest" || k.DockerRootlessImage != "docker:20.10-dind-rootless" {
		t.Errorf("BuildKit defaults %v %q %q", k.RootlessBuildkitFeatureEnabled, k.BuildkitImage, k.DockerRootlessImage)
	}
	if tc := cfg.TimeoutChecker; !tc.Enabled || tc.Interval != time.Minute || tc.Buffer != time.Minute {
		t.Errorf("timeout checker defaults %+v", tc)
	}

	cfg, _, err = loadRepo(t, map[string]string{
		"PLUGIN_BLOCKEDBY_REENQUEUE_WAIT_TIME": "0.5", "PLUGIN_BLOCKEDBY_BLOCK_TIMEOUT": "90",
		"PLUGIN_BLOCKEDBY_BLOCKED_BY_SELF": "false", "PLUGIN_BLOCKEDBY_COLLAPSE": "false", "PLUGIN_BLOCKEDBY_ENABLED": "true",
		"TIMEOUT_CHECKER_INTERVAL": "30s", "TIMEOUT_CHECKER_BUFFER": "5m", "TIMEOUT_CHECKER_ENABLED": "false",
		"K8S_ROOTLESS_BUILDKIT_FEATURE_ENABLED": "false", "K8S_BUILDKIT_IMAGE": "reg/bk:1", "K8S_DOCKER_ROOTLESS_IMAGE": "docker:27-dind-rootless",
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	b = cfg.Plugins.BlockedBy
	if b.ReenqueueWait() != 30*time.Second || b.BlockTTL() != 90*time.Minute || b.BlockedBySelf || b.Collapse {
		t.Errorf("from env %+v", b)
	}
	if tc := cfg.TimeoutChecker; tc.Enabled || tc.Interval != 30*time.Second || tc.Buffer != 5*time.Minute {
		t.Errorf("timeout checker from env %+v", tc)
	}
	k = cfg.Executor.K8s.Options.Kubernetes
	if k.RootlessBuildkitFeatureEnabled || k.BuildkitImage != "reg/bk:1" || k.DockerRootlessImage != "docker:27-dind-rootless" {
		t.Errorf("BuildKit from env %v %q %q", k.RootlessBuildkitFeatureEnabled, k.BuildkitImage, k.DockerRootlessImage)
	}
}

func TestLoad_PluginKeysRefused(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want []string
	}{
		// A blocked start must not spin through the schedule.
		{"ReenqueueWaitUnderASecond", map[string]string{"PLUGIN_BLOCKEDBY_REENQUEUE_WAIT_TIME": "0.001"},
			[]string{`key "plugins.blockedBy.reenqueueWaitTime" (from env PLUGIN_BLOCKEDBY_REENQUEUE_WAIT_TIME)`, "at least 1 second"}},
		{"BlockTimeoutZero", map[string]string{"PLUGIN_BLOCKEDBY_BLOCK_TIMEOUT": "0"},
			[]string{`key "plugins.blockedBy.blockTimeout" (from env PLUGIN_BLOCKEDBY_BLOCK_TIMEOUT)`}},
		{"NegativeBuffer", map[string]string{"TIMEOUT_CHECKER_BUFFER": "-1m"},
			[]string{`key "timeoutChecker.buffer" (from env TIMEOUT_CHECKER_BUFFER)`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := loadRepo(t, tt.env, "")
			wantErrorContaining(t, err, tt.want...)
		})
	}
	_, _, err := loadRepo(t, nil, `executor: {k8s: {options: {kubernetes: {buildkitImage: ""}}}}`)
	wantErrorContaining(t, err, `key "executor.k8s.options.kubernetes.buildkitImage"`, "must not be empty")
}

// On Redis Cluster queue-service's side keys share a slot only with a
// hash-tagged prefix.
func TestConfig_SideKeysShareASlot(t *testing.T) {
	for _, tt := range []struct {
		typ, prefix string
		want        bool
	}{{"redis", "", true}, {"redisSentinel", "beta_", true}, {"redisCluster", "", false}, {"redisCluster", "beta_", false}, {"redisCluster", "{sd}beta_", true}} {
		c := &Config{Queue: Queue{ConnectionType: tt.typ, Prefix: tt.prefix}}
		if got := c.SideKeysShareASlot(); got != tt.want {
			t.Errorf("%s prefix %q: %v, want %v", tt.typ, tt.prefix, got, tt.want)
		}
	}
}
