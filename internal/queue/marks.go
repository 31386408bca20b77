package queue

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// StopMarks remember that a build was stopped, so that a start handled at
// the same time or later, on any replica, does not leave a pod behind.
// Screwdriver's own marker for a start cancelled while queued
// (deleted_<jobId>_<buildId>, a plain key set by queue-service) counts too.
type StopMarks struct {
	rdb     redis.UniversalClient
	keys    Keys
	ttl     time.Duration
	timeout time.Duration
}

// NewStopMarks returns the store; marks expire after ttl.
func NewStopMarks(rdb redis.UniversalClient, keys Keys, ttl, timeout time.Duration) *StopMarks {
	return &StopMarks{rdb: rdb, keys: keys, ttl: ttl, timeout: timeout}
}

// MarkStopped records that a build was stopped.
func (m *StopMarks) MarkStopped(ctx context.Context, buildID int64) error {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	if err := m.rdb.Set(ctx, m.keys.Stopped(buildID), "1", m.ttl).Err(); err != nil {
		return fmt.Errorf("marking build %d stopped: %w", buildID, err)
	}
	return nil
}

// Stopped reports whether a build was stopped (by us or by queue-service).
func (m *StopMarks) Stopped(ctx context.Context, buildID, jobID int64) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	// One EXISTS per key: our mark is hash-tagged with the namespace,
	// queue-service's is a plain key, so on Redis Cluster they live in
	// different slots and a multi-key EXISTS would fail with CROSSSLOT.
	keys := []string{m.keys.Stopped(buildID)}
	if jobID != 0 {
		keys = append(keys, "deleted_"+strconv.FormatInt(jobID, 10)+"_"+strconv.FormatInt(buildID, 10))
	}
	// One round trip: the EXISTS calls are pipelined (go-redis sends each
	// to its own slot's node on a cluster).
	cmds := make([]*redis.IntCmd, len(keys))
	_, err := m.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, k := range keys {
			cmds[i] = p.Exists(ctx, k)
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("checking whether build %d was stopped: %w", buildID, err)
	}
	for _, c := range cmds {
		if c.Val() > 0 {
			return true, nil
		}
	}
	return false, nil
}
