package testbed

import (
	"context"
	"encoding/json"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// QSBuild is one build as Screwdriver's queue-service enqueues it.
type QSBuild struct {
	BuildID, JobID int64
	// BlockedBy are job ids; queue-service always lists the job itself, so
	// nil means [JobID].
	BlockedBy   []int64
	Annotations map[string]any
	// Container defaults to node:18.
	Container string
}

// QueueService plays queue-service's producer side with the real
// node-resque (NodeResqueVersion): what its scheduler's start and stop write
// to Redis, byte for byte through node-resque's own encoder.
type QueueService struct {
	// Namespace is the resque namespace, Prefix the queue prefix.
	Namespace, Prefix string
	// APIURI is the build configs' apiUri; the token is "jwt-<buildId>".
	APIURI string
}

// qsOp is one producer step for the node script.
type qsOp struct {
	Op     string         `json:"op"`
	Config map[string]any `json:"config,omitempty"`
	Args   map[string]any `json:"args"`
	Build  int64          `json:"build"`
	Job    int64          `json:"job"`
}

// blockedBy is the build's blockedBy list: queue-service's default is the
// job itself.
func (b QSBuild) blockedBy() []int64 {
	if b.BlockedBy == nil {
		return []int64{b.JobID}
	}
	return b.BlockedBy
}

// Start does what queue-service's start does for each build: the full
// build config into <prefix>buildConfigs (blockedBy as an array), then an
// ids-only start job whose blockedBy is the comma-joined string.
func (q QueueService) Start(t testing.TB, builds ...QSBuild) {
	t.Helper()
	ops := make([]qsOp, 0, len(builds))
	for _, b := range builds {
		by := b.blockedBy()
		image := b.Container
		if image == "" {
			image = "node:18"
		}
		annotations := b.Annotations
		if annotations == nil {
			annotations = map[string]any{}
		}
		cfg := map[string]any{
			"annotations": annotations, "blockedBy": by, "freezeWindows": []any{}, "apiUri": q.APIURI,
			"buildId": b.BuildID, "jobId": b.JobID, "jobName": "main", "jobState": "ENABLED", "jobArchived": false,
			"eventId": 1, "pipeline": map[string]any{"id": 42, "name": "org/repo", "scmContext": "github:github.com"},
			"container": image, "isPR": false, "token": "jwt-" + itoa(b.BuildID),
		}
		ops = append(ops, qsOp{Op: "start", Config: cfg, Build: b.BuildID, Job: b.JobID, Args: map[string]any{"blockedBy": joinIDs(by)}})
	}
	q.run(t, ops)
}

// Stop does what queue-service's stop does: deleted_<jobId>_<buildId> = ""
// for 30 minutes (a start still queued must not run), a LREM of the start
// job that never matches (it lacks three fields), then a stop job.
func (q QueueService) Stop(t testing.TB, builds ...QSBuild) {
	t.Helper()
	ops := make([]qsOp, 0, len(builds))
	for _, b := range builds {
		by := b.blockedBy()
		ops = append(ops, qsOp{Op: "stop", Build: b.BuildID, Job: b.JobID, Args: map[string]any{"blockedBy": joinIDs(by)}})
	}
	q.run(t, ops)
}

func (q QueueService) run(t testing.TB, ops []qsOp) {
	t.Helper()
	dir := NodeModules(t)
	host, port, err := net.SplitHostPort(RedisAddr())
	if err != nil {
		t.Fatal(err)
	}
	in, err := json.Marshal(ops)
	if err != nil {
		t.Fatal(err)
	}
	// The field order of each job's args is queue-service's (scheduler.js).
	script := `
const { Queue } = require("node-resque");
(async () => {
  const queue = new Queue({ connection: {
    host: process.env.QW_REDIS_HOST, port: Number(process.env.QW_REDIS_PORT), namespace: process.env.QW_NAMESPACE,
  } });
  queue.on("error", (e) => { console.error(e); process.exitCode = 1; });
  await queue.connect();
  const redis = queue.connection.redis;
  const prefix = process.env.QW_PREFIX;
  try {
    for (const op of JSON.parse(process.env.QW_OPS)) {
      if (op.op === "start") {
        await redis.hset(prefix + "buildConfigs", op.build, JSON.stringify(op.config));
        await queue.enqueue(prefix + "builds", "start", [{
          buildId: op.build, jobId: op.job, blockedBy: op.args.blockedBy,
          blockedBySameJob: true, blockedBySameJobWaitTime: 5,
        }]);
      } else {
        await queue.del(prefix + "builds", "start", [{ buildId: op.build, jobId: op.job, blockedBy: op.args.blockedBy }]);
        const deleteKey = "deleted_" + op.job + "_" + op.build;
        await redis.set(deleteKey, "");
        await redis.expire(deleteKey, 1800);
        await queue.enqueue(prefix + "builds", "stop", [{ buildId: op.build, jobId: op.job, blockedBy: op.args.blockedBy, started: true }]);
      }
    }
  } finally {
    await queue.end();
  }
})().catch((e) => { console.error(e); process.exit(1); });
`
	if out, err := RunNode(t, dir, script, map[string]string{
		"QW_REDIS_HOST": host, "QW_REDIS_PORT": port, "QW_NAMESPACE": q.Namespace, "QW_PREFIX": q.Prefix, "QW_OPS": string(in),
	}); err != nil {
		t.Fatalf("queue-service producer (node-resque): %v\nstdout: %s", err, out)
	}
	t.Cleanup(func() {
		// deleted_ keys carry no prefix: drop the test's own.
		c := redis.NewClient(&redis.Options{Addr: RedisAddr()})
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		for _, op := range ops {
			if op.Op == "stop" {
				c.Del(ctx, "deleted_"+itoa(op.Job)+"_"+itoa(op.Build))
			}
		}
	})
}

func joinIDs(ids []int64) string {
	s := ""
	for i, id := range ids {
		if i > 0 {
			s += ","
		}
		s += itoa(id)
	}
	return s
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
