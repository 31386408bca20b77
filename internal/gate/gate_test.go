package gate_test

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"reflect"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/gate"
	"github.com/sdkata/queue-worker/internal/testbed"
)

// state is what a job's keys hold before or after a decision.
type state struct {
	running string   // running_job_<job>
	last    string   // last_running_job_<job>
	waiting []string // waiting_job_<job>
	other   string   // running_job_<blocking job>
}

func newGate(t *testing.T) (*gate.Gate, *redis.Client) {
	t.Helper()
	rdb, _, prefix := testbed.Redis(t)
	return gate.New(gate.Deps{Redis: rdb}, gate.Options{Prefix: prefix, Timeout: 2 * time.Second}), rdb
}

// jobIDs are random so that concurrent test binaries on the shared Redis
// never meet (the keys carry only the test's prefix).
func jobIDs() (job, other int64) {
	job = 1_000_000 + rand.Int64N(1_000_000_000)
	return job, job + 1
}

func put(t *testing.T, rdb *redis.Client, k gate.Keys, job, other int64, s state) {
	t.Helper()
	ctx := context.Background()
	if s.running != "" {
		rdb.Set(ctx, k.Running(job), s.running, time.Hour)
	}
	if s.last != "" {
		rdb.Set(ctx, k.LastRunning(job), s.last, time.Hour)
	}
	for _, w := range s.waiting {
		rdb.RPush(ctx, k.Waiting(job), w)
	}
	if s.other != "" {
		rdb.Set(ctx, k.Running(other), s.other, time.Hour)
	}
}

func read(t *testing.T, rdb *redis.Client, k gate.Keys, job, other int64) state {
	t.Helper()
	ctx := context.Background()
	return state{
		running: rdb.Get(ctx, k.Running(job)).Val(),
		last:    rdb.Get(ctx, k.LastRunning(job)).Val(),
		waiting: rdb.LRange(ctx, k.Waiting(job), 0, -1).Val(),
		other:   rdb.Get(ctx, k.Running(other)).Val(),
	}
}

func TestGate_DecisionsFollowQueueServiceRules(t *testing.T) {
	const build = 500
	tests := []struct {
		name      string
		before    state
		blockedBy string // "self", "other", "both", ""
		bySelf    bool
		collapse  bool
		want      gate.Decision
		after     state
	}{
		{name: "NothingRunningStartsAndTakesTheRunningKey", blockedBy: "both", bySelf: true,
			want:  gate.Decision{Action: gate.Start, Reason: gate.ReasonReady},
			after: state{running: "500", last: "500"}},
		{name: "BlockedByARunningBuildOfABlockingJobWaits", blockedBy: "both", bySelf: true, before: state{other: "77"},
			want:  gate.Decision{Action: gate.Block, Reason: gate.ReasonBlockedByJobs, Blocking: []int64{77}},
			after: state{waiting: []string{"500"}, other: "77"}},
		{name: "BlockedAgainIsListedOnce", blockedBy: "other", before: state{other: "77", waiting: []string{"500"}},
			want:  gate.Decision{Action: gate.Block, Reason: gate.ReasonBlockedByJobs, Blocking: []int64{77}},
			after: state{waiting: []string{"500"}, other: "77"}},
		{name: "BlockedByItsOwnJobsRunningBuild", blockedBy: "self", bySelf: true, before: state{running: "499", last: "499"},
			want:  gate.Decision{Action: gate.Block, Reason: gate.ReasonBlockedBySelf, Blocking: []int64{499}},
			after: state{running: "499", last: "499", waiting: []string{"500"}}},
		{name: "NotBlockedByItsOwnJobWhenBlockedBySelfIsOff", blockedBy: "self", bySelf: false, before: state{running: "499", last: "499"},
			want:  gate.Decision{Action: gate.Start, Reason: gate.ReasonReady},
			after: state{running: "500", last: "500"}},
		{name: "NoBlockedByStillBlockedByItself", blockedBy: "", bySelf: true, before: state{running: "499"},
			want:  gate.Decision{Action: gate.Block, Reason: gate.ReasonBlockedBySelf, Blocking: []int64{499}},
			after: state{running: "499", waiting: []string{"500"}}},
		{name: "RetriedStartOfTheRunningBuildProceedsUnchanged", blockedBy: "both", bySelf: true, before: state{running: "500", last: "500", other: "77"},
			want:  gate.Decision{Action: gate.Start, Reason: gate.ReasonAlreadyRunning},
			after: state{running: "500", last: "500", other: "77"}},
		{name: "StartLeavesTheWaitingList", blockedBy: "both", bySelf: true, before: state{waiting: []string{"500"}},
			want:  gate.Decision{Action: gate.Start, Reason: gate.ReasonReady},
			after: state{running: "500", last: "500"}},
		{name: "CollapsedWhenANewerBuildWaits", blockedBy: "self", bySelf: true, collapse: true, before: state{running: "400", waiting: []string{"500", "502", "501"}},
			want:  gate.Decision{Action: gate.Collapse, Reason: gate.ReasonNewerBuildWaits, CollapsedTo: 502},
			after: state{running: "400", waiting: []string{"502", "501"}}},
		{name: "CollapsedWhenOlderThanTheLastStarted", blockedBy: "self", bySelf: true, collapse: true, before: state{last: "600"},
			want:  gate.Decision{Action: gate.Collapse, Reason: gate.ReasonOlderThanLast, CollapsedTo: 600},
			after: state{last: "600"}},
		{name: "NewestWaitingBuildIsNotCollapsedButStillBlocked", blockedBy: "self", bySelf: true, collapse: true, before: state{running: "400", waiting: []string{"499", "500"}},
			want:  gate.Decision{Action: gate.Block, Reason: gate.ReasonBlockedBySelf, Blocking: []int64{400}},
			after: state{running: "400", waiting: []string{"499", "500"}}},
		{name: "WithoutCollapseAnOlderBuildStillRuns", blockedBy: "self", bySelf: true, before: state{last: "600", waiting: []string{"700"}},
			want:  gate.Decision{Action: gate.Start, Reason: gate.ReasonReady},
			after: state{running: "500", last: "500", waiting: []string{"700"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, rdb := newGate(t)
			job, other := jobIDs()
			put(t, rdb, g.Keys(), job, other, tt.before)
			var by []int64
			switch tt.blockedBy {
			case "self":
				by = []int64{job}
			case "other":
				by = []int64{other}
			case "both":
				by = []int64{job, other}
			}
			r := gate.Request{BuildID: build, JobID: job, BlockedBy: by, BlockedBySelf: tt.bySelf, Collapse: tt.collapse, RunningTTL: 10 * time.Minute}
			peeked, err := g.Peek(context.Background(), r)
			if err != nil {
				t.Fatal(err)
			}
			if got := read(t, rdb, g.Keys(), job, other); !sameState(got, tt.before) {
				t.Fatalf("Peek wrote: %+v, was %+v", got, tt.before)
			}
			d, err := g.Decide(context.Background(), r)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(d, tt.want) || !reflect.DeepEqual(peeked, tt.want) {
				t.Errorf("decision %+v (peek %+v), want %+v", d, peeked, tt.want)
			}
			if got := read(t, rdb, g.Keys(), job, other); !sameState(got, tt.after) {
				t.Errorf("after: %+v, want %+v", got, tt.after)
			}
		})
	}
}

func sameState(a, b state) bool {
	return a.running == b.running && a.last == b.last && a.other == b.other && len(a.waiting) == len(b.waiting) &&
		(len(a.waiting) == 0 || reflect.DeepEqual(a.waiting, b.waiting))
}

// The running key expires after the build's TTL and the last-running key
// after twice that, as queue-service sets them.
func TestGate_StartSetsQueueServiceExpiries(t *testing.T) {
	g, rdb := newGate(t)
	job, _ := jobIDs()
	if _, err := g.Decide(context.Background(), gate.Request{BuildID: 9, JobID: job, RunningTTL: 150 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if ttl := rdb.TTL(ctx, g.Keys().Running(job)).Val(); ttl < 149*time.Minute || ttl > 150*time.Minute {
		t.Errorf("running key TTL %v, want 150m", ttl)
	}
	if ttl := rdb.TTL(ctx, g.Keys().LastRunning(job)).Val(); ttl < 299*time.Minute || ttl > 300*time.Minute {
		t.Errorf("last running key TTL %v, want 300m", ttl)
	}
}

// Release is queue-service's stop: the keys that name the build go, those
// naming another build stay.
func TestGate_ReleaseDropsOnlyWhatNamesTheBuild(t *testing.T) {
	tests := []struct {
		name   string
		before state
		held   bool
		after  state
	}{
		{"RunningBuild", state{running: "500", last: "500"}, true, state{}},
		{"WaitingBuild", state{running: "400", last: "400", waiting: []string{"500", "501"}}, false, state{running: "400", last: "400", waiting: []string{"501"}}},
		{"BuildThatLostTheKeys", state{running: "501", last: "501"}, false, state{running: "501", last: "501"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g, rdb := newGate(t)
			job, other := jobIDs()
			put(t, rdb, g.Keys(), job, other, tt.before)
			ctx := context.Background()
			rdb.HSet(ctx, g.Keys().BuildConfigs(), "500", "{}", "501", "{}")
			rdb.HSet(ctx, g.Keys().TimeoutConfigs(), "500", "{}")
			held, err := g.Release(ctx, 500, job, gate.CauseStop)
			if err != nil {
				t.Fatal(err)
			}
			if held != tt.held {
				t.Errorf("held %v, want %v", held, tt.held)
			}
			if got := read(t, rdb, g.Keys(), job, other); !sameState(got, tt.after) {
				t.Errorf("after: %+v, want %+v", got, tt.after)
			}
			if rdb.HExists(ctx, g.Keys().BuildConfigs(), "500").Val() || rdb.HExists(ctx, g.Keys().TimeoutConfigs(), "500").Val() {
				t.Error("the build's configs are still there")
			}
			if !rdb.HExists(ctx, g.Keys().BuildConfigs(), "501").Val() {
				t.Error("another build's config was dropped")
			}
		})
	}
}

func TestRequestFor_ReadsQueueServiceForms(t *testing.T) {
	policy := gate.Policy{BlockedBySelf: true, Collapse: true, BlockTimeout: 2 * time.Hour}
	tests := []struct {
		name        string
		blockedBy   string
		annotations map[string]any
		want        gate.Request
		wantErr     bool
	}{
		{name: "QueuedCommaString", blockedBy: `"678,679"`,
			want: gate.Request{BlockedBy: []int64{678, 679}, Collapse: true, RunningTTL: 2 * time.Hour}},
		{name: "StoredArray", blockedBy: `[678,"679"]`,
			want: gate.Request{BlockedBy: []int64{678, 679}, Collapse: true, RunningTTL: 2 * time.Hour}},
		{name: "AbsentBlocksOnlyBySelf", blockedBy: ``,
			want: gate.Request{Collapse: true, RunningTTL: 2 * time.Hour}},
		{name: "CollapseAnnotationOff", blockedBy: `"678"`, annotations: map[string]any{"screwdriver.cd/collapseBuilds": false},
			want: gate.Request{BlockedBy: []int64{678}, RunningTTL: 2 * time.Hour}},
		{name: "CollapseAnnotationAsString", blockedBy: `"678"`, annotations: map[string]any{"beta.screwdriver.cd/collapseBuilds": "false"},
			want: gate.Request{BlockedBy: []int64{678}, RunningTTL: 2 * time.Hour}},
		{name: "TimeoutAnnotationPlusThirtyMinutes", blockedBy: `"678"`, annotations: map[string]any{"screwdriver.cd/timeout": float64(300)},
			want: gate.Request{BlockedBy: []int64{678}, Collapse: true, RunningTTL: 330 * time.Minute}},
		{name: "TimeoutAnnotationParsedAsParseInt", blockedBy: `"678"`, annotations: map[string]any{"screwdriver.cd/timeout": "45min"},
			want: gate.Request{BlockedBy: []int64{678}, Collapse: true, RunningTTL: 75 * time.Minute}},
		{name: "NotAJobID", blockedBy: `"678,abc"`, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &build.Config{BuildID: 1, JobID: 678, Annotations: tt.annotations}
			if tt.blockedBy != "" {
				b.BlockedBy = json.RawMessage(tt.blockedBy)
			}
			got, err := gate.RequestFor(b, policy)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("no error for %s", tt.blockedBy)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.want.BuildID, tt.want.JobID, tt.want.BlockedBySelf = 1, 678, true
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestDecision_MessagesAreQueueServices(t *testing.T) {
	d := gate.Decision{Action: gate.Block, Blocking: []int64{12, 13}}
	if got, want := d.Message(), `Blocked by these running build(s): <a href="/builds/12">12</a>, <a href="/builds/13">13</a>`; got != want {
		t.Errorf("block message %q, want %q", got, want)
	}
	if got := (gate.Decision{Action: gate.Collapse, CollapsedTo: 14}).Message(); got != "Collapsed to build: 14" {
		t.Errorf("collapse message %q", got)
	}
}
