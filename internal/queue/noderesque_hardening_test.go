package queue_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sdkata/queue-worker/internal/queue"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// queue-service runs node-resque's Scheduler, which moves a due delayed job
// with enqueue(job.queue, job.class, job.args): only class, queue and args
// survive. With our mover off and the real Scheduler moving our retries, the
// attempt count still grows to the retry limit and the job ends in the
// failed list.
func TestNodeResque_SchedulerMovesRetriesWithTheirAttempt(t *testing.T) {
	f := newFixture(t, 1)
	f.opts.SchedulerInterval = -1 // only node-resque's scheduler moves delayed jobs
	f.opts.Retry = queue.RetryPolicy{MaxRetries: 2, Delay: time.Second, Factor: 1}
	host, port, err := net.SplitHostPort(testbed.RedisAddr())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var attempts []int
	var raws []string
	stop := f.run(t, queue.HandlerFunc(func(_ context.Context, j *queue.Job) queue.Outcome {
		mu.Lock()
		attempts = append(attempts, j.Attempt)
		raws = append(raws, string(j.Raw))
		mu.Unlock()
		if len(j.Args) != 1 || string(j.Args[0]) != `{"buildId":8}` {
			t.Errorf("handler args %s (the marker must not show)", j.Args)
		}
		return queue.Retry(errors.New("apiserver unavailable"))
	}))
	defer stop()
	f.enqueue(t, "builds", `{"class":"start","queue":"builds","args":[{"buildId":8}]}`)

	var failed int
	nodeQueue(t, f.keys.Namespace(), map[string]any{"host": host, "port": port, "ms": 20000}, &failed, `
    const { Scheduler } = require("node-resque");
    const scheduler = new Scheduler({ timeout: 100, connection: {
      host: input.host, port: Number(input.port), namespace: process.env.QW_NAMESPACE } });
    scheduler.on("error", (e) => { console.error(e); process.exitCode = 1; });
    await scheduler.connect();
    scheduler.start();
    const deadline = Date.now() + input.ms;
    while (Date.now() < deadline && (await queue.failedCount()) < 1) {
      await new Promise((r) => setTimeout(r, 100));
    }
    await scheduler.end();
    return await queue.failedCount();`)
	mu.Lock()
	defer mu.Unlock()
	if failed != 1 || fmt.Sprint(attempts) != "[0 1 2]" {
		t.Fatalf("failed list %d, attempts %v, want 1 and [0 1 2]; jobs seen:\n%s", failed, attempts, strings.Join(raws, "\n"))
	}
	if want := `{"class":"start","queue":"builds","args":[{"buildId":8},{"queueWorkerAttempt":2}]}`; raws[2] != want {
		t.Fatalf("third attempt arrived as %s, want %s", raws[2], want)
	}
	e := readFailed(t, f.rdb, f.keys)[0]
	if !strings.Contains(e.Error, "gave up after 3 attempts") {
		t.Fatalf("failed entry error %q", e.Error)
	}
	// Without the marker: retried from the failed list, the job starts
	// again from its first attempt.
	if want := `{"class":"start","queue":"builds","args":[{"buildId":8}]}`; string(e.Payload) != want {
		t.Fatalf("failed entry payload %s, want %s", e.Payload, want)
	}
}

// Every kind of entry we now write (omitted payload, JS-lossy payload,
// redacted token, poison job) is listed by node-resque's failed(), removed
// and re-enqueued by its retryAndRemoveFailed(), and survives its
// retryStuckJobs() (which reads backtrace[1] of every entry, and so throws
// on a null backtrace).
func TestNodeResque_ToolingHandlesOurFailedEntries(t *testing.T) {
	f := newFixture(t, 1)
	ctx := context.Background()
	at := time.Now()
	entries := []queue.Failure{
		{Worker: "w:1-0", Queue: "builds", PayloadOmitted: "job of 62914560 bytes exceeds the limit of 1048576 bytes (queue.maxJobBytes); payload omitted from this entry",
			Exception: "JobTooLarge", Error: "job of 62914560 bytes exceeds the limit", FailedAt: at},
		{Worker: "w:1-0", Queue: "builds", Payload: []byte(`{"class":"start","queue":"builds","args":[{"buildId":3,"extra":1e999}]}`),
			Exception: "UnencodableJob", Error: "1e999", FailedAt: at},
		{Worker: "w:1-0", Queue: "builds", Payload: []byte(`{"class":"start","queue":"builds","args":[{"buildId":4,"token":"eyJsecret"}]}`),
			Exception: "PodRejected", Error: "forbidden", FailedAt: at},
		{Worker: "w:1-0", Queue: "builds", Payload: []byte(`{"class":"start","queue":"builds","args":[{"buildId":5}]}`),
			Exception: "PoisonJob", Error: "suspected poison job", FailedAt: at},
	}
	for _, e := range entries {
		f.rdb.RPush(ctx, f.keys.Failed(), e.Encode())
	}
	var res struct {
		Listed  int      `json:"listed"`
		Retried []bool   `json:"retried"`
		Stuck   string   `json:"stuck"`
		Left    int      `json:"left"`
		Queued  []string `json:"queued"`
	}
	nodeQueue(t, f.keys.Namespace(), nil, &res, `
    let stuck = "ok";
    try { await queue.retryStuckJobs(); } catch (e) { stuck = String(e); }
    const listed = await queue.failed(0, -1);
    const retried = [];
    for (const e of listed) retried.push(await queue.retryAndRemoveFailed(e));
    return { listed: listed.length, retried, stuck, left: await queue.failedCount(),
      queued: await queue.queued("builds", 0, -1).then((js) => js.map((j) => JSON.stringify(j))) };`)
	if res.Stuck != "ok" {
		t.Errorf("retryStuckJobs threw on our entries: %s", res.Stuck)
	}
	if res.Listed != len(entries) || res.Left != 0 || len(res.Retried) != len(entries) {
		t.Fatalf("node-resque listed %d, retried %v, left %d", res.Listed, res.Retried, res.Left)
	}
	want := []string{
		`{"class":"omitted","queue":"builds","args":[]}`,
		`{"class":"start","queue":"builds","args":[{"buildId":3,"extra":null}]}`,
		`{"class":"start","queue":"builds","args":[{"buildId":4,"token":"[redacted]"}]}`,
		`{"class":"start","queue":"builds","args":[{"buildId":5}]}`,
	}
	if strings.Join(res.Queued, "\n") != strings.Join(want, "\n") {
		t.Fatalf("re-enqueued\n%s\nwant\n%s", strings.Join(res.Queued, "\n"), strings.Join(want, "\n"))
	}
}
