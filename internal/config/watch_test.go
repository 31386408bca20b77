package config

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// configMapDir reproduces the kubelet's ConfigMap volume: the data sits in
// a timestamped directory, "..data" points at it, and config.yaml points
// through "..data". Updates build a new directory and rename a fresh
// symlink over "..data", so config.yaml itself is never written.
type configMapDir struct {
	t       *testing.T
	dir     string
	current string
}

func newConfigMapDir(t *testing.T, content string) *configMapDir {
	t.Helper()
	c := &configMapDir{t: t, dir: t.TempDir()}
	c.current = c.writeVersion("..2026_11_23_x", content)
	c.must(os.Symlink(c.current, filepath.Join(c.dir, "..data")))
	c.must(os.Symlink(filepath.Join("..data", "config.yaml"), filepath.Join(c.dir, "config.yaml")))
	return c
}

func (c *configMapDir) path() string { return filepath.Join(c.dir, "config.yaml") }

func (c *configMapDir) writeVersion(name, content string) string {
	c.must(os.Mkdir(filepath.Join(c.dir, name), 0o755))
	c.must(os.WriteFile(filepath.Join(c.dir, name, "config.yaml"), []byte(content), 0o644))
	return name
}

// swap publishes content as the kubelet does and removes the old version.
func (c *configMapDir) swap(name, content string) {
	c.t.Helper()
	c.writeVersion(name, content)
	tmp := filepath.Join(c.dir, "..data_tmp")
	c.must(os.Symlink(name, tmp))
	c.must(os.Rename(tmp, filepath.Join(c.dir, "..data")))
	c.must(os.RemoveAll(filepath.Join(c.dir, c.current)))
	c.current = name
}

func (c *configMapDir) must(err error) {
	c.t.Helper()
	if err != nil {
		c.t.Fatal(err)
	}
}

type reload struct {
	cfg *Config
	err error
}

func TestWatch_ConfigMapSymlinkSwap(t *testing.T) {
	cm := newConfigMapDir(t, "worker: {concurrency: 6}\n")
	opts := LoadOptions{DefaultsFile: repoDefaults, EnvMapFile: repoEnvMap, OverlayFile: cm.path(), Getenv: envOf(nil)}
	initial, err := Load(opts)
	if err != nil || initial.Worker.Concurrency != 6 {
		t.Fatalf("initial Load: concurrency=%v err=%v", initial, err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reloads := make(chan reload, 16)
	if err := Watch(ctx, opts, func(c *Config, err error) { reloads <- reload{c, err} }); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	next := func() reload {
		t.Helper()
		select {
		case r := <-reloads:
			return r
		case <-time.After(10 * time.Second):
			t.Fatal("no reload within 10s")
			return reload{}
		}
	}

	steps := []struct {
		name, version, content string
		wantConcurrency        int
		wantErr                []string
	}{
		{name: "ValidSwapDeliversNewConfig", version: "..2026_11_23_y", content: "worker: {concurrency: 9}\n", wantConcurrency: 9},
		{name: "InvalidSwapDeliversError", version: "..2026_11_23_z", content: "worker: {concurrency: 0}\n",
			wantErr: []string{`key "worker.concurrency" (from file ` + cm.path() + `)`, "out of range 1..1024"}},
		{name: "UnknownKeySwapDeliversError", version: "..2026_11_24_a", content: "worker: {concurrancy: 2}\n",
			wantErr: []string{`unknown key "worker.concurrancy"`}},
		{name: "RecoversAfterBadSwap", version: "..2026_11_24_b", content: "worker: {concurrency: 12}\n", wantConcurrency: 12},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			cm.swap(s.version, s.content)
			r := next()
			if s.wantErr != nil {
				if r.cfg != nil {
					t.Errorf("got a Config with the error")
				}
				wantErrorContaining(t, r.err, s.wantErr...)
				return
			}
			if r.err != nil {
				t.Fatalf("reload error: %v", r.err)
			}
			if r.cfg.Worker.Concurrency != s.wantConcurrency {
				t.Errorf("concurrency = %d, want %d", r.cfg.Worker.Concurrency, s.wantConcurrency)
			}
			if got := r.cfg.Source("worker.concurrency"); got != "file "+cm.path() {
				t.Errorf("Source = %q", got)
			}
		})
	}

	// One swap is one reload: the kubelet's several renames are debounced.
	select {
	case r := <-reloads:
		t.Errorf("extra reload: %+v", r)
	case <-time.After(3 * watchDebounce):
	}

	cancel()
	cm.swap("..2026_11_24_c", "worker: {concurrency: 3}\n")
	select {
	case r := <-reloads:
		t.Errorf("reload after ctx was done: %+v", r)
	case <-time.After(5 * watchDebounce):
	}
}

func TestWatch_InPlaceEditIsDebouncedToOneReload(t *testing.T) {
	path := writeFile(t, "config.yaml", "log: {level: info}\n")
	opts := LoadOptions{DefaultsFile: repoDefaults, OverlayFile: path, Getenv: envOf(nil)}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reloads := make(chan reload, 16)
	if err := Watch(ctx, opts, func(c *Config, err error) { reloads <- reload{c, err} }); err != nil {
		t.Fatalf("Watch: %v", err)
	}
	// Truncate, then write: the empty file in between must not be reported.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("log: {level: debug}\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-reloads:
		if r.err != nil || r.cfg.Log.Level != "debug" {
			t.Fatalf("reload = %+v, want level debug", r)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no reload within 10s")
	}
	select {
	case r := <-reloads:
		t.Errorf("extra reload: level=%v err=%v", r.cfg, r.err)
	case <-time.After(3 * watchDebounce):
	}
}

func TestWatch_RefusesBadArguments(t *testing.T) {
	tests := []struct {
		name     string
		opts     LoadOptions
		onChange func(*Config, error)
		want     string
	}{
		{name: "NoOverlay", opts: LoadOptions{DefaultsFile: repoDefaults}, onChange: func(*Config, error) {}, want: "no overlay file"},
		{name: "NilCallback", opts: LoadOptions{DefaultsFile: repoDefaults, OverlayFile: "x.yaml"}, want: "onChange is nil"},
		{name: "MissingDirectory", opts: LoadOptions{DefaultsFile: repoDefaults, OverlayFile: "/nonexistent-qw/config.yaml"},
			onChange: func(*Config, error) {}, want: "/nonexistent-qw"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Watch(context.Background(), tt.opts, tt.onChange)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Watch error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}
