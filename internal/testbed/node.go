package testbed

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"sync"
	"syscall"
	"testing"
	"time"
)

// NodeResqueVersion is the exact node-resque release the interoperability
// tests run against (the 9.x line Screwdriver's queue-service uses).
const NodeResqueVersion = "9.7.1"

// NodeTimeout bounds one RunNode script.
const NodeTimeout = 60 * time.Second

var nodeModules struct {
	once sync.Once
	dir  string
	err  error
}

// NodeModules installs node-resque NodeResqueVersion once per machine into
// $HOME/.cache/queue-worker/npm/<version>/ and returns that directory; its
// node_modules is what RunNode puts on NODE_PATH. A file lock serialises
// installs across parallel test binaries. Missing node or npm fails the test.
func NodeModules(t testing.TB) string {
	t.Helper()
	for _, tool := range []string{"node", "npm"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not on PATH: the node-resque interoperability tests need Node.js 18+ and npm (run scripts/ensure-packages.sh, or install nodejs and npm)", tool)
		}
	}
	nodeModules.once.Do(func() {
		nodeModules.dir, nodeModules.err = installNodeResque()
	})
	if nodeModules.err != nil {
		t.Fatalf("installing node-resque %s: %v", NodeResqueVersion, nodeModules.err)
	}
	return nodeModules.dir
}

func installNodeResque() (string, error) {
	home, err := os.UserHomeDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(home, ".cache", "queue-worker", "npm", NodeResqueVersion)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	marker := filepath.Join(dir, ".installed")
	if _, err := os.Stat(marker); err == nil {
		return dir, nil
	}

	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	// flock is released when the file is closed, including when the process
	// dies, so a killed install never wedges later runs.
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", fmt.Errorf("locking %s.lock: %w", dir, err)
	}
	if _, err := os.Stat(marker); err == nil {
		return dir, nil // another test binary installed it while we waited
	}

	pkg := fmt.Sprintf(`{"name":"queue-worker-interop","private":true,"dependencies":{"node-resque":%q}}`+"\n", NodeResqueVersion)
	if err := os.WriteFile(filepath.Join(dir, "package.json"), []byte(pkg), 0o644); err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "install", "--no-audit", "--no-fund")
	cmd.Dir = dir
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("npm install in %s: %v\n%s", dir, err, out.Bytes())
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "node-resque", "package.json")); err != nil {
		return "", fmt.Errorf("npm install in %s left no node_modules/node-resque: %v\n%s", dir, err, out.Bytes())
	}
	if err := os.WriteFile(marker, []byte(NodeResqueVersion+"\n"), 0o644); err != nil {
		return "", err
	}
	return dir, nil
}

// RunNode runs a JavaScript program with node, with dir/node_modules on
// NODE_PATH and env added to the environment, and returns its stdout. The
// script is written to a temporary file (so stack traces carry line numbers);
// it is killed after NodeTimeout. On failure the error carries stderr.
func RunNode(t testing.TB, dir, script string, env map[string]string) ([]byte, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "script.js")
	if err := os.WriteFile(file, []byte(script), 0o644); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), NodeTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", file)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NODE_PATH="+filepath.Join(dir, "node_modules"))
	names := make([]string, 0, len(env))
	for k := range env {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		cmd.Env = append(cmd.Env, k+"="+env[k])
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return stdout.Bytes(), fmt.Errorf("node script timed out after %v\nstderr:\n%s", NodeTimeout, stderr.Bytes())
	}
	if err != nil {
		return stdout.Bytes(), fmt.Errorf("node script: %v\nstderr:\n%s", err, stderr.Bytes())
	}
	return stdout.Bytes(), nil
}
