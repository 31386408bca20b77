package worker_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/testbed/stack"
)

// reenqueue is the tests' re-enqueue wait: PLUGIN_BLOCKEDBY_REENQUEUE_WAIT_TIME
// of 0.05 minutes.
const reenqueue = 3 * time.Second

func gateStack(t *testing.T, env map[string]string) (*stack.Stack, testbed.QueueService) {
	t.Helper()
	e := map[string]string{"WEIGHT_K8S": "100", "PLUGIN_BLOCKEDBY_REENQUEUE_WAIT_TIME": "0.05"}
	for k, v := range env {
		e[k] = v
	}
	s := stack.Start(t, stack.Options{Env: e})
	return s, testbed.QueueService{Namespace: s.Keys.Namespace(), Prefix: s.Prefix, APIURI: s.APIURI}
}

// ids are random: queue-service's deleted_ keys carry no prefix, and tests
// of several binaries share the Redis.
func ids() int64 { return 10_000_000 + rand.Int64N(1_000_000_000)*100 }

func statusUpdates(s *stack.Stack, build int64, status string) []testbed.CIRequest {
	var out []testbed.CIRequest
	for _, r := range s.CI.RequestsFor(build) {
		if r.Body["status"] == status {
			out = append(out, r)
		}
	}
	return out
}

func waitStatus(t *testing.T, s *stack.Stack, build int64, status, msg string) testbed.CIRequest {
	t.Helper()
	var got testbed.CIRequest
	testbed.Eventually(t, 20*time.Second, "CI hears "+status+" for build "+strconv.FormatInt(build, 10), func() bool {
		for _, r := range statusUpdates(s, build, status) {
			if strings.Contains(r.Body["statusMessage"].(string), msg) {
				got = r
				return true
			}
		}
		return false
	})
	return got
}

func link(build int64) string {
	b := strconv.FormatInt(build, 10)
	return `<a href="/builds/` + b + `">` + b + `</a>`
}

func noPod(t *testing.T, s *stack.Stack, builds ...int64) {
	t.Helper()
	for _, b := range builds {
		if p := s.Pods(t, b); len(p) != 0 {
			t.Fatalf("build %d has a pod %s", b, p[0].Name)
		}
	}
}

// Two builds of job A, blocked by job B while B's build runs: both wait,
// the CI hears BLOCKED with the blocking build, no attempt is spent; one of
// them starts within one re-enqueue period after B's stop, and the other
// then waits for it (blocked by its own job).
func TestGate_BlockedBuildWaitsAndStartsAfterTheBlockerStops(t *testing.T) {
	s, qs := gateStack(t, nil)
	ctx := context.Background()
	base := ids()
	jobA, jobB := base+1, base+2
	b1 := testbed.QSBuild{BuildID: base + 10, JobID: jobB}
	qs.Start(t, b1)
	s.WaitPod(t, b1.BuildID)

	noCollapse := map[string]any{"screwdriver.cd/collapseBuilds": false}
	a1 := testbed.QSBuild{BuildID: base + 11, JobID: jobA, BlockedBy: []int64{jobA, jobB}, Annotations: noCollapse}
	a2 := testbed.QSBuild{BuildID: base + 12, JobID: jobA, BlockedBy: []int64{jobA, jobB}, Annotations: noCollapse}
	qs.Start(t, a1, a2)
	for _, a := range []testbed.QSBuild{a1, a2} {
		r := waitStatus(t, s, a.BuildID, "BLOCKED", "Blocked by these running build(s): "+link(b1.BuildID))
		if r.Auth != "Bearer jwt-"+strconv.FormatInt(a.BuildID, 10) {
			t.Errorf("BLOCKED sent with %q", r.Auth)
		}
	}
	waiting := s.Redis.LRange(ctx, s.Gate.Keys().Waiting(jobA), 0, -1).Val()
	slices.Sort(waiting)
	if want := []string{strconv.FormatInt(a1.BuildID, 10), strconv.FormatInt(a2.BuildID, 10)}; !slices.Equal(waiting, want) {
		t.Fatalf("waiting list of job A %v, want %v", waiting, want)
	}
	// Blocked starts sit in the delayed schedule, tried once a period: not
	// a busy loop, and never an attempt spent.
	time.Sleep(2*reenqueue + time.Second)
	noPod(t, s, a1.BuildID, a2.BuildID)
	for _, a := range []testbed.QSBuild{a1, a2} {
		if n := len(statusUpdates(s, a.BuildID, "BLOCKED")); n < 2 || n > 4 {
			t.Errorf("build %d was tried %d times in %v (one re-enqueue period is %v)", a.BuildID, n, 2*reenqueue+time.Second, reenqueue)
		}
	}
	if n := len(s.FailedEntries(t)); n != 0 {
		t.Fatalf("%d failed entries", n)
	}

	qs.Stop(t, b1)
	testbed.Eventually(t, 15*time.Second, "B's running key released", func() bool {
		return s.Redis.Exists(ctx, s.Gate.Keys().Running(jobB)).Val() == 0
	})
	released := time.Now()
	var first, second testbed.QSBuild
	testbed.Eventually(t, reenqueue+3*time.Second, "one of A's builds starts within one re-enqueue period", func() bool {
		switch {
		case len(s.Pods(t, a1.BuildID)) > 0:
			first, second = a1, a2
		case len(s.Pods(t, a2.BuildID)) > 0:
			first, second = a2, a1
		default:
			return false
		}
		return true
	})
	t.Logf("build %d started %v after B's stop released its key", first.BuildID, time.Since(released).Round(10*time.Millisecond))
	waitStatus(t, s, second.BuildID, "BLOCKED", "Blocked by these running build(s): "+link(first.BuildID))
	noPod(t, s, second.BuildID)

	qs.Stop(t, first)
	s.WaitPod(t, second.BuildID)
	if n := len(s.FailedEntries(t)); n != 0 {
		t.Fatalf("%d failed entries", n)
	}
}

// With blockedBySelf (the default) a build waits while another build of its
// own job runs, with no other job in its blockedBy.
func TestGate_BlockedByItselfUntilTheRunningBuildStops(t *testing.T) {
	s, qs := gateStack(t, nil)
	base := ids()
	a1 := testbed.QSBuild{BuildID: base + 1, JobID: base}
	a2 := testbed.QSBuild{BuildID: base + 2, JobID: base}
	qs.Start(t, a1)
	s.WaitPod(t, a1.BuildID)
	qs.Start(t, a2)
	waitStatus(t, s, a2.BuildID, "BLOCKED", link(a1.BuildID))
	noPod(t, s, a2.BuildID)
	qs.Stop(t, a1)
	testbed.Eventually(t, 10*time.Second+reenqueue, "a2 starts after a1's stop", func() bool { return len(s.Pods(t, a2.BuildID)) > 0 })
}

// Off, builds of one job run side by side (PLUGIN_BLOCKEDBY_BLOCKED_BY_SELF=false).
func TestGate_BlockedBySelfOffLetsBuildsOfAJobRunTogether(t *testing.T) {
	s, qs := gateStack(t, map[string]string{"PLUGIN_BLOCKEDBY_BLOCKED_BY_SELF": "false"})
	base := ids()
	qs.Start(t, testbed.QSBuild{BuildID: base + 1, JobID: base}, testbed.QSBuild{BuildID: base + 2, JobID: base})
	s.WaitPod(t, base+1)
	s.WaitPod(t, base+2)
}

// Three builds of a job wait while its build runs; with collapse (the
// default) only the newest runs after the stop, the two older ones are
// COLLAPSED into it and never get a pod.
func TestGate_CollapseOfThreeWaitingBuildsRunsTheNewest(t *testing.T) {
	s, qs := gateStack(t, nil)
	ctx := context.Background()
	base := ids()
	job := base
	a0 := testbed.QSBuild{BuildID: base + 10, JobID: job}
	qs.Start(t, a0)
	s.WaitPod(t, a0.BuildID)
	a1, a2, a3 := testbed.QSBuild{BuildID: base + 11, JobID: job}, testbed.QSBuild{BuildID: base + 12, JobID: job}, testbed.QSBuild{BuildID: base + 13, JobID: job}
	qs.Start(t, a1, a2, a3)
	waitStatus(t, s, a3.BuildID, "BLOCKED", link(a0.BuildID))
	qs.Stop(t, a0)
	s.WaitPod(t, a3.BuildID)
	for _, a := range []testbed.QSBuild{a1, a2} {
		waitStatus(t, s, a.BuildID, "COLLAPSED", "Collapsed to build: "+strconv.FormatInt(a3.BuildID, 10))
	}
	time.Sleep(reenqueue + time.Second)
	noPod(t, s, a1.BuildID, a2.BuildID)
	k := s.Gate.Keys()
	if got := s.Redis.Get(ctx, k.Running(job)).Val(); got != strconv.FormatInt(a3.BuildID, 10) {
		t.Errorf("running key %q, want %d", got, a3.BuildID)
	}
	if w := s.Redis.LRange(ctx, k.Waiting(job), 0, -1).Val(); len(w) != 0 {
		t.Errorf("waiting list %v, want empty", w)
	}
	for _, a := range []testbed.QSBuild{a1, a2} {
		if s.Redis.HExists(ctx, k.BuildConfigs(), strconv.FormatInt(a.BuildID, 10)).Val() {
			t.Errorf("collapsed build %d still has its buildConfigs entry", a.BuildID)
		}
	}
	if n := len(s.FailedEntries(t)); n != 0 {
		t.Fatalf("%d failed entries", n)
	}
}

// A blocked build aborted while it waits (queue-service's stop: deleted_
// mark and a stop job) never gets a pod, not even once its blocker is gone.
func TestGate_AbortedBlockedBuildNeverGetsAPod(t *testing.T) {
	s, qs := gateStack(t, nil)
	ctx := context.Background()
	base := ids()
	a0 := testbed.QSBuild{BuildID: base + 1, JobID: base}
	a1 := testbed.QSBuild{BuildID: base + 2, JobID: base}
	qs.Start(t, a0)
	s.WaitPod(t, a0.BuildID)
	qs.Start(t, a1)
	waitStatus(t, s, a1.BuildID, "BLOCKED", link(a0.BuildID))
	qs.Stop(t, a1)
	testbed.Eventually(t, 10*time.Second, "a1 out of the waiting list", func() bool {
		return s.Redis.LLen(ctx, s.Gate.Keys().Waiting(base)).Val() == 0
	})
	qs.Stop(t, a0)
	testbed.Eventually(t, 10*time.Second, "the job's running key released", func() bool {
		return s.Redis.Exists(ctx, s.Gate.Keys().Running(base)).Val() == 0
	})
	// a1's start comes back from the schedule after the stops: it is done
	// without a pod, not failed, and takes no running key.
	testbed.Eventually(t, 2*reenqueue+5*time.Second, "a1's start settled", func() bool {
		return s.Redis.ZCard(ctx, s.Keys.DelayedSchedule()).Val() == 0 &&
			s.Redis.LLen(ctx, s.Keys.Queue(s.Prefix+"builds")).Val() == 0
	})
	time.Sleep(time.Second)
	noPod(t, s, a1.BuildID)
	if n := s.Redis.Exists(ctx, s.Gate.Keys().Running(base)).Val(); n != 0 {
		t.Errorf("running key set after both stops: %q", s.Redis.Get(ctx, s.Gate.Keys().Running(base)).Val())
	}
	if n := len(s.FailedEntries(t)); n != 0 {
		t.Fatalf("%d failed entries", n)
	}
	if r := statusUpdates(s, a1.BuildID, "FAILURE"); len(r) != 0 {
		t.Fatalf("aborted build reported FAILURE: %+v", r)
	}
}

// The keys a start and a stop leave are queue-service's: names, values and
// expiries, for jobs its real producer (node-resque) enqueued.
func TestGate_KeysAreQueueServices(t *testing.T) {
	s, qs := gateStack(t, nil)
	ctx := context.Background()
	base := ids()
	job, other := base, base+1
	run := testbed.QSBuild{BuildID: base + 10, JobID: job, BlockedBy: []int64{job, other}}
	qs.Start(t, run)
	s.WaitPod(t, run.BuildID)
	id := strconv.FormatInt(run.BuildID, 10)
	p, jid := s.Prefix, strconv.FormatInt(job, 10)

	running := s.Redis.Get(ctx, p+"running_job_"+jid).Val()
	last := s.Redis.Get(ctx, "last_"+p+"running_job_"+jid).Val()
	if running != id || last != id {
		t.Fatalf("running_job_ %q last_ %q, want %s", running, last, id)
	}
	// No timeout annotation: blockTimeout (120 minutes), last running twice that.
	if ttl := s.Redis.TTL(ctx, p+"running_job_"+jid).Val(); ttl < 119*time.Minute || ttl > 120*time.Minute {
		t.Errorf("running key TTL %v, want 2h", ttl)
	}
	if ttl := s.Redis.TTL(ctx, "last_"+p+"running_job_"+jid).Val(); ttl < 239*time.Minute || ttl > 240*time.Minute {
		t.Errorf("last running key TTL %v, want 4h", ttl)
	}
	// The timeout config, in queue-service's field order and time format,
	// written once the pod exists.
	var tc string
	testbed.Eventually(t, 5*time.Second, "timeoutConfigs entry", func() bool {
		tc = s.Redis.HGet(ctx, p+"timeoutConfigs", id).Val()
		return tc != ""
	})
	if !regexp.MustCompile(`^\{"jobId":` + jid + `,"startTime":"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z","timeout":90\}$`).MatchString(tc) {
		t.Errorf("timeoutConfigs entry %s", tc)
	}

	blocked := testbed.QSBuild{BuildID: base + 11, JobID: job}
	qs.Start(t, blocked)
	waitStatus(t, s, blocked.BuildID, "BLOCKED", link(run.BuildID))
	if w := s.Redis.LRange(ctx, p+"waiting_job_"+jid, 0, -1).Val(); !slices.Equal(w, []string{strconv.FormatInt(blocked.BuildID, 10)}) {
		t.Errorf("waiting_job_ %v", w)
	}

	qs.Stop(t, run)
	testbed.Eventually(t, 10*time.Second, "stop released the build", func() bool {
		return s.Redis.Exists(ctx, p+"running_job_"+jid, "last_"+p+"running_job_"+jid).Val() == 0 &&
			!s.Redis.HExists(ctx, p+"buildConfigs", id).Val() && !s.Redis.HExists(ctx, p+"timeoutConfigs", id).Val()
	})
	// queue-service's abort mark stays until it expires.
	if v, err := s.Redis.Get(ctx, "deleted_"+jid+"_"+id).Result(); err != nil || v != "" {
		t.Errorf("deleted_ mark %q, %v", v, err)
	}
	// The waiting build takes over the keys within a period.
	testbed.Eventually(t, reenqueue+5*time.Second, "the waiting build starts", func() bool {
		return s.Redis.Get(ctx, p+"running_job_"+jid).Val() == strconv.FormatInt(blocked.BuildID, 10)
	})
	s.WaitPod(t, blocked.BuildID)
}

// A start retried from the failed list carries "[redacted]" for its token:
// it fails at once saying so, and nothing is sent with that token.
func TestWorker_StartWithARedactedTokenFailsSayingSo(t *testing.T) {
	s, _ := gateStack(t, nil)
	s.Push(t, `{"class":"start","queue":"`+s.Prefix+`builds","args":[{"buildId":4401,"jobId":44010,"container":"node:18","apiUri":"`+s.APIURI+`","token":"[redacted]"}]}`)
	var entries []map[string]any
	testbed.Eventually(t, 10*time.Second, "start in the failed list", func() bool {
		entries = s.FailedEntries(t)
		return len(entries) == 1
	})
	if entries[0]["exception"] != "TokenRedacted" || !strings.Contains(entries[0]["error"].(string), "put the build's token back") {
		t.Fatalf("failed entry %v", entries[0])
	}
	time.Sleep(500 * time.Millisecond)
	if r := s.CI.RequestsFor(4401); len(r) != 0 {
		t.Fatalf("CI calls with a redacted token: %+v", r)
	}
	noPod(t, s, 4401)
}

// A clear job from the cache queue removes the scope's directory under the
// disk cache path, and is acked either way (refused, or not disk).
func TestWorker_ClearRemovesTheDiskCacheOfTheScope(t *testing.T) {
	cache := t.TempDir()
	for _, d := range []string{"pipelines/42/f", "jobs/42/678/f", "jobs/42/679/f"} {
		if err := os.MkdirAll(filepath.Join(cache, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	s := stack.Start(t, stack.Options{CacheQueue: true, Env: map[string]string{"CACHE_STRATEGY": "disk", "CACHE_PATH": cache}})
	ctx := context.Background()
	q := s.Prefix + "cache"
	for _, args := range []string{
		`{"resource":"caches","action":"delete","prefix":"","scope":"jobs","id":678,"pipelineId":42,"buildClusters":["c1"]}`,
		`{"resource":"caches","action":"delete","prefix":"","scope":"pipelines","id":42,"pipelineId":42,"buildClusters":["c1"]}`,
		`{"resource":"caches","action":"delete","prefix":"..","scope":"pipelines","id":42,"pipelineId":1}`,
	} {
		if err := s.Redis.RPush(ctx, s.Keys.Queue(q), `{"class":"clear","queue":"`+q+`","args":[`+args+`]}`).Err(); err != nil {
			t.Fatal(err)
		}
	}
	testbed.Eventually(t, 10*time.Second, "three clear jobs acked", func() bool {
		return s.Redis.Get(ctx, s.Keys.StatProcessed()).Val() == "3"
	})
	for d, want := range map[string]bool{"pipelines/42": false, "jobs/42/678": false, "jobs/42/679": true} {
		_, err := os.Stat(filepath.Join(cache, d))
		if (err == nil) != want {
			t.Errorf("%s exists %v, want %v", d, err == nil, want)
		}
	}
	if _, err := os.Stat(cache); err != nil {
		t.Fatalf("the cache path itself is gone: %v", err)
	}
	if n := len(s.FailedEntries(t)); n != 0 {
		t.Fatalf("%d failed entries", n)
	}
}
