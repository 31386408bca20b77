// Package diskcache owns the disk cache's directories under
// ecosystem.cache.path (strategy "disk"): it removes a pipeline's, job's or
// event's cache when queue-service asks with a `clear` job on the cache
// queue, as buildcluster-queue-worker does, and never anything outside the
// cache path.
package diskcache

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Request is a clear job's args[0], as queue-service enqueues it:
// {"resource":"caches","action":"delete","prefix":..,"scope":..,"id":..,
// "pipelineId":..,"buildClusters":[..]}. Ids may be numbers or strings.
type Request struct {
	Resource   string          `json:"resource"`
	Action     string          `json:"action"`
	Prefix     string          `json:"prefix"`
	Scope      string          `json:"scope"`
	ID         json.RawMessage `json:"id"`
	PipelineID json.RawMessage `json:"pipelineId"`
}

// Options are the cache settings (ecosystem.cache).
type Options struct {
	Strategy string
	Path     string
}

// Cleaner removes cache directories.
type Cleaner struct{ opts Options }

// New returns a cleaner.
func New(opts Options) *Cleaner { return &Cleaner{opts: opts} }

// ErrNotDisk: the cache strategy is not "disk" (or has no path); there is
// nothing on disk to clear.
var ErrNotDisk = errors.New("the cache strategy is not disk")

// ErrRefused marks a request that names no cache directory, or one outside
// the cache path.
var ErrRefused = errors.New("refused")

// Dir is the directory a request names, checked to lie under the cache path:
// <path>[/<prefix>]/pipelines/<pipelineId>, or
// <path>[/<prefix>]/<jobs|events>/<pipelineId>/<id>, the layout build pods
// mount (buildcluster-queue-worker's). It is pure.
func (c *Cleaner) Dir(r Request) (string, error) {
	if c.opts.Strategy != "disk" || c.opts.Path == "" {
		return "", ErrNotDisk
	}
	if r.Resource != "caches" || r.Action != "delete" {
		return "", fmt.Errorf("%w: resource %q action %q is not caches/delete", ErrRefused, r.Resource, r.Action)
	}
	pipeline, err := positiveID(r.PipelineID)
	if err != nil {
		return "", fmt.Errorf("%w: pipelineId: %v", ErrRefused, err)
	}
	// The prefix is one path element (queue-service's executor prefix).
	if r.Prefix != "" && (strings.ContainsAny(r.Prefix, `/\`) || r.Prefix == "." || r.Prefix == "..") {
		return "", fmt.Errorf("%w: prefix %q is not a single path element", ErrRefused, r.Prefix)
	}
	base := filepath.Clean(c.opts.Path)
	parts := []string{base}
	if r.Prefix != "" {
		parts = append(parts, r.Prefix)
	}
	switch r.Scope {
	case "pipelines":
		parts = append(parts, "pipelines", strconv.FormatInt(pipeline, 10))
	case "jobs", "events":
		id, err := positiveID(r.ID)
		if err != nil {
			return "", fmt.Errorf("%w: id: %v", ErrRefused, err)
		}
		parts = append(parts, r.Scope, strconv.FormatInt(pipeline, 10), strconv.FormatInt(id, 10))
	default:
		return "", fmt.Errorf("%w: scope %q is not pipelines, jobs or events", ErrRefused, r.Scope)
	}
	dir := filepath.Join(parts...)
	if !within(base, dir) {
		return "", fmt.Errorf("%w: %s is outside the cache path %s", ErrRefused, dir, base)
	}
	return dir, nil
}

// Clear removes the directory a request names and returns it. A directory
// that does not exist is no error (there was nothing cached). Symlinks on
// the way that lead outside the cache path are refused.
func (c *Cleaner) Clear(r Request) (string, error) {
	dir, err := c.Dir(r)
	if err != nil {
		return "", err
	}
	base := filepath.Clean(c.opts.Path)
	realBase, err := filepath.EvalSymlinks(base)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return dir, nil
		}
		return dir, fmt.Errorf("resolving the cache path %s: %w", base, err)
	}
	realParent, err := filepath.EvalSymlinks(filepath.Dir(dir))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return dir, nil
		}
		return dir, fmt.Errorf("resolving %s: %w", filepath.Dir(dir), err)
	}
	if !within(realBase, filepath.Join(realParent, filepath.Base(dir))) {
		return dir, fmt.Errorf("%w: %s resolves outside the cache path %s", ErrRefused, dir, realBase)
	}
	if err := os.RemoveAll(dir); err != nil {
		return dir, fmt.Errorf("removing %s: %w", dir, err)
	}
	return dir, nil
}

func within(base, dir string) bool {
	rel, err := filepath.Rel(base, dir)
	return err == nil && rel != "." && !strings.HasPrefix(rel, "..") && !filepath.IsAbs(rel)
}

func positiveID(raw json.RawMessage) (int64, error) {
	raw = bytes.TrimSpace(raw)
	var s string
	if json.Unmarshal(raw, &s) != nil {
		s = string(raw)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(s), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive id", s)
	}
	return n, nil
}
