package timeouts_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/sdkata/queue-worker/internal/ciapi"
	"github.com/sdkata/queue-worker/internal/gate"
	"github.com/sdkata/queue-worker/internal/testbed"
	"github.com/sdkata/queue-worker/internal/timeouts"
)

func TestJudge_QueueServiceRounding(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		elapsed time.Duration
		timeout int
		over    bool
	}{
		{"WithinTimeout", 60 * time.Minute, 90, false},
		{"AtTimeoutPlusBuffer", 91 * time.Minute, 90, false},
		{"RoundsHalfAMinuteUp", 91*time.Minute + 30*time.Second, 90, true},
		{"JustUnderHalfAMinute", 91*time.Minute + 29*time.Second, 90, false},
		{"WellOver", 3 * time.Hour, 90, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := timeouts.Judge(start, tt.timeout, time.Minute, start.Add(tt.elapsed))
			if v.Over != tt.over {
				t.Errorf("over %v (elapsed %d, limit %d), want %v", v.Over, v.Elapsed, v.Limit, tt.over)
			}
		})
	}
	if v := timeouts.Judge(time.Time{}, 90, time.Minute, start); v.Known || v.Over {
		t.Errorf("no start time: %+v", v)
	}
}

// fakePods records deletes and answers a build container start time.
type fakePods struct {
	mu      sync.Mutex
	stopped []int64
	started time.Time
}

func (p *fakePods) Stop(_ context.Context, id int64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopped = append(p.stopped, id)
	return nil
}

func (p *fakePods) BuildStartedAt(context.Context, int64) (time.Time, error) { return p.started, nil }

type marks struct{ n atomic.Int32 }

func (m *marks) MarkStopped(context.Context, int64) error { m.n.Add(1); return nil }

type bed struct {
	rdb    *redis.Client
	ns     string
	prefix string
	keys   gate.Keys
	ci     *testbed.FakeAPI
	pods   *fakePods
	marks  *marks
}

func newBed(t *testing.T) *bed {
	rdb, ns, prefix := testbed.Redis(t)
	return &bed{rdb: rdb, ns: ns, prefix: prefix, keys: gate.NewKeys(prefix), ci: testbed.FakeCIAPI(t), pods: &fakePods{}, marks: &marks{}}
}

func (b *bed) checker(t *testing.T, name string, now func() time.Time, interval time.Duration) *timeouts.Checker {
	reporter := ciapi.New(ciapi.Options{Timeout: 2 * time.Second, MaxAttempts: 1, DefaultAPI: b.ci.URL()}, nil, nil)
	return timeouts.New(timeouts.Deps{Redis: b.rdb, Reporter: reporter, Pods: b.pods, Marks: b.marks, Now: now},
		timeouts.Options{Prefix: b.prefix, Namespace: b.ns, Identity: name, Interval: interval, Buffer: time.Minute, Timeout: 2 * time.Second})
}

// running puts a started build in Redis as a start leaves it.
func (b *bed) running(t *testing.T, c *timeouts.Checker, build, job int64, timeout int) {
	t.Helper()
	ctx := context.Background()
	id := strconv.FormatInt(build, 10)
	b.rdb.HSet(ctx, b.keys.BuildConfigs(), id, `{"buildId":`+id+`,"apiUri":"`+b.ci.URL()+`","token":"jwt-`+id+`"}`)
	b.rdb.Set(ctx, b.keys.Running(job), id, time.Hour)
	b.rdb.Set(ctx, b.keys.LastRunning(job), id, time.Hour)
	if err := c.Record(ctx, build, job, timeout); err != nil {
		t.Fatal(err)
	}
}

// Two replicas find the same over-time build at once: it is failed once,
// as queue-service fails it (active step ended with code 3, FAILURE with
// its message), its state is cleared and its pods are deleted.
func TestChecker_FailsAnOverTimeBuildOnceWhicheverReplicaRunsIt(t *testing.T) {
	b := newBed(t)
	start := time.Now()
	later := func() time.Time { return start.Add(95 * time.Minute) }
	recorder := b.checker(t, "recorder", func() time.Time { return start }, time.Minute)
	build, job := 5_000_000+rand.Int64N(1_000_000), rand.Int64N(1_000_000)+1
	b.running(t, recorder, build, job, 90)
	// The first call is the active-step query (one replica makes it).
	b.ci.RespondNextFor(build, 1, testbed.CIResponse{Code: 200, Body: `[{"name":"sd-setup-scm","code":null},{"name":"test"}]`})

	a, c := b.checker(t, "a", later, time.Minute), b.checker(t, "b", later, time.Minute)
	var wg sync.WaitGroup
	results := make([]timeouts.Result, 2)
	for i, ch := range []*timeouts.Checker{a, c} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := ch.Pass(context.Background())
			if err != nil {
				t.Error(err)
			}
			results[i] = r
		}()
	}
	wg.Wait()
	if results[0].Failed+results[1].Failed != 1 {
		t.Fatalf("failed by the replicas: %+v", results)
	}
	var failures, steps int
	for _, r := range b.ci.RequestsFor(build) {
		switch {
		case r.Method == "PUT" && r.Path == "/v4/builds/"+strconv.FormatInt(build, 10):
			if r.Body["status"] != "FAILURE" || r.Body["statusMessage"] != "Build failed due to timeout" || r.Auth != "Bearer jwt-"+strconv.FormatInt(build, 10) {
				t.Errorf("build update %+v", r.Body)
			}
			failures++
		case r.Method == "PUT":
			if r.Path != "/v4/builds/"+strconv.FormatInt(build, 10)+"/steps/sd-setup-scm" || r.Body["code"] != float64(3) || r.Body["endTime"] == nil {
				t.Errorf("step update %s %+v", r.Path, r.Body)
			}
			steps++
		}
	}
	if failures != 1 || steps != 1 {
		t.Fatalf("%d FAILURE and %d step updates, want 1 and 1", failures, steps)
	}
	ctx := context.Background()
	id := strconv.FormatInt(build, 10)
	if b.rdb.HExists(ctx, b.keys.TimeoutConfigs(), id).Val() || b.rdb.HExists(ctx, b.keys.BuildConfigs(), id).Val() ||
		b.rdb.Exists(ctx, b.keys.Running(job), b.keys.LastRunning(job)).Val() != 0 {
		t.Error("the timed-out build's state is still in Redis")
	}
	if len(b.pods.stopped) != 1 || b.marks.n.Load() != 1 {
		t.Errorf("pods deleted for %v, stop marks %d", b.pods.stopped, b.marks.n.Load())
	}
	// A later pass finds nothing left to do.
	if r, err := a.Pass(ctx); err != nil || r.Failed != 0 {
		t.Fatalf("second pass %+v, %v", r, err)
	}
}

// The launcher's timer starts when the build container runs: a build whose
// image pull and init took 20 minutes is not failed 91 minutes after its
// start was recorded.
func TestChecker_CountsFromTheBuildContainerStart(t *testing.T) {
	b := newBed(t)
	start := time.Now()
	build, job := 5_000_000+rand.Int64N(1_000_000), rand.Int64N(1_000_000)+1
	b.running(t, b.checker(t, "recorder", func() time.Time { return start }, time.Minute), build, job, 90)
	b.pods.started = start.Add(20 * time.Minute)
	c := b.checker(t, "a", func() time.Time { return start.Add(95 * time.Minute) }, time.Minute)
	if r, err := c.Pass(context.Background()); err != nil || r.Failed != 0 {
		t.Fatalf("pass %+v, %v: a build that ran 75 minutes of 90 was failed", r, err)
	}
	c = b.checker(t, "a", func() time.Time { return start.Add(115 * time.Minute) }, time.Minute)
	if r, err := c.Pass(context.Background()); err != nil || r.Failed != 1 {
		t.Fatalf("pass %+v, %v: want the build failed after 95 minutes of running", r, err)
	}
}

// Entries of builds that finished (config gone) or no longer hold their
// job's running key are dropped, as queue-service's checker drops them.
func TestChecker_DropsEntriesOfBuildsNoLongerRunning(t *testing.T) {
	b := newBed(t)
	ctx := context.Background()
	now := time.Now()
	c := b.checker(t, "a", func() time.Time { return now }, time.Minute)
	job := rand.Int64N(1_000_000) + 1
	b.running(t, c, 101, job, 90)
	b.running(t, c, 102, job+1, 90)
	b.running(t, c, 103, job+2, 90)
	b.rdb.HDel(ctx, b.keys.BuildConfigs(), "101")           // finished
	b.rdb.Set(ctx, b.keys.Running(job+1), "999", time.Hour) // another build runs
	r, err := c.Pass(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Checked != 3 || r.Cleaned != 2 || r.Failed != 0 {
		t.Fatalf("pass %+v", r)
	}
	if got := b.rdb.HKeys(ctx, b.keys.TimeoutConfigs()).Val(); len(got) != 1 || got[0] != "103" {
		t.Fatalf("entries left %v, want [103]", got)
	}
}

// However many replicas run the checker, passes happen at most once per
// interval between them.
func TestChecker_PassesAtMostOncePerIntervalAcrossReplicas(t *testing.T) {
	b := newBed(t)
	const interval = time.Second
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var metrics []*timeouts.Metrics
	for i := range 3 {
		m := timeouts.NewMetrics(nil)
		metrics = append(metrics, m)
		reporter := ciapi.New(ciapi.Options{DefaultAPI: b.ci.URL()}, nil, nil)
		c := timeouts.New(timeouts.Deps{Redis: b.rdb, Reporter: reporter, Metrics: m},
			timeouts.Options{Prefix: b.prefix, Namespace: b.ns, Identity: "r" + strconv.Itoa(i), Interval: interval})
		wg.Add(1)
		go func() { defer wg.Done(); c.Run(ctx) }()
	}
	time.Sleep(3500 * time.Millisecond)
	cancel()
	wg.Wait()
	total := 0
	for _, m := range metrics {
		total += int(testutil.ToFloat64(m.Passes))
	}
	if total < 3 || total > 4 {
		t.Fatalf("%d passes in 3.5s across 3 replicas with a 1s interval, want 3 or 4", total)
	}
}
