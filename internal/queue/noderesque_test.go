package queue_test

// Interoperability with the real node-resque (testbed.NodeResqueVersion):
// jobs it enqueues are consumed by our Consumer, and entries our Consumer
// writes to the failed list work with its failed-list tooling.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"reflect"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// nodeQueue runs body inside an async function that has `queue`, a connected
// node-resque Queue in the test's namespace, and `input`, the parsed JSON of
// in. Whatever body returns is printed as JSON and decoded into out.
func nodeQueue(t *testing.T, ns string, in, out any, body string) {
	t.Helper()
	dir := testbed.NodeModules(t)
	host, port, err := net.SplitHostPort(testbed.RedisAddr())
	if err != nil {
		t.Fatal(err)
	}
	input, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	script := `
const { Queue } = require("node-resque");
(async () => {
  const queue = new Queue({ connection: {
    host: process.env.QW_REDIS_HOST, port: Number(process.env.QW_REDIS_PORT),
    namespace: process.env.QW_NAMESPACE,
  } });
  queue.on("error", (e) => { console.error(e); process.exitCode = 1; });
  await queue.connect();
  const input = JSON.parse(process.env.QW_INPUT);
  try {
    const result = await (async () => {` + body + `})();
    process.stdout.write(JSON.stringify(result === undefined ? null : result));
  } finally {
    await queue.end();
  }
})().catch((e) => { console.error(e); process.exit(1); });
`
	stdout, err := testbed.RunNode(t, dir, script, map[string]string{
		"QW_REDIS_HOST": host,
		"QW_REDIS_PORT": port,
		"QW_NAMESPACE":  ns,
		"QW_INPUT":      string(input),
	})
	if err != nil {
		t.Fatalf("node-resque script failed: %v\nstdout: %s", err, stdout)
	}
	if out != nil {
		if err := json.Unmarshal(stdout, out); err != nil {
			t.Fatalf("decoding node output %q: %v", stdout, err)
		}
	}
}

// collect runs a consumer until want deliveries were settled by handle, and
// returns the jobs in the order they were handed over.
func collect(t *testing.T, f *fixture, want int, handle func(ctx context.Context, j *queue.Job) queue.Outcome) []*queue.Job {
	t.Helper()
	var (
		mu   sync.Mutex
		jobs []*queue.Job
		done = make(chan struct{})
	)
	stop := f.run(t, queue.HandlerFunc(func(ctx context.Context, j *queue.Job) queue.Outcome {
		out := handle(ctx, j)
		mu.Lock()
		defer mu.Unlock()
		jobs = append(jobs, j)
		if len(jobs) == want {
			close(done)
		}
		return out
	}))
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		mu.Lock()
		got := len(jobs)
		mu.Unlock()
		stop()
		t.Fatalf("consumer settled %d of %d jobs", got, want)
	}
	stop()
	mu.Lock()
	defer mu.Unlock()
	return jobs
}

func ack(context.Context, *queue.Job) queue.Outcome { return queue.Done() }

func TestNodeResque_EnqueuedJobsAreConsumedWithArgsIntact(t *testing.T) {
	f := newFixture(t, 2)
	ctx := context.Background()

	// Payloads exercise what JS and Go encode differently: large ids, HTML
	// characters, '/', non-ASCII, nesting, a bare (non-array) argument.
	type build struct {
		BuildID  int64  `json:"buildId"`
		JobID    int64  `json:"jobId"`
		Blocked  string `json:"blockedBy"`
		Note     string `json:"note"`
		NotArray bool   `json:"notArray"`
	}
	builds := []build{
		{BuildID: 1, JobID: 10, Blocked: "10", Note: "plain"},
		{BuildID: 9007199254740991, JobID: 11, Blocked: "11,12", Note: "<a href=\"/builds/1\">1</a> & co"},
		{BuildID: 424242, JobID: 12, Blocked: "12", Note: "ünïcødé ✓ /slash/", NotArray: true},
	}
	var enqueued []string
	nodeQueue(t, f.keys.Namespace(), builds, &enqueued, `
    const raw = [];
    for (const b of input) {
      const arg = { buildId: b.buildId, jobId: b.jobId, blockedBy: b.blockedBy,
        blockedBySameJob: true, blockedBySameJobWaitTime: 5, virtualJob: false,
        meta: { note: b.note, list: [1, "two", null] } };
      // queue-service passes the bare object; node-resque wraps it in an array.
      await queue.enqueue("builds", "start", b.notArray ? arg : [arg]);
      raw.push(queue.encode("builds", "start", [arg]));
    }
    return raw;`)
	if len(enqueued) != len(builds) {
		t.Fatalf("node enqueued %d jobs, want %d", len(enqueued), len(builds))
	}
	if ok, err := f.rdb.SIsMember(ctx, f.keys.Queues(), "builds").Result(); err != nil || !ok {
		t.Fatalf("node-resque did not register queue builds in %s (%v, %v)", f.keys.Queues(), ok, err)
	}

	jobs := collect(t, f, len(builds), ack)

	byBuild := map[int64]*queue.Job{}
	for _, j := range jobs {
		if j.Class != "start" || j.Queue != "builds" {
			t.Errorf("job class %q queue %q, want start/builds: %s", j.Class, j.Queue, j.Raw)
		}
		if len(j.Args) != 1 {
			t.Fatalf("job has %d args, want 1: %s", len(j.Args), j.Raw)
		}
		var arg struct {
			BuildID   int64  `json:"buildId"`
			JobID     int64  `json:"jobId"`
			BlockedBy string `json:"blockedBy"`
			Meta      struct {
				Note string `json:"note"`
				List []any  `json:"list"`
			} `json:"meta"`
		}
		if err := json.Unmarshal(j.Args[0], &arg); err != nil {
			t.Fatalf("args[0] %s: %v", j.Args[0], err)
		}
		byBuild[arg.BuildID] = j
		for _, b := range builds {
			if b.BuildID == arg.BuildID {
				if arg.JobID != b.JobID || arg.BlockedBy != b.Blocked || arg.Meta.Note != b.Note || len(arg.Meta.List) != 3 {
					t.Errorf("build %d: args[0] %s does not carry what node enqueued", b.BuildID, j.Args[0])
				}
			}
		}
	}
	for i, b := range builds {
		j, ok := byBuild[b.BuildID]
		if !ok {
			t.Errorf("build %d was not delivered (got %d jobs)", b.BuildID, len(jobs))
			continue
		}
		// What we were handed is exactly what node-resque wrote.
		if string(j.Raw) != enqueued[i] {
			t.Errorf("build %d: consumer saw\n%s\nnode-resque encodes\n%s", b.BuildID, j.Raw, enqueued[i])
		}
	}
	testbed.Eventually(t, 2*time.Second, "processed stat", func() bool {
		return f.rdb.Get(ctx, f.keys.StatProcessed()).Val() == fmt.Sprint(len(builds))
	})
	if n := f.rdb.LLen(ctx, f.keys.Queue("builds")).Val(); n != 0 {
		t.Fatalf("queue still holds %d jobs", n)
	}
}

// nodeFailure is a failed-list entry as node-resque's queue.failed() parses it.
type nodeFailure struct {
	Worker  string `json:"worker"`
	Queue   string `json:"queue"`
	Payload struct {
		Class string            `json:"class"`
		Queue string            `json:"queue"`
		Args  []json.RawMessage `json:"args"`
	} `json:"payload"`
	Exception string          `json:"exception"`
	Error     string          `json:"error"`
	Backtrace json.RawMessage `json:"backtrace"`
	FailedAt  string          `json:"failed_at"`
	// FailedAtMs is Date.parse(failed_at), added by the script: NaN (null
	// here) if JS cannot parse what we wrote.
	FailedAtMs *float64 `json:"failedAtMs"`
}

func TestNodeResque_FailedEntryIsListedAndRetriedByNodeTooling(t *testing.T) {
	f := newFixture(t, 1)
	ctx := context.Background()

	// Enqueued by node-resque itself, so the retry's re-encoding can be
	// compared byte for byte with the original.
	var original string
	nodeQueue(t, f.keys.Namespace(), nil, &original, `
    const args = [{ buildId: 300, jobId: 7, blockedBy: "7", note: "<b>&</b> /x/ é" }];
    await queue.enqueue("builds", "start", args);
    return queue.encode("builds", "start", args);`)
	if got := f.rdb.LIndex(ctx, f.keys.Queue("builds"), 0).Val(); got != original {
		t.Fatalf("queue holds %q, node-resque encodes %q", got, original)
	}

	before := time.Now().Add(-2 * time.Second)
	reason := errors.New(`simulated failure for build 300: "quoted" <html> & /path/`)
	failed := collect(t, f, 1, func(context.Context, *queue.Job) queue.Outcome {
		return queue.Fail("TypeError", reason)
	})
	if string(failed[0].Raw) != original {
		t.Fatalf("failed job raw %s, want %s", failed[0].Raw, original)
	}

	// node-resque lists our entry, and retryAndRemoveFailed finds it by its
	// exact bytes (LREM of the JS re-serialisation).
	var res struct {
		Listed       []nodeFailure `json:"listed"`
		FailedAfter  int           `json:"failedAfter"`
		RetryOutcome any           `json:"retryOutcome"`
	}
	nodeQueue(t, f.keys.Namespace(), nil, &res, `
    const listed = await queue.failed(0, -1);
    for (const e of listed) {
      const ms = Date.parse(e.failed_at);
      e.failedAtMs = Number.isNaN(ms) ? null : ms;
    }
    const entries = await queue.failed(0, -1);
    const retryOutcome = entries.length === 1 ? await queue.retryAndRemoveFailed(entries[0]) : "not attempted";
    return { listed, failedAfter: await queue.failedCount(), retryOutcome };`)

	if len(res.Listed) != 1 {
		t.Fatalf("node-resque lists %d failed entries, want 1: %+v", len(res.Listed), res.Listed)
	}
	e := res.Listed[0]
	if e.Worker != f.opts.WorkerName+"-0" { // each slot is a resque worker of its own
		t.Errorf("worker %q, want %q", e.Worker, f.opts.WorkerName+"-0")
	}
	if strings.Count(e.Worker, ":") > 1 {
		t.Errorf("worker %q has more than one ':'; node-resque tools would mis-split it", e.Worker)
	}
	if e.Queue != "builds" || e.Payload.Class != "start" || e.Payload.Queue != "builds" {
		t.Errorf("queue %q payload.class %q payload.queue %q, want builds/start/builds", e.Queue, e.Payload.Class, e.Payload.Queue)
	}
	if len(e.Payload.Args) != 1 {
		t.Fatalf("payload.args has %d elements, want 1", len(e.Payload.Args))
	}
	var arg struct {
		BuildID int64  `json:"buildId"`
		JobID   int64  `json:"jobId"`
		Note    string `json:"note"`
	}
	if err := json.Unmarshal(e.Payload.Args[0], &arg); err != nil || arg.BuildID != 300 || arg.JobID != 7 || arg.Note != "<b>&</b> /x/ é" {
		t.Errorf("payload.args[0] = %s (%v), want build 300 / job 7 with its note", e.Payload.Args[0], err)
	}
	if e.Exception != "TypeError" || e.Error != reason.Error() {
		t.Errorf("exception %q error %q, want TypeError / %q", e.Exception, e.Error, reason.Error())
	}
	if e.FailedAtMs == nil {
		t.Errorf("failed_at %q does not parse as a JS date", e.FailedAt)
	} else {
		at := time.UnixMilli(int64(*e.FailedAtMs))
		if at.Before(before.Truncate(time.Second)) || at.After(time.Now().Add(2*time.Second)) {
			t.Errorf("failed_at %q parses to %v, not around the failure", e.FailedAt, at)
		}
	}

	if res.RetryOutcome != true {
		t.Fatalf("retryAndRemoveFailed returned %v, want true", res.RetryOutcome)
	}
	if res.FailedAfter != 0 {
		t.Fatalf("failed list holds %d entries after retryAndRemoveFailed, want 0", res.FailedAfter)
	}
	queued, err := f.rdb.LRange(ctx, f.keys.Queue("builds"), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(queued) != 1 || queued[0] != original {
		t.Fatalf("after retry the queue holds %q, want exactly the original enqueue %q", queued, original)
	}

	// And our consumer takes the retried job again.
	again := collect(t, f, 1, ack)
	if string(again[0].Raw) != original {
		t.Fatalf("retried job delivered as %s, want %s", again[0].Raw, original)
	}
	testbed.Eventually(t, 2*time.Second, "processed and failed stats", func() bool {
		return f.rdb.Get(ctx, f.keys.StatProcessed()).Val() == "1" && f.rdb.Get(ctx, f.keys.StatFailed()).Val() == "1"
	})
}

// checkNodeResqueSeesWorkers checks that node-resque's queue.workers() and
// queue.allWorkingOn() see a running consumer: every worker name it lists
// for us has at most one ':' and serves our queues, and while a handler is
// blocked on a job, allWorkingOn shows that job's payload.
//
// Every consumer slot registers as a resque worker, so node-resque's own
// tooling shows what each replica is working on.
func TestNodeResque_WorkersAndAllWorkingOnShowOurSlots(t *testing.T) {
	checkNodeResqueSeesWorkers(t, newFixture(t, 2))
}

func checkNodeResqueSeesWorkers(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	job := `{"class":"start","queue":"builds","args":[{"buildId":555,"jobId":5,"blockedBy":"5"}]}`
	f.enqueue(t, "builds", job)

	working := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	stopConsumer := f.run(t, queue.HandlerFunc(func(context.Context, *queue.Job) queue.Outcome {
		once.Do(func() { close(working) })
		<-release
		return queue.Done()
	}))
	var releaseOnce, stopOnce sync.Once
	stop := func() {
		releaseOnce.Do(func() { close(release) })
		stopOnce.Do(stopConsumer)
	}
	defer stop()
	select {
	case <-working:
	case <-time.After(10 * time.Second):
		t.Fatal("job not delivered")
	}

	var seen struct {
		Workers   map[string]*string         `json:"workers"`
		WorkingOn map[string]json.RawMessage `json:"workingOn"`
	}
	nodeQueue(t, f.keys.Namespace(), nil, &seen, `
    return { workers: await queue.workers(), workingOn: await queue.allWorkingOn() };`)

	members, err := f.rdb.SMembers(ctx, f.keys.Namespace()+":workers").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(members) == 0 || len(seen.Workers) == 0 {
		t.Fatalf("no resque workers registered (members %q, node-resque workers() %v)", members, seen.Workers)
	}
	wantQueues := strings.Join(f.opts.Queues, ",")
	var names []string
	for name, queues := range seen.Workers {
		names = append(names, name)
		if !strings.HasPrefix(name, strings.SplitN(f.opts.WorkerName, ":", 2)[0]) {
			t.Errorf("node-resque sees worker %q, not derived from our name %q (mis-split member?)", name, f.opts.WorkerName)
		}
		if strings.Count(name, ":") > 1 {
			t.Errorf("worker name %q has more than one ':'", name)
		}
		if queues == nil || *queues != wantQueues {
			t.Errorf("worker %q serves %v per node-resque, want %q", name, queues, wantQueues)
		}
	}
	for _, m := range members {
		name, _, ok := strings.Cut(m, ":"+wantQueues)
		if !ok || strings.Count(name, ":") > 1 {
			t.Errorf("workers member %q is not <name with at most one ':'>:%s", m, wantQueues)
		}
	}
	sort.Strings(names)

	var wantPayload, found any
	if err := json.Unmarshal([]byte(job), &wantPayload); err != nil {
		t.Fatal(err)
	}
	for name, raw := range seen.WorkingOn {
		if string(raw) == `"started"` {
			continue
		}
		var w struct {
			RunAt   string `json:"run_at"`
			Queue   string `json:"queue"`
			Worker  string `json:"worker"`
			Payload any    `json:"payload"`
		}
		if err := json.Unmarshal(raw, &w); err != nil {
			t.Errorf("allWorkingOn[%q] = %s: %v", name, raw, err)
			continue
		}
		if w.Queue != "builds" || w.Worker != name || w.RunAt == "" {
			t.Errorf("allWorkingOn[%q] = %s: want queue builds, worker %q and a run_at", name, raw, name)
		}
		if reflect.DeepEqual(w.Payload, wantPayload) {
			found = w.Payload
		}
	}
	if found == nil {
		t.Errorf("allWorkingOn does not show the in-flight job %s (workers %q): %v", job, names, seen.WorkingOn)
	}

	stop()
	// A clean stop deregisters: node-resque should see none of our workers.
	var after map[string]*string
	nodeQueue(t, f.keys.Namespace(), nil, &after, `return await queue.workers();`)
	if len(after) != 0 {
		t.Errorf("after a clean stop node-resque still lists workers %v", after)
	}
}

// A job node-resque schedules with enqueueIn (its Retry plugin and
// Screwdriver's BlockedBy both do) is moved by our mover when due and
// consumed, with node-resque's delayed bookkeeping cleaned up.
func TestNodeResque_EnqueueInIsMovedWhenDueAndConsumed(t *testing.T) {
	f := newFixture(t, 1)
	var ignored any
	start := time.Now()
	nodeQueue(t, f.keys.Namespace(), nil, &ignored, `
    await queue.enqueueIn(1500, "builds", "start", [{ buildId: 77, jobId: 7 }]);
    return null;`)
	jobs := collect(t, f, 1, ack)
	// node-resque rounds the due time to the nearest second and its
	// scheduler (like our mover) compares it with the rounded clock, so a
	// job delayed 1.5 s may run up to a second early, never sooner than 0.5 s.
	if took := time.Since(start); took < 500*time.Millisecond {
		t.Fatalf("a job delayed 1.5s ran after %v", took)
	}
	if string(jobs[0].Args[0]) != `{"buildId":77,"jobId":7}` {
		t.Fatalf("args %s", jobs[0].Args[0])
	}
	ctx := context.Background()
	if n := f.rdb.ZCard(ctx, f.keys.DelayedSchedule()).Val(); n != 0 {
		t.Fatalf("%d timestamps left in the delayed schedule", n)
	}
	if keys := f.rdb.Keys(ctx, f.keys.Namespace()+":timestamps:*").Val(); len(keys) != 0 {
		t.Fatalf("timestamps sets left: %v", keys)
	}
}
