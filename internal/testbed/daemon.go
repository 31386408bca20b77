package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/sdkata/queue-worker/internal/testbed/proc"
)

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	port, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// BuildDaemon builds the queue-worker command at pkgDir (relative to the
// calling test's package) into a fresh temp dir and returns the binary.
// Test binaries call it once, through a sync.OnceValues of their own.
func BuildDaemon(pkgDir string) (string, error) {
	dir, err := os.MkdirTemp("", "qw-bin-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "queue-worker")
	out, err := exec.Command("go", "build", "-o", bin, pkgDir).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building queue-worker: %w\n%s", err, out)
	}
	return bin, nil
}
