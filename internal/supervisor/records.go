package supervisor

import (
	"context"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
	"k8s.io/apimachinery/pkg/types"
)

// RedisRecords keeps the supervision records of each pod in Redis, one hash
// per pod UID (<namespace>:qw:supervision:<uid>) beside the queue's keys.
//
// Redis, not the pod or its Secret: a record is written once or twice per
// build, and a write to a Kubernetes object costs the control plane an etcd
// write plus a watch event to every watcher of that resource (for Secrets,
// this daemon and the garbage collector; for pods, the scheduler, kubelets
// and controllers too), about 1.5-2 ms of apiserver CPU per build; a Redis
// hash costs microseconds, is read back consistently by the next sync (no
// cache lag to paper over), and needs no watch. Records are deleted when
// their pod is; a TTL removes any a crash left behind.
type RedisRecords struct {
	rdb     redis.UniversalClient
	prefix  string
	ttl     time.Duration
	timeout time.Duration
}

// NewRedisRecords returns the record store of a resque namespace; a record
// lives at most ttl after its last write.
func NewRedisRecords(rdb redis.UniversalClient, namespace string, ttl, timeout time.Duration) *RedisRecords {
	return &RedisRecords{rdb: rdb, prefix: namespace + ":qw:supervision:", ttl: ttl, timeout: timeout}
}

func (r *RedisRecords) key(uid types.UID) string { return r.prefix + string(uid) }

// Of returns the records of each pod, in order (nil for a pod with none),
// in one round trip.
func (r *RedisRecords) Of(ctx context.Context, uids []types.UID) ([]map[string]string, error) {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	cmds := make([]*redis.MapStringStringCmd, len(uids))
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, uid := range uids {
			cmds[i] = p.HGetAll(ctx, r.key(uid))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading supervision records: %w", err)
	}
	out := make([]map[string]string, len(uids))
	for i, c := range cmds {
		if m := c.Val(); len(m) > 0 {
			out[i] = m
		}
	}
	return out, nil
}

// Add merges rec into a pod's records and restarts their TTL, atomically
// (MULTI/EXEC: HSET then EXPIRE, so a record never exists without a TTL).
func (r *RedisRecords) Add(ctx context.Context, uid types.UID, rec map[string]string) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	k := r.key(uid)
	_, err := r.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.HSet(ctx, k, rec)
		p.Expire(ctx, k, r.ttl)
		return nil
	})
	if err != nil {
		return fmt.Errorf("recording supervision state of pod %s: %w", uid, err)
	}
	return nil
}

// Forget deletes the records of pods that are gone.
func (r *RedisRecords) Forget(ctx context.Context, uids []types.UID) error {
	ctx, cancel := context.WithTimeout(ctx, r.timeout)
	defer cancel()
	keys := make([]string, len(uids))
	for i, uid := range uids {
		keys[i] = r.key(uid)
	}
	_, err := r.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Del(ctx, k)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("deleting supervision records: %w", err)
	}
	return nil
}
