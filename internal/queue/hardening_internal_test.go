package queue

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/sdkata/queue-worker/internal/testbed"
)

// A panic anywhere in deliver, not only in the handler, neither kills the
// process nor loses the job: the job goes to the failed list with the panic
// as its reason and the slot goes on with the next job.
func TestConsumer_PanicAnywhereInDeliverDeadLettersTheJob(t *testing.T) {
	for _, stage := range []string{"check", "parse", "record", "handle", "settle", "settle-script"} {
		t.Run(stage, func(t *testing.T) {
			c, keys := newInternalConsumer(t, 1)
			ctx := context.Background()
			bad := `{"class":"start","queue":"builds","args":[{"buildId":1,"token":"t0ken"}]}`
			good := `{"class":"start","queue":"builds","args":[{"buildId":2}]}`
			c.rdb.RPush(ctx, keys.Queue("builds"), bad, good)
			// The first job to reach the stage (the bad one, first in the
			// queue, on the only slot) panics there.
			var once sync.Once
			h := func(s string) {
				if s == stage {
					once.Do(func() { panic("boom at " + stage) })
				}
			}
			deliverHook.Store(&h)
			t.Cleanup(func() { deliverHook.Store(nil) })
			var mu sync.Mutex
			var handled []string
			runInternal(t, c, HandlerFunc(func(_ context.Context, j *Job) Outcome {
				mu.Lock()
				handled = append(handled, string(j.Raw))
				mu.Unlock()
				return Done()
			}))
			testbed.Eventually(t, 10*time.Second, "the good job acked", func() bool {
				mu.Lock()
				defer mu.Unlock()
				return len(handled) > 0 && handled[len(handled)-1] == good && c.rdb.Get(ctx, keys.StatProcessed()).Val() != ""
			})
			testbed.Eventually(t, 5*time.Second, "a failed entry", func() bool { return c.rdb.LLen(ctx, keys.Failed()).Val() == 1 })
			entry := c.rdb.LIndex(ctx, keys.Failed(), 0).Val()
			var e struct {
				Payload   json.RawMessage `json:"payload"`
				Exception string          `json:"exception"`
				Error     string          `json:"error"`
			}
			if err := json.Unmarshal([]byte(entry), &e); err != nil {
				t.Fatalf("entry %s: %v", entry, err)
			}
			if e.Exception != "Panic" || !strings.Contains(e.Error, "boom at "+stage) || strings.Contains(entry, "t0ken") {
				t.Fatalf("entry %s", entry)
			}
			for _, name := range []string{c.slots[0].inflight} {
				testbed.Eventually(t, 5*time.Second, "nothing left in flight", func() bool { return c.rdb.LLen(ctx, name).Val() == 0 })
			}
			if n := c.rdb.LLen(ctx, keys.Queue("builds")).Val(); n != 0 {
				t.Fatalf("%d jobs queued", n)
			}
		})
	}
}

// The take-next variants take only under a live lease: a slot whose lease
// vanished (recovered elsewhere) or expired would otherwise hold a job a
// recoverer returns while it runs.
func TestTakeNext_OnlyUnderALiveLease(t *testing.T) {
	rdb, ns, _ := testbed.Redis(t)
	keys := NewKeys(ns)
	ctx := context.Background()
	s := newSlot("leasehost:1-0", "builds", keys, NewMetrics(nil))
	now := time.Now()
	tests := []struct {
		name     string
		deadline *time.Time
		want     int64
	}{
		{"NoLease", nil, tookNotLeased},
		{"ExpiredLease", ptr(now.Add(-time.Second)), tookNotLeased},
		{"LiveLease", ptr(now.Add(time.Minute)), tookJob},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb.Del(ctx, keys.Leases(), s.inflight, s.queueKey)
			if tt.deadline != nil {
				rdb.ZAdd(ctx, keys.Leases(), redis.Z{Score: float64(tt.deadline.UnixMilli()), Member: s.name})
			}
			rdb.RPush(ctx, s.inflight, "done")
			rdb.RPush(ctx, s.queueKey, "next")
			res, err := ackTakeScript.Run(ctx, rdb,
				[]string{s.inflight, s.queueKey, s.record, keys.StatProcessed(), keys.WorkerStatProcessed(s.name), keys.Leases()},
				"done", s.name, s.recordHead(now), s.recordTail).Slice()
			if err != nil {
				t.Fatal(err)
			}
			if n, _, _ := settleReply(res); n != 1 || res[2].(int64) != tt.want {
				t.Fatalf("reply %v, want the ack applied and took=%d", res, tt.want)
			}
			if got := rdb.LLen(ctx, s.queueKey).Val(); (got == 0) != (tt.want == tookJob) {
				t.Fatalf("queue holds %d after the settle", got)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// Delayed timestamps are written on Redis's clock, like the leases: a
// replica whose clock is an hour off still schedules a retry a second out.
func TestConsumer_DelayedTimestampComesFromRedisClock(t *testing.T) {
	c, keys := newInternalConsumer(t, 1)
	c.now = func() time.Time { return time.Now().Add(time.Hour) }
	ctx := context.Background()
	c.rdb.RPush(ctx, keys.Queue("builds"), `{"class":"start","queue":"builds","args":[{"buildId":1}]}`)
	done := make(chan struct{})
	var once sync.Once
	runInternal(t, c, HandlerFunc(func(context.Context, *Job) Outcome {
		once.Do(func() { close(done) })
		return Postpone(2*time.Second, "paused")
	}))
	<-done
	var ts []string
	testbed.Eventually(t, 5*time.Second, "delayed schedule written", func() bool {
		ts = c.rdb.ZRange(ctx, keys.DelayedSchedule(), 0, -1).Val()
		return len(ts) == 1
	})
	redisNow, err := c.rdb.Time(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	got, _ := strconv.ParseInt(ts[0], 10, 64)
	if d := got - redisNow.Unix(); d < 0 || d > 4 {
		t.Fatalf("delayed timestamp %d is %ds from Redis's clock, want about 2s", got, d)
	}
}

// The attempt rides inside args, in exactly the bytes node-resque's
// encode(queue, class, args) prints, and is read back (and hidden from the
// handler's Args).
func TestJob_AttemptTravelsInsideArgs(t *testing.T) {
	j, err := ParseJob([]byte(`{"class":"start","queue":"builds","args":[{"buildId":1}]}`), "builds")
	if err != nil {
		t.Fatal(err)
	}
	next, err := j.withAttempt(2)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"class":"start","queue":"builds","args":[{"buildId":1},{"queueWorkerAttempt":2}]}`; string(next) != want {
		t.Fatalf("next attempt %s, want %s", next, want)
	}
	back, err := ParseJob(next, "builds")
	if err != nil {
		t.Fatal(err)
	}
	if back.Attempt != 2 || len(back.Args) != 1 || string(back.Args[0]) != `{"buildId":1}` {
		t.Fatalf("parsed back attempt %d args %s", back.Attempt, back.Args)
	}
	again, _ := back.withAttempt(3)
	if want := `{"class":"start","queue":"builds","args":[{"buildId":1},{"queueWorkerAttempt":3}]}`; string(again) != want {
		t.Fatalf("third attempt %s", again)
	}
	// Jobs of the previous version carry a top-level attempt.
	old, err := ParseJob([]byte(`{"class":"start","queue":"builds","args":[{"buildId":1}],"attempt":1}`), "builds")
	if err != nil || old.Attempt != 1 {
		t.Fatalf("top-level attempt: %v %v", old, err)
	}
	for _, bad := range []string{`{"queueWorkerAttempt":-1}`, `{"queueWorkerAttempt":1.5}`, `{"queueWorkerAttempt":"2"}`} {
		if _, err := ParseJob([]byte(`{"class":"s","args":[1,`+bad+`]}`), "q"); !errors.Is(err, ErrMalformed) {
			t.Errorf("marker %s: %v, want ErrMalformed", bad, err)
		}
	}
	// Not a marker: kept as an argument.
	for _, arg := range []string{`{"queueWorkerAttempt":1,"x":2}`, `{"other":1}`} {
		j, err := ParseJob([]byte(`{"class":"s","args":[`+arg+`]}`), "q")
		if err != nil || len(j.Args) != 1 || j.Attempt != 0 {
			t.Errorf("args [%s]: %v %v", arg, j, err)
		}
	}
}
