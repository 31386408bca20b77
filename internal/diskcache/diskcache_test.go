package diskcache_test

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/sdkata/queue-worker/internal/diskcache"
)

func req(js string) diskcache.Request {
	var r diskcache.Request
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		panic(err)
	}
	return r
}

func TestCleaner_DirIsBuildclusterQueueWorkersLayout(t *testing.T) {
	c := diskcache.New(diskcache.Options{Strategy: "disk", Path: "/mnt/sdcache/"})
	tests := []struct {
		name, job, want string
		err             error
	}{
		{"Pipeline", `{"resource":"caches","action":"delete","prefix":"","scope":"pipelines","id":42,"pipelineId":42}`, "/mnt/sdcache/pipelines/42", nil},
		{"JobWithPrefix", `{"resource":"caches","action":"delete","prefix":"beta_","scope":"jobs","id":"678","pipelineId":"42"}`, "/mnt/sdcache/beta_/jobs/42/678", nil},
		{"Event", `{"resource":"caches","action":"delete","prefix":"","scope":"events","id":9001,"pipelineId":42,"buildClusters":["a"]}`, "/mnt/sdcache/events/42/9001", nil},
		{"TraversalInPrefix", `{"resource":"caches","action":"delete","prefix":"../etc","scope":"pipelines","pipelineId":42}`, "", diskcache.ErrRefused},
		{"DotDotPrefix", `{"resource":"caches","action":"delete","prefix":"..","scope":"pipelines","pipelineId":42}`, "", diskcache.ErrRefused},
		{"TraversalInScope", `{"resource":"caches","action":"delete","scope":"../../etc","id":1,"pipelineId":42}`, "", diskcache.ErrRefused},
		{"IDNotANumber", `{"resource":"caches","action":"delete","scope":"jobs","id":"1/../../x","pipelineId":42}`, "", diskcache.ErrRefused},
		{"NoPipeline", `{"resource":"caches","action":"delete","scope":"pipelines","id":1}`, "", diskcache.ErrRefused},
		{"OtherResource", `{"resource":"artifacts","action":"delete","scope":"pipelines","pipelineId":42}`, "", diskcache.ErrRefused},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := c.Dir(req(tt.job))
			if tt.err != nil {
				if !errors.Is(err, tt.err) {
					t.Fatalf("err %v, want %v", err, tt.err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("Dir = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := diskcache.New(diskcache.Options{Strategy: "s3", Path: "/"}).Dir(req(tests[0].job)); !errors.Is(err, diskcache.ErrNotDisk) {
		t.Fatalf("s3 strategy: %v, want ErrNotDisk", err)
	}
}

func TestCleaner_ClearRemovesOnlyTheScopesDirectory(t *testing.T) {
	root := t.TempDir()
	cache := filepath.Join(root, "cache")
	for _, d := range []string{"pipelines/42/x", "pipelines/43", "jobs/42/678/y", "jobs/42/679"} {
		if err := os.MkdirAll(filepath.Join(cache, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	c := diskcache.New(diskcache.Options{Strategy: "disk", Path: cache})
	if _, err := c.Clear(req(`{"resource":"caches","action":"delete","scope":"jobs","id":678,"pipelineId":42}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Clear(req(`{"resource":"caches","action":"delete","scope":"pipelines","pipelineId":42}`)); err != nil {
		t.Fatal(err)
	}
	for d, want := range map[string]bool{"jobs/42/678": false, "jobs/42/679": true, "pipelines/42": false, "pipelines/43": true} {
		_, err := os.Stat(filepath.Join(cache, d))
		if exists := err == nil; exists != want {
			t.Errorf("%s exists %v, want %v", d, exists, want)
		}
	}
	// A cache that was never written is nothing to clear.
	if _, err := c.Clear(req(`{"resource":"caches","action":"delete","scope":"events","id":1,"pipelineId":7}`)); err != nil {
		t.Fatalf("clearing a missing directory: %v", err)
	}
}

// A symlink inside the cache path must not lead the removal outside it.
func TestCleaner_ClearRefusesSymlinksOutOfTheCache(t *testing.T) {
	root := t.TempDir()
	cache, outside := filepath.Join(root, "cache"), filepath.Join(root, "precious")
	if err := os.MkdirAll(filepath.Join(outside, "42", "keep"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(outside, filepath.Join(cache, "pipelines")); err != nil {
		t.Fatal(err)
	}
	c := diskcache.New(diskcache.Options{Strategy: "disk", Path: cache})
	if _, err := c.Clear(req(`{"resource":"caches","action":"delete","scope":"pipelines","pipelineId":42}`)); !errors.Is(err, diskcache.ErrRefused) {
		t.Fatalf("err %v, want ErrRefused", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "42", "keep")); err != nil {
		t.Fatalf("the directory outside the cache is gone: %v", err)
	}
}
