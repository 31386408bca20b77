package config

import (
	"reflect"
	"strings"
	"testing"
)

// The Redis topology comes from env as operators set it: REDIS_TYPE picks
// it, and each topology's keys land where the client reads them.
func TestLoad_RedisTypeSelectsTheTopology(t *testing.T) {
	type got struct {
		Type, Namespace, DataPassword, SentinelPassword, MasterName string
		Hosts                                                       []string
		SlotsRefreshTimeout                                         int
	}
	tests := []struct {
		name string
		env  map[string]string
		want got
	}{
		{
			name: "UnsetIsOneServer",
			env:  map[string]string{"REDIS_PASSWORD": "d4ta"},
			want: got{Type: "redis", Namespace: "resque", DataPassword: "d4ta", Hosts: []string{}, SlotsRefreshTimeout: 1000},
		},
		{
			name: "Sentinel",
			env: map[string]string{"REDIS_TYPE": "redisSentinel", "REDIS_CLUSTER_HOSTS": `["s-0:26379","s-1:26379"]`,
				"REDIS_SENTINEL_MASTER_NAME": "mymaster", "REDIS_PASSWORD": "d4ta", "REDIS_SENTINEL_PASSWORD": "s3ntinel"},
			want: got{Type: "redisSentinel", Namespace: "resque", DataPassword: "d4ta", SentinelPassword: "s3ntinel",
				MasterName: "mymaster", Hosts: []string{"s-0:26379", "s-1:26379"}, SlotsRefreshTimeout: 1000},
		},
		{
			name: "Cluster",
			env: map[string]string{"REDIS_TYPE": "redisCluster", "REDIS_CLUSTER_HOSTS": `["r-0:6379"]`,
				"REDIS_CLUSTER_SLOTS_REFRESH_TIMEOUT": "250", "REDIS_PASSWORD": "d4ta"},
			want: got{Type: "redisCluster", Namespace: "resque:{screwdriver-resque}", DataPassword: "d4ta",
				Hosts: []string{"r-0:6379"}, SlotsRefreshTimeout: 250},
		},
		{
			name: "ClusterWithOwnTaggedNamespace",
			env: map[string]string{"REDIS_TYPE": "redisCluster", "REDIS_CLUSTER_HOSTS": `["r-0:6379"]`,
				"REDIS_RESQUE_NAMESPACE": "sd:{blue}"},
			want: got{Type: "redisCluster", Namespace: "sd:{blue}", Hosts: []string{"r-0:6379"}, SlotsRefreshTimeout: 1000},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, _, err := loadRepo(t, tt.env, "")
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			q := cfg.Queue
			g := got{Type: q.ConnectionType, Namespace: cfg.ResqueNamespace(), DataPassword: q.RedisConnection.Options.Password,
				SentinelPassword: q.RedisClusterConnection.SentinelPassword, MasterName: q.RedisClusterConnection.MasterName,
				Hosts: q.RedisClusterConnection.Hosts, SlotsRefreshTimeout: q.RedisClusterConnection.SlotsRefreshTimeout}
			if !reflect.DeepEqual(g, tt.want) {
				t.Errorf("got  %+v\nwant %+v", g, tt.want)
			}
		})
	}
}

func TestLoad_RedisTopologyRefused(t *testing.T) {
	cluster := map[string]string{"REDIS_TYPE": "redisCluster", "REDIS_CLUSTER_HOSTS": `["r-0:6379"]`}
	with := func(base map[string]string, kv ...string) map[string]string {
		out := map[string]string{}
		for k, v := range base {
			out[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string
	}{
		{
			// Multi-key scripts would fail with CROSSSLOT on the first job.
			name:    "UntaggedClusterNamespace",
			env:     with(cluster, "REDIS_RESQUE_NAMESPACE", "resque"),
			wantErr: []string{`key "queue.namespace" (from env REDIS_RESQUE_NAMESPACE)`, "hash tag"},
		},
		{
			// Redis hashes the whole key when the braces hold nothing.
			name:    "EmptyHashTag",
			env:     with(cluster, "REDIS_RESQUE_NAMESPACE", "resque:{}"),
			wantErr: []string{`key "queue.namespace" (from env REDIS_RESQUE_NAMESPACE)`, "hash tag"},
		},
		{
			name:    "UnknownType",
			env:     with(cluster, "REDIS_TYPE", "sentinel"),
			wantErr: []string{`key "queue.connectionType" (from env REDIS_TYPE)`, "redisSentinel"},
		},
		{
			name:    "NegativeSlotsRefreshTimeout",
			env:     with(cluster, "REDIS_CLUSTER_SLOTS_REFRESH_TIMEOUT", "-1"),
			wantErr: []string{`key "queue.redisClusterConnection.slotsRefreshTimeout" (from env REDIS_CLUSTER_SLOTS_REFRESH_TIMEOUT)`},
		},
		{
			name:    "SentinelWithoutMasterName",
			env:     with(nil, "REDIS_TYPE", "redisSentinel", "REDIS_CLUSTER_HOSTS", `["s-0:26379"]`, "REDIS_SENTINEL_PASSWORD", "x"),
			wantErr: []string{`key "queue.redisClusterConnection.masterName"`},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := loadRepo(t, tt.env, "")
			wantErrorContaining(t, err, tt.wantErr...)
		})
	}
}

func TestRedactedYAML_HidesTheSentinelPassword(t *testing.T) {
	cfg, _, err := loadRepo(t, map[string]string{"REDIS_TYPE": "redisSentinel", "REDIS_CLUSTER_HOSTS": `["s-0:26379"]`,
		"REDIS_SENTINEL_MASTER_NAME": "m", "REDIS_SENTINEL_PASSWORD": "s3ntinel-secret"}, "")
	if err != nil {
		t.Fatal(err)
	}
	out, err := cfg.RedactedYAML()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "s3ntinel-secret") || !strings.Contains(string(out), "sentinelPassword: "+Redacted) {
		t.Fatalf("sentinel password not redacted:\n%s", out)
	}
}
