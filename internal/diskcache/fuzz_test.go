package diskcache_test

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sdkata/queue-worker/internal/diskcache"
)

// Whatever a clear job says, the directory it names is strictly inside the
// cache path.
func FuzzCleaner_DirStaysInsideTheCachePath(f *testing.F) {
	f.Add("", "pipelines", `42`, `42`)
	f.Add("beta_", "jobs", `"678"`, `"42"`)
	f.Add("..", "events", `1`, `2`)
	f.Add("a/../..", "jobs/../../", `"1/.."`, `-1`)
	const base = "/mnt/sdcache"
	c := diskcache.New(diskcache.Options{Strategy: "disk", Path: base})
	f.Fuzz(func(t *testing.T, prefix, scope, id, pipeline string) {
		r := diskcache.Request{Resource: "caches", Action: "delete", Prefix: prefix, Scope: scope,
			ID: json.RawMessage(id), PipelineID: json.RawMessage(pipeline)}
		dir, err := c.Dir(r)
		if err != nil {
			return
		}
		rel, rerr := filepath.Rel(base, dir)
		if rerr != nil || rel == "." || strings.HasPrefix(rel, "..") || filepath.Clean(dir) != dir {
			t.Fatalf("Dir(%+v) = %q: not strictly inside %s", r, dir, base)
		}
	})
}
