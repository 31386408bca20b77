package config

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// checkLoadErr: a refused config names what is wrong. Every problem is a
// *FieldError with a key, or (a file that is not YAML at all) an error that
// names the file.
func checkLoadErr(t *testing.T, err error, file string) {
	t.Helper()
	if err == nil {
		return
	}
	var joined interface{ Unwrap() []error }
	parts := []error{err}
	if errors.As(err, &joined) {
		parts = joined.Unwrap()
	}
	for _, e := range parts {
		var fe *FieldError
		switch {
		case errors.As(e, &fe):
			if fe.Key == "" && !strings.Contains(e.Error(), file) {
				t.Fatalf("a field error without a key: %v", e)
			}
		case !strings.Contains(e.Error(), file) && !strings.Contains(e.Error(), "config"):
			t.Fatalf("an error that names neither a key nor the file: %v", e)
		}
	}
}

// FuzzLoad_Overlay: an operator's --config overlay (a ConfigMap) is loaded
// strictly. Whatever the bytes, Load never panics, and refuses with errors
// that name the key or the file; an accepted config validates.
func FuzzLoad_Overlay(f *testing.F) {
	for _, seed := range []string{
		"executor:\n  k8s:\n    weightage: 50\n",
		"executor:\n  k8s:\n    weightage: 150\n",
		"executor:\n  k8s:\n    exclusion: [rhel6, \"i386(\"]\n",
		"routing:\n  paused: [kata]\n  budgets: {kata: 10}\n",
		"queue:\n  connectionType: redisCluster\n  namespace: plain\n",
		"verify:\n  pendingTimeout: -1s\n",
		"unknownKey: 1\n",
		"executor: [1, 2]\n",
		"a: &a [*a, *a]\n",
		"executor:\n  k8s:\n    options:\n      kubernetes:\n        nodeSelectors: {\"kubernetes.io/arch\": amd64}\n",
		"\t- :\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		overlay := filepath.Join(dir, "overlay.yaml")
		if err := os.WriteFile(overlay, data, 0o600); err != nil {
			t.Fatal(err)
		}
		cfg, err := Load(LoadOptions{DefaultsFile: "../../config/default.yaml", OverlayFile: overlay, Getenv: func(string) string { return "" }})
		checkLoadErr(t, err, overlay)
		if err == nil && cfg == nil {
			t.Fatal("no error and no config")
		}
		if err != nil && cfg != nil {
			t.Fatal("a config returned with an error")
		}
	})
}

// envNames lists the env vars the env map reads.
func envNames(t testing.TB) []string {
	raw, err := os.ReadFile("../../config/custom-environment-variables.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var tree any
	if err := yaml.Unmarshal(raw, &tree); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	var walk func(any)
	walk = func(n any) {
		switch v := n.(type) {
		case string:
			seen[v] = true
		case map[string]any:
			if name, ok := v["__name"].(string); ok {
				seen[name] = true
				return
			}
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(tree)
	out := make([]string, 0, len(seen))
	for n := range seen {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// FuzzLoad_Env: any value in any of the env vars the daemon reads is
// either accepted (and validates) or refused with the key and the env var
// named; never a panic.
func FuzzLoad_Env(f *testing.F) {
	names := envNames(f)
	for i, v := range []string{"abc", "-1", "1e999", "NaN", "[\"rhel6\",", "{\"a\":1}", "true", "0s", "99999999999999999999", "\x00", "null"} {
		f.Add(uint16(i*7), v)
	}
	// Values that are fine alone but break another key's rule.
	for name, v := range map[string]string{"REDIS_TYPE": "redisCluster", "K8S_MEMORY_MAX": "1", "K8S_CPU_MAX": "0.5",
		"MAX_BUILD_TIMEOUT": "5", "SUPERVISOR_RENEW_DEADLINE": "1m", "QUEUE_RETRY_DELAY": "1h"} {
		if i := slices.Index(names, name); i >= 0 {
			f.Add(uint16(i), v)
		}
	}
	f.Fuzz(func(t *testing.T, pick uint16, value string) {
		name := names[int(pick)%len(names)]
		cfg, err := Load(LoadOptions{DefaultsFile: "../../config/default.yaml", EnvMapFile: "../../config/custom-environment-variables.yaml",
			Getenv: func(k string) string {
				if k == name {
					return value
				}
				return ""
			}})
		if err != nil {
			if cfg != nil {
				t.Fatal("a config returned with an error")
			}
			if !strings.Contains(err.Error(), name) {
				t.Fatalf("%s=%q refused without naming the env var: %v", name, value, err)
			}
			checkLoadErr(t, err, name)
		}
	})
}
