package testbed

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Topology is a private Redis Sentinel set or Redis Cluster on loopback,
// started for one test by scripts/redis-topology.sh and stopped (its data
// deleted) when the test ends.
type Topology struct {
	// Env is the daemon's environment for it: REDIS_TYPE,
	// REDIS_CLUSTER_HOSTS, REDIS_PASSWORD, and for Sentinel
	// REDIS_SENTINEL_MASTER_NAME and REDIS_SENTINEL_PASSWORD.
	Env map[string]string
	// Hosts are the sentinels (Sentinel) or the primaries (Cluster).
	Hosts []string
	// DataNodes are the data nodes; for Sentinel the primary at start first.
	DataNodes []string
	// MasterName is the name the sentinels monitor (Sentinel only).
	MasterName string
	// Password is the data nodes' requirepass; SentinelPassword the
	// sentinels' (a different one).
	Password, SentinelPassword string
	// Dir holds the servers' configs, data and logs.
	Dir string
}

// topologyScript is scripts/redis-topology.sh of this source tree.
func topologyScript() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "scripts", "redis-topology.sh")
}

// SentinelSet starts 1 primary, 1 replica and 3 sentinels (all with
// passwords, AOF on) for t.
func SentinelSet(t testing.TB) *Topology { return startTopology(t, "sentinel") }

// RedisCluster starts a 3-primary Redis Cluster (password, AOF on) for t.
func RedisCluster(t testing.TB) *Topology { return startTopology(t, "cluster") }

func startTopology(t testing.TB, kind string) *Topology {
	t.Helper()
	dir := t.TempDir()
	script := topologyScript()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, script, kind, "up", "--dir", dir)
	cmd.Stderr = &stderr
	// Registered before the start: a start that fails half-way still has
	// its servers stopped.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if out, err := exec.CommandContext(ctx, script, kind, "down", "--dir", dir).CombinedOutput(); err != nil {
			t.Errorf("stopping the %s topology: %v\n%s", kind, err, out)
		}
	})
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("starting a Redis %s topology with %s: %v\n%s(redis-server and redis-cli come from scripts/ensure-redis.sh)", kind, script, err, stderr.String())
	}
	env, err := parseExports(out)
	if err != nil {
		t.Fatalf("reading what %s printed: %v\n%s", script, err, out)
	}
	tp := &Topology{
		Env:              map[string]string{},
		MasterName:       env["REDIS_SENTINEL_MASTER_NAME"],
		Password:         env["REDIS_PASSWORD"],
		SentinelPassword: env["REDIS_SENTINEL_PASSWORD"],
		Dir:              dir,
	}
	for k, v := range env {
		if strings.HasPrefix(k, "REDIS_") {
			tp.Env[k] = v
		}
	}
	if err := json.Unmarshal([]byte(env["REDIS_CLUSTER_HOSTS"]), &tp.Hosts); err != nil || len(tp.Hosts) == 0 {
		t.Fatalf("REDIS_CLUSTER_HOSTS %q from %s: %v", env["REDIS_CLUSTER_HOSTS"], script, err)
	}
	if err := json.Unmarshal([]byte(env["QW_REDIS_DATA_NODES"]), &tp.DataNodes); err != nil || len(tp.DataNodes) == 0 {
		t.Fatalf("QW_REDIS_DATA_NODES %q from %s: %v", env["QW_REDIS_DATA_NODES"], script, err)
	}
	return tp
}

// parseExports reads the script's `export NAME='value'` lines.
func parseExports(out []byte) (map[string]string, error) {
	env := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		kv, ok := strings.CutPrefix(line, "export ")
		name, quoted, ok2 := strings.Cut(kv, "=")
		if !ok || !ok2 || len(quoted) < 2 || quoted[0] != '\'' || quoted[len(quoted)-1] != '\'' {
			return nil, fmt.Errorf("unexpected line %q", line)
		}
		env[name] = quoted[1 : len(quoted)-1]
	}
	return env, sc.Err()
}

// Client returns a client of the topology as an application sees it: the
// current primary through the sentinels, or the cluster. Closed when t ends.
func (tp *Topology) Client(t testing.TB) redis.UniversalClient {
	t.Helper()
	var c redis.UniversalClient
	if tp.MasterName != "" {
		c = redis.NewFailoverClient(&redis.FailoverOptions{
			MasterName: tp.MasterName, SentinelAddrs: tp.Hosts,
			SentinelPassword: tp.SentinelPassword, Password: tp.Password,
		})
	} else {
		c = redis.NewClusterClient(&redis.ClusterOptions{Addrs: tp.Hosts, Password: tp.Password})
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Node returns a client of one data node (no failover, no redirects).
// Closed when t ends.
func (tp *Topology) Node(t testing.TB, addr string) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, Password: tp.Password, MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// sentinel returns a client of sentinel i (closed by the caller).
func (tp *Topology) sentinel(i int) *redis.SentinelClient {
	return redis.NewSentinelClient(&redis.Options{Addr: tp.Hosts[i], Password: tp.SentinelPassword, MaxRetries: -1})
}

// Primary is the primary the first sentinel names now.
func (tp *Topology) Primary(ctx context.Context) (string, error) {
	return tp.primaryPer(ctx, 0)
}

func (tp *Topology) primaryPer(ctx context.Context, i int) (string, error) {
	s := tp.sentinel(i)
	defer s.Close()
	hp, err := s.GetMasterAddrByName(ctx, tp.MasterName).Result()
	if err != nil {
		return "", fmt.Errorf("asking sentinel %s for %s: %w", tp.Hosts[i], tp.MasterName, err)
	}
	return hp[0] + ":" + hp[1], nil
}

// role is a data node's INFO replication role and, for a replica, the
// primary it follows and whether its link is up.
func (tp *Topology) role(ctx context.Context, addr string) (role, primary string, linkUp bool, err error) {
	c := redis.NewClient(&redis.Options{Addr: addr, Password: tp.Password, MaxRetries: -1})
	defer c.Close()
	info, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return "", "", false, err
	}
	var host, port string
	for _, line := range strings.Split(info, "\r\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "role":
			role = v
		case "master_host":
			host = v
		case "master_port":
			port = v
		case "master_link_status":
			linkUp = v == "up"
		}
	}
	if host != "" {
		primary = host + ":" + port
	}
	return role, primary, linkUp, nil
}

// StartFailover asks a sentinel for a failover (SENTINEL FAILOVER: no
// agreement needed, the primary is healthy) and returns the primary it
// replaces. It does not wait: see WaitFailedOver.
func (tp *Topology) StartFailover(t testing.TB) (old string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	old, err := tp.Primary(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := tp.sentinel(0)
	defer s.Close()
	if err := s.Failover(ctx, tp.MasterName).Err(); err != nil {
		t.Fatalf("SENTINEL FAILOVER %s: %v", tp.MasterName, err)
	}
	return old
}

// WaitFailedOver waits until the failover away from old is complete: every
// sentinel names the same new primary, that node is a primary, and old is
// its replica with the link up. From then on, whatever the old primary
// accepted after the promotion is gone. It returns the new primary.
func (tp *Topology) WaitFailedOver(t testing.TB, old string, timeout time.Duration) (primary string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p, why := tp.failedOver(old)
		if why == "" {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("the failover away from %s did not complete within %v: %s", old, timeout, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// failedOver returns the new primary, or why the failover is not complete.
func (tp *Topology) failedOver(old string) (primary, why string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	for i := range tp.Hosts {
		p, err := tp.primaryPer(ctx, i)
		if err != nil || p == old || (primary != "" && p != primary) {
			return "", fmt.Sprintf("sentinel %s names %q (%v)", tp.Hosts[i], p, err)
		}
		primary = p
	}
	if role, _, _, err := tp.role(ctx, primary); err != nil || role != "master" {
		return "", fmt.Sprintf("new primary %s has role %q (%v)", primary, role, err)
	}
	role, follows, up, err := tp.role(ctx, old)
	if err != nil || role != "slave" || follows != primary || !up {
		return "", fmt.Sprintf("old primary %s has role %q following %q, link up %v (%v)", old, role, follows, up, err)
	}
	return primary, ""
}
