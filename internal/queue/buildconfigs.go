package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// BuildConfigs is queue-service's <prefix>buildConfigs hash (buildId → full
// buildConfig JSON). It is a plain key: no resque namespace, no hash tag.
type BuildConfigs struct {
	rdb     redis.UniversalClient
	key     string
	timeout time.Duration
}

// NewBuildConfigs returns the store for the given queue prefix.
func NewBuildConfigs(rdb redis.UniversalClient, prefix string, timeout time.Duration) *BuildConfigs {
	return &BuildConfigs{rdb: rdb, key: prefix + "buildConfigs", timeout: timeout}
}

// ErrNoBuildConfig means the hash has no entry for the build.
var ErrNoBuildConfig = errors.New("no entry in the buildConfigs hash")

// Get returns the stored config of a build, or ErrNoBuildConfig.
func (s *BuildConfigs) Get(ctx context.Context, buildID int64) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := s.rdb.HGet(ctx, s.key, strconv.FormatInt(buildID, 10)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("build %d: %w %q", buildID, ErrNoBuildConfig, s.key)
	}
	if err != nil {
		return nil, fmt.Errorf("reading build %d from %q: %w", buildID, s.key, err)
	}
	return v, nil
}

// Delete drops a build's entry, as queue-service's stop does.
func (s *BuildConfigs) Delete(ctx context.Context, buildID int64) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.rdb.HDel(ctx, s.key, strconv.FormatInt(buildID, 10)).Err(); err != nil {
		return fmt.Errorf("deleting build %d from %q: %w", buildID, s.key, err)
	}
	return nil
}
