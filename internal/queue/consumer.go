package queue

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Handler works one job and says how it went; the consumer settles it
// (see Outcome). A panic in Handle fails that job, not the process.
type Handler interface {
	Handle(ctx context.Context, job *Job) Outcome
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, job *Job) Outcome

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, job *Job) Outcome { return f(ctx, job) }

// RetryPolicy is the exponential backoff of failed attempts.
type RetryPolicy struct {
	// MaxRetries is how many times a failed job is re-queued before it goes
	// to the failed list (the reference reprocesses 3 times).
	MaxRetries int
	// Delay is the first retry's delay; each later one is Factor times longer,
	// capped at MaxDelay.
	Delay    time.Duration
	Factor   float64
	MaxDelay time.Duration
}

// backoff is the delay before retry number attempt (1-based).
func (p RetryPolicy) backoff(attempt int) time.Duration {
	d := float64(p.Delay) * math.Pow(p.Factor, float64(attempt-1))
	if p.MaxDelay > 0 && d > float64(p.MaxDelay) {
		return p.MaxDelay
	}
	return time.Duration(d)
}

// Options configure a Consumer. Zero durations take the documented defaults.
type Options struct {
	// Queues are full queue names (prefix included), e.g. "builds".
	Queues []string
	// Concurrency is the number of slots; slots are spread over the queues
	// round-robin, so it must be at least len(Queues).
	Concurrency int
	// WorkerName identifies this process: "host:pid". Slot i registers in
	// resque's tooling as "<WorkerName>-<i>" (node-resque splits worker
	// names on ':', so the name keeps exactly one).
	WorkerName string
	// BlockTimeout bounds one blocking take (whole seconds, ≥1s).
	BlockTimeout time.Duration
	// OperationTimeout bounds every non-blocking Redis call.
	OperationTimeout time.Duration
	// DeadLetterNotices name, per job class, the class of a notice job
	// queued with the failed entry of a job the handler never finished (a
	// poison job), as ReportDeadLetter does for a handled one (see
	// RecovererOptions.Notices).
	DeadLetterNotices map[string]string
	// JobTimeout is the longest a handler may take with one job (default
	// 5m): the handler's own calls are each bounded, so one that runs longer
	// is taken for a wedged slot and fails liveness (Live). It does not cut
	// the handler off.
	JobTimeout time.Duration
	// WedgeMargin is added to every step's bound before it counts as a
	// wedge (default 30s): scheduling delays and GC pauses on a loaded node
	// must not read as one.
	WedgeMargin time.Duration
	// DrainTimeout is how long in-flight jobs may keep running after Run's
	// context is cancelled; then their context is cancelled too.
	DrainTimeout time.Duration
	// LeaseDuration is how long a slot's claim on its job outlives its last
	// heartbeat (default 30s). HeartbeatInterval defaults to a third of it.
	LeaseDuration     time.Duration
	HeartbeatInterval time.Duration
	// RecoverInterval is how often expired leases are looked for (default
	// half the lease). A negative value disables the recoverer.
	RecoverInterval time.Duration
	// SchedulerInterval is how often due delayed jobs are moved (default
	// 500ms). A negative value disables the mover.
	SchedulerInterval time.Duration
	Retry             RetryPolicy
	// MaxJobBytes and MaxJobDepth are the limits at the door (see Limits):
	// a job beyond them goes to the failed list unparsed, its payload
	// omitted. Zero takes DefaultLimits.
	MaxJobBytes int
	MaxJobDepth int
	// MaxRecoveries is how many times a job may be returned from dead slots
	// (their lease ran out while they held it) before the recoverer
	// dead-letters it as a suspected poison job (default 3).
	MaxRecoveries int
	// FenceMargin: a slot stops acting on its job (cancels the job's
	// context and leaves the settle to the recoverer) once its last
	// confirmed heartbeat is older than LeaseDuration - FenceMargin, so it
	// never acts past its lease. Default a sixth of the lease.
	FenceMargin time.Duration
	// Classes are the job classes the handler knows; others are counted
	// under class "other" so metric labels stay bounded.
	Classes []string
}

func (o *Options) defaults() {
	if o.JobTimeout == 0 {
		o.JobTimeout = 5 * time.Minute
	}
	if o.WedgeMargin == 0 {
		o.WedgeMargin = 30 * time.Second
	}
	if o.LeaseDuration == 0 {
		o.LeaseDuration = 30 * time.Second
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = o.LeaseDuration / 3
	}
	if o.RecoverInterval == 0 {
		o.RecoverInterval = o.LeaseDuration / 2
	}
	if o.SchedulerInterval == 0 {
		o.SchedulerInterval = 500 * time.Millisecond
	}
	if o.FenceMargin == 0 {
		o.FenceMargin = o.LeaseDuration / 6
	}
	if o.MaxRecoveries == 0 {
		o.MaxRecoveries = defaultMaxRecoveries
	}
	if o.Retry.Factor == 0 {
		o.Retry.Factor = 2
	}
	if o.Retry.Delay == 0 {
		o.Retry.Delay = 5 * time.Second
	}
}

// Consumer takes resque jobs and hands them to a Handler.
type Consumer struct {
	rdb     redis.UniversalClient
	keys    Keys
	opts    Options
	log     *zap.Logger
	metrics *Metrics
	now     func() time.Time
	slots   []*slot
	jobs    jobMetrics
	limits  Limits
	// epoch and lastBeat measure the age of the leases on the monotonic
	// clock: lastBeat is when (since epoch) the last heartbeat that
	// succeeded was sent, so every lease runs at least LeaseDuration past it.
	epoch    time.Time
	lastBeat atomic.Int64
	// beatWatch is the heartbeat loop's step, for liveness.
	beatWatch watch
}

// Deps are what a Consumer works with.
type Deps struct {
	Redis redis.UniversalClient
	Keys  Keys
	Log   *zap.Logger
	// Metrics may be nil (collectors not registered anywhere).
	Metrics *Metrics
}

// NewConsumer returns a consumer of opts.Queues.
func NewConsumer(deps Deps, opts Options) (*Consumer, error) {
	rdb, keys, log, metrics := deps.Redis, deps.Keys, deps.Log, deps.Metrics
	opts.defaults()
	if len(opts.Queues) == 0 {
		return nil, errors.New("queue consumer: no queues to consume")
	}
	if opts.Concurrency < len(opts.Queues) {
		return nil, fmt.Errorf("queue consumer: concurrency %d is below the number of queues %d", opts.Concurrency, len(opts.Queues))
	}
	if opts.BlockTimeout < time.Second || opts.OperationTimeout <= 0 {
		// go-redis sends blocking timeouts in whole seconds.
		return nil, errors.New("queue consumer: block timeout must be at least 1s and the operation timeout positive")
	}
	if opts.HeartbeatInterval >= opts.LeaseDuration {
		return nil, fmt.Errorf("queue consumer: heartbeat interval %v must be shorter than the lease %v", opts.HeartbeatInterval, opts.LeaseDuration)
	}
	if opts.FenceMargin < 0 || opts.HeartbeatInterval >= opts.LeaseDuration-opts.FenceMargin {
		return nil, fmt.Errorf("queue consumer: the heartbeat interval %v must be shorter than the lease %v minus the fence margin %v", opts.HeartbeatInterval, opts.LeaseDuration, opts.FenceMargin)
	}
	if opts.MaxRecoveries < 1 {
		return nil, fmt.Errorf("queue consumer: max recoveries must be at least 1, got %d", opts.MaxRecoveries)
	}
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	c := &Consumer{rdb: rdb, keys: keys, opts: opts, log: log, metrics: metrics, now: time.Now,
		jobs:   newJobMetrics(metrics, opts.Classes),
		limits: Limits{MaxJobBytes: opts.MaxJobBytes, MaxJobDepth: opts.MaxJobDepth}.withDefaults(),
		epoch:  time.Now()}
	for i := range opts.Concurrency {
		name := opts.WorkerName + "-" + strconv.Itoa(i)
		q := opts.Queues[i%len(opts.Queues)]
		c.slots = append(c.slots, newSlot(name, q, keys, metrics))
	}
	return c, nil
}

// slot is one concurrent taker with its own in-flight list and lease.
type slot struct {
	name     string // resque worker name
	queue    string
	queueKey string // <ns>:queue:<queue>
	inflight string
	record   string // resque's <ns>:worker:<name>:<queue>
	// recordTail is the worker record's text after the payload.
	recordTail string
	m          slotMetrics
	// cancelJob cancels the job in progress when the lease is found lost or
	// cannot be confirmed in time; fenced then says the delivery must not
	// settle (the recoverer owns the job, or the slot's sweep returns it).
	mu        sync.Mutex
	cancelJob context.CancelFunc
	fenced    bool
	// dirty is set when a settle could not be written: the slot's in-flight
	// list may hold a job its (live) lease hides from recoverers, so the slot
	// returns it to the queue before taking anything else.
	dirty atomic.Bool
	// needLease is set when the slot's lease was recovered elsewhere: it
	// re-leases itself before taking again, or recoverers would treat its
	// next job as an orphan.
	needLease atomic.Bool
	// watch is the slot's current step, for liveness (see Live).
	watch watch
}

// slotMetrics are the slot's queue-labelled counters, looked up once.
type slotMetrics struct {
	taken, acked, retried, postponed, deadLettered prometheus.Counter
}

func newSlot(name, queue string, keys Keys, m *Metrics) *slot {
	return &slot{
		name: name, queue: queue, queueKey: keys.Queue(queue),
		inflight: keys.InFlight(name), record: keys.Worker(name, queue),
		recordTail: string(appendJSString([]byte(`,"worker":`), name)) + "}",
		m: slotMetrics{
			taken:        m.Taken.WithLabelValues(queue),
			acked:        m.Acked.WithLabelValues(queue),
			retried:      m.Retried.WithLabelValues(queue),
			postponed:    m.Postponed.WithLabelValues(queue),
			deadLettered: m.DeadLettered.WithLabelValues(queue),
		},
	}
}

// recordHead is the worker record's text before the payload: the layout
// node-resque's worker writes ({"run_at","queue","payload","worker"}).
func (s *slot) recordHead(now time.Time) string {
	v := make([]byte, 0, 112+len(s.queue))
	v = append(v, `{"run_at":`...)
	v = appendJSString(v, jsDate(now))
	v = append(v, `,"queue":`...)
	v = appendJSString(v, s.queue)
	v = append(v, `,"payload":`...)
	return string(v)
}

func (s *slot) member() string { return s.name + ":" + s.queue }

// begin marks the slot as holding a job whose context cancel cancels.
func (s *slot) begin(cancel context.CancelFunc) {
	s.mu.Lock()
	s.cancelJob, s.fenced = cancel, false
	s.mu.Unlock()
}

// end marks the slot idle again and says whether the delivery was fenced.
func (s *slot) end() (fenced bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cancelJob = nil
	return s.fenced
}

// busy says whether the slot holds a job.
func (s *slot) busy() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cancelJob != nil
}

// fence makes the slot stop acting on the job it holds, if any: the job's
// context is cancelled and its outcome will not be settled. The slot then
// sweeps its in-flight list (the job is still there unless a recoverer
// returned it) and re-leases before taking again. It reports whether a job
// was fenced now.
func (s *slot) fence() bool {
	s.needLease.Store(true)
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cancelJob == nil || s.fenced {
		return false
	}
	s.fenced = true
	s.dirty.Store(true)
	s.cancelJob()
	return true
}

// Run takes and hands over jobs until ctx is cancelled, then lets jobs in
// progress finish for up to DrainTimeout, returns what is left to its queue
// and unregisters. It also runs the heartbeat and the fence, and unless
// disabled the recoverer and the delayed-job mover, all stopped before it
// returns.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	bg := context.WithoutCancel(ctx)
	// A previous process with the same name (a restarted container keeps its
	// hostname and often PID 1) may have left jobs in our in-flight lists.
	for _, s := range c.slots {
		if err := c.requeueLeftovers(bg, s); err != nil {
			return fmt.Errorf("returning leftover in-flight jobs of %s: %w", s.name, err)
		}
	}
	if err := c.heartbeat(bg, true); err != nil {
		return fmt.Errorf("registering worker slots: %w", err)
	}

	// The heartbeat must outlive the drain: a draining job keeps its lease.
	hbCtx, stopHB := context.WithCancel(bg)
	var bgWG sync.WaitGroup
	bgWG.Add(2)
	go func() { defer bgWG.Done(); c.heartbeatLoop(hbCtx) }()
	go func() { defer bgWG.Done(); c.fenceLoop(hbCtx) }()
	if c.opts.RecoverInterval > 0 {
		r := NewRecoverer(Deps{Redis: c.rdb, Keys: c.keys, Log: c.log, Metrics: c.metrics}, RecovererOptions{
			Fallback: c.opts.Queues[0], OperationTimeout: c.opts.OperationTimeout,
			MaxRecoveries: c.opts.MaxRecoveries, Limits: c.limits, Notices: c.opts.DeadLetterNotices,
		})
		bgWG.Add(1)
		go func() { defer bgWG.Done(); r.Run(ctx, c.opts.RecoverInterval) }()
	}
	if c.opts.SchedulerInterval > 0 {
		m := NewMover(c.rdb, c.keys, c.opts.Queues[0], c.opts.OperationTimeout, c.log, c.metrics)
		bgWG.Add(1)
		go func() { defer bgWG.Done(); m.Run(ctx, c.opts.SchedulerInterval) }()
	}

	// workCtx outlives ctx by the drain timeout, so a SIGTERM stops taking
	// without cutting off a pod create half-way.
	workCtx, cancelWork := context.WithCancel(bg)
	defer cancelWork()
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.NewTimer(c.opts.DrainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelWork()
		case <-workCtx.Done():
		}
	})
	defer stopDrain()

	var wg sync.WaitGroup
	for _, s := range c.slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.runSlot(ctx, workCtx, s, h)
		}()
	}
	wg.Wait()
	// A slot whose last settle or take failed may still hold a job: return it
	// now rather than after a whole lease.
	for _, s := range c.slots {
		if s.dirty.Load() {
			if err := c.requeueLeftovers(bg, s); err != nil {
				c.log.Warn("returning a leftover job at exit failed; it returns when the lease expires", zap.String("slot", s.name), zap.Error(err))
			}
		}
	}
	stopHB()
	bgWG.Wait()
	c.unregister(bg)
	return nil
}

func (c *Consumer) runSlot(ctx, workCtx context.Context, s *slot, h Handler) {
	backoff := newBackoff(100*time.Millisecond, 5*time.Second)
	defer s.watch.enter(stepIdle, c.now(), 0)
	// next is a job the last settle already moved into our in-flight list
	// (and recorded in the worker record), in the same script.
	var next string
	var haveNext bool
	for {
		c.enter(&s.watch, stepLoop)
		if haveNext {
			raw := next
			next, haveNext = "", false
			if ctx.Err() != nil {
				// Stopped: the prefetched job goes straight back.
				c.giveBack(s, raw)
				break
			}
			next, haveNext = c.deliver(ctx, workCtx, s, raw, true, h)
			continue
		}
		if ctx.Err() != nil {
			break
		}
		if s.dirty.Load() {
			if err := c.requeueLeftovers(ctx, s); err != nil {
				c.metrics.RedisErrors.WithLabelValues("requeue").Inc()
				c.log.Warn("returning an unsettled job to its queue failed; retrying before taking more", zap.String("slot", s.name), zap.Error(err))
				sleepCtx(ctx, backoff.next())
				continue
			}
			s.dirty.Store(false)
		}
		// A take needs a live lease: one the heartbeat confirmed recently
		// enough that it outlasts the job's start, and that no recoverer
		// took away.
		if s.needLease.Load() || c.stale() {
			if err := c.heartbeat(ctx, false); err != nil {
				c.metrics.RedisErrors.WithLabelValues("heartbeat").Inc()
				sleepCtx(ctx, backoff.next())
				continue
			}
			s.needLease.Store(false)
		}
		c.enter(&s.watch, stepTake)
		raw, err := c.rdb.BLMove(ctx, s.queueKey, s.inflight, "LEFT", "RIGHT", c.opts.BlockTimeout).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			// The move may have happened with only its reply lost (a
			// connection cut mid-BLMOVE): the job would sit in our in-flight
			// list, hidden from recoverers by our live lease. Sweep it back
			// before taking again.
			s.dirty.Store(true)
			if ctx.Err() != nil {
				break
			}
			c.metrics.RedisErrors.WithLabelValues("take").Inc()
			c.log.Warn("taking a job failed; backing off", zap.String("queue", s.queue), zap.Error(err))
			sleepCtx(ctx, backoff.next())
			continue
		}
		backoff.reset()
		s.m.taken.Inc()
		c.metrics.InFlight.Inc()
		if ctx.Err() != nil {
			// Stopped while the move was in flight: give the job straight back.
			c.giveBack(s, raw)
			break
		}
		next, haveNext = c.deliver(ctx, workCtx, s, raw, false, h)
	}
}

// deliverHook, when set (by tests), is called at each stage of deliver:
// "check", "parse", "record", "handle", "settle".
var deliverHook atomic.Pointer[func(stage string)]

func hook(stage string) {
	if f := deliverHook.Load(); f != nil {
		(*f)(stage)
	}
}

// deliver hands one in-flight job to h and settles the outcome. recorded
// says the worker record already holds it (written by the settle script that
// took it). It returns the next job if the job's settle took one (only while
// takeCtx is live).
//
// Nothing in here may kill the process: the job is untrusted input. It is
// held to the limits before anything decodes it (a recursive decoder would
// overflow the stack, which recover cannot catch), and a panic anywhere in
// here dead-letters the job rather than losing it or crashing.
func (c *Consumer) deliver(takeCtx, ctx context.Context, s *slot, raw string, recorded bool, h Handler) (next string, haveNext bool) {
	jobCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.begin(cancel)
	d := &delivery{c: c, slot: s, raw: raw, takenAt: c.now(), takeCtx: takeCtx}
	defer func() {
		fenced := s.end()
		if r := recover(); r != nil {
			next, haveNext = c.afterPanic(d, r)
			return
		}
		if fenced && !d.settled {
			// The lease could not be confirmed in time (or was recovered):
			// the job is not ours to settle any more. It is still in our
			// in-flight list unless a recoverer returned it; the slot's
			// sweep returns it if so, once Redis answers again.
			c.metrics.InFlight.Dec()
			c.log.Warn("job abandoned unsettled: the slot's lease could not be confirmed before it ran out",
				zap.String("slot", s.name), zap.String("class", d.class()))
		}
	}()
	if c.stale() {
		// The lease may be gone already: do not even start.
		c.fenceAll()
	}

	hook("check")
	if rej := c.limits.check(raw); rej != nil {
		d.Job = &Job{Queue: s.queue} // no copy of a job that may be huge
		c.metrics.Rejected.WithLabelValues(rej.Label).Inc()
		c.settleFailure(jobCtx, d, Failure{
			Worker: s.name, Queue: s.queue, PayloadOmitted: rej.Reason,
			Exception: rej.Exception, Error: rej.Reason, FailedAt: c.now(),
		}, "other")
		return d.next, d.haveNext
	}
	hook("parse")
	job, err := ParseJob([]byte(raw), s.queue)
	hook("record")
	c.recordWorkingOn(ctx, s, raw, recorded, err == nil)
	if err != nil {
		// Nothing can make a malformed envelope succeed: dead-letter it with
		// the reason instead of retrying or dropping it.
		d.Job = &Job{Queue: s.queue, Raw: []byte(raw)}
		c.settle(jobCtx, d, Fail("MalformedJob", err), "other")
		return d.next, d.haveNext
	}
	job.prefetched = recorded
	d.Job = job
	class := c.jobs.class(job.Class)
	if s.isFenced() {
		return "", false // fenced before the handler started
	}
	start := c.now()
	hook("handle")
	c.enter(&s.watch, stepJob)
	out := c.handle(jobCtx, h, job)
	c.jobs.duration(class).Observe(c.now().Sub(start).Seconds())
	if s.isFenced() {
		return "", false
	}
	hook("settle")
	c.enter(&s.watch, stepSettle)
	c.settle(jobCtx, d, out, class)
	return d.next, d.haveNext
}

func (s *slot) isFenced() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fenced
}

// afterPanic handles a panic in deliver outside the handler (parsing,
// recording, settling): the job, if still in flight, goes to the failed
// list with the panic as its reason, written without decoding or
// re-encoding it. If even that fails, the slot is left dirty: its sweep
// returns the job to the queue before it takes anything else.
func (c *Consumer) afterPanic(d *delivery, r any) (string, bool) {
	s := d.slot
	c.metrics.Panics.WithLabelValues("deliver").Inc()
	c.log.Error("delivering a job panicked; dead-lettering it", zap.String("slot", s.name),
		zap.Any("panic", r), zap.Stack("stack"))
	// A settle that panicked after its script ran may have taken the next
	// job into our in-flight list: the sweep returns it.
	s.dirty.Store(true)
	if d.haveNext {
		c.metrics.InFlight.Dec()
	}
	if d.settled {
		return "", false
	}
	c.metrics.InFlight.Dec()
	c.metrics.Rejected.WithLabelValues("panic").Inc()
	reason := fmt.Sprintf("delivering the job panicked: %v", r)
	func() {
		defer func() {
			if r2 := recover(); r2 != nil {
				c.log.Error("dead-lettering a job after a panic panicked too; the slot returns it to its queue", zap.Any("panic", r2))
			}
		}()
		f := Failure{Worker: s.name, Queue: s.queue, Exception: "Panic", Error: reason, FailedAt: c.now()}
		if rej := c.limits.check(d.raw); rej != nil {
			f.PayloadOmitted = rej.Reason
		} else {
			f.Payload = []byte(d.raw)
		}
		entry := f.Encode()
		keys := []string{s.inflight, s.queueKey, s.record, c.keys.Failed(), c.keys.StatFailed(), c.keys.WorkerStatFailed(s.name), s.queueKey}
		_, err := c.withRetry(context.Background(), func(ctx context.Context) (int, error) {
			r, err := failScript.Run(ctx, c.rdb, keys, d.raw, entry, "").Slice()
			if err != nil {
				return 0, err
			}
			n, _, err := settleReply(r)
			return n, err
		})
		if err != nil {
			c.log.Error("dead-lettering a job after a panic failed; the slot returns it to its queue", zap.Error(err))
		}
	}()
	return "", false
}

// handle runs the handler; a panic fails that job (with the panic as its
// reason) and keeps the slot.
func (c *Consumer) handle(ctx context.Context, h Handler, job *Job) (out Outcome) {
	defer func() {
		if r := recover(); r != nil {
			c.metrics.Panics.WithLabelValues("handler").Inc()
			c.log.Error("job handler panicked; failing the job", zap.String("class", job.Class),
				zap.Any("panic", r), zap.Stack("stack"))
			out = Fail("Panic", fmt.Errorf("handler panicked: %v", r))
		}
	}()
	return h.Handle(ctx, job)
}

// settle writes an outcome to Redis. A settle that cannot be written marks
// the slot dirty: it returns the job to its queue before taking another.
func (c *Consumer) settle(ctx context.Context, d *delivery, o Outcome, class string) {
	st := plan(o, d.Job.Attempt, c.opts.Retry, ctx.Err() != nil)
	log := c.log.With(zap.String("class", d.Job.Class), zap.String("queue", d.Job.Queue), zap.Int("attempt", d.Job.Attempt))
	var next []byte
	if st.op == opDelay {
		var err error
		if next, err = d.Job.withAttempt(st.attempt); err != nil {
			// It cannot travel through the delayed schedule (nor be taken
			// again, ever, if left in flight): it goes to the failed list.
			c.metrics.Rejected.WithLabelValues("unencodable").Inc()
			st = settlement{op: opFail, label: OutcomeFailed, exception: "UnencodableJob",
				reason: fmt.Errorf("the job cannot go back through the delayed schedule (%s): %w", o, err)}
		}
	}
	var err error
	switch st.op {
	case opAck:
		err = d.ack(ctx)
	case opFail:
		var report []byte
		if st.report != nil {
			if report, err = st.report.encode(d.Job.Queue); err != nil {
				log.Error("encoding the dead-letter report failed; failing the job without it", zap.Error(err))
				report = nil
			}
		}
		err = d.fail(ctx, d.failure(st.exception, st.reason), report)
	case opDelay:
		err = d.schedule(ctx, next, st.delay, st.label)
	case opRequeue:
		err = d.requeue(ctx)
	}
	if err != nil {
		log.Error("settling the job failed; the slot returns it to its queue before taking more",
			zap.String("outcome", st.label), zap.Error(err))
		return
	}
	c.jobs.count(class, st.label)
	switch st.label {
	case OutcomeRetried:
		log.Warn("job attempt failed; re-queued with backoff", zap.String("reason", st.reason.Error()),
			zap.Int("next_attempt", st.attempt), zap.Duration("delay", st.delay))
	case OutcomeDelayed:
		log.Info("job postponed", zap.String("reason", st.reason.Error()), zap.Duration("delay", st.delay))
	case OutcomeFailed:
		log.Error("job written to the failed list", zap.String("exception", st.exception), zap.String("reason", st.reason.Error()),
			zap.Bool("report_queued", st.report != nil))
	case OutcomeRequeued:
		log.Info("job returned to its queue unchanged (interrupted)")
	}
}

// settleFailure writes a prepared failed entry (a job rejected at the door).
func (c *Consumer) settleFailure(ctx context.Context, d *delivery, f Failure, class string) {
	if err := d.fail(ctx, f.Encode(), nil); err != nil {
		c.log.Error("settling the job failed; the slot returns it to its queue before taking more",
			zap.String("outcome", OutcomeFailed), zap.Error(err))
		return
	}
	c.jobs.count(class, OutcomeFailed)
	c.log.Error("job written to the failed list", zap.String("exception", f.Exception), zap.String("reason", f.Error),
		zap.String("slot", d.slot.name))
}

// recordWorkingOn mirrors the in-flight job into resque's worker record, so
// node-resque's allWorkingOn() shows it. Informational: a failure is logged.
// When a settle script already wrote the record with the raw job as payload
// (recorded), it is rewritten only if node-resque would print the payload
// differently (JSON.stringify of the parsed job).
func (c *Consumer) recordWorkingOn(ctx context.Context, s *slot, raw string, recorded, valid bool) {
	if recorded && valid && printedAsJS([]byte(raw)) {
		return
	}
	p, perr := reencodeJS([]byte(raw))
	if recorded && perr == nil && string(p) == raw {
		return
	}
	v := make([]byte, 0, len(raw)+160)
	v = append(v, s.recordHead(c.now())...)
	if perr == nil {
		v = append(v, p...)
	} else {
		v = appendJSString(v, raw)
	}
	v = append(v, s.recordTail...)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.OperationTimeout)
	defer cancel()
	if err := c.rdb.Set(ctx, s.record, v, 0).Err(); err != nil {
		c.metrics.RedisErrors.WithLabelValues("record").Inc()
		c.log.Warn("recording the job in resque's worker record failed", zap.String("slot", s.name), zap.Error(err))
	}
}

// giveBack returns a taken job to the head of its queue.
func (c *Consumer) giveBack(s *slot, raw string) {
	ctx := context.Background()
	_, err := c.withRetry(ctx, func(ctx context.Context) (int, error) {
		return requeueScript.Run(ctx, c.rdb, []string{s.inflight, s.queueKey, s.record}, raw).Int()
	})
	c.metrics.InFlight.Dec()
	if err != nil {
		s.dirty.Store(true)
		c.metrics.RedisErrors.WithLabelValues("requeue").Inc()
		c.log.Error("returning a job to its queue failed; the slot retries before taking more", zap.String("queue", s.queue), zap.Error(err))
	}
}

// withRetry runs a settling script until it succeeds or the settle budget
// (half a lease) is spent, so a Redis restart or failover does not leave a
// finished job in flight.
func (c *Consumer) withRetry(ctx context.Context, run func(context.Context) (int, error)) (int, error) {
	deadline := time.Now().Add(c.opts.LeaseDuration / 2)
	b := newBackoff(50*time.Millisecond, time.Second)
	for {
		attemptCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.OperationTimeout)
		n, err := run(attemptCtx)
		cancel()
		if err == nil || time.Now().After(deadline) {
			return n, err
		}
		time.Sleep(b.next())
	}
}

// requeueLeftovers moves every job left in a slot's in-flight list back to
// the head of the queue named in the job (or the slot's queue). It runs only
// while the slot holds no job, so everything there is a leftover.
func (c *Consumer) requeueLeftovers(ctx context.Context, s *slot) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.OperationTimeout)
	defer cancel()
	left, err := c.rdb.LRange(ctx, s.inflight, 0, -1).Result()
	if err != nil {
		return err
	}
	for i := len(left) - 1; i >= 0; i-- {
		q := s.queue
		if c.limits.check(left[i]) == nil {
			if j, err := ParseJob([]byte(left[i]), s.queue); err == nil {
				q = j.Queue
			}
		}
		if err := requeueScript.Run(ctx, c.rdb, []string{s.inflight, c.keys.Queue(q), s.record}, left[i]).Err(); err != nil {
			return err
		}
		c.metrics.Recovered.Inc()
		c.log.Info("returned a leftover in-flight job to its queue", zap.String("slot", s.name), zap.String("queue", q))
	}
	return nil
}

func (c *Consumer) heartbeatLoop(ctx context.Context) {
	// After a failed beat the next comes sooner (backing off up to the
	// interval): every missed beat brings the fence closer.
	b := newBackoff(c.opts.HeartbeatInterval/8, c.opts.HeartbeatInterval)
	t := time.NewTimer(c.opts.HeartbeatInterval)
	defer t.Stop()
	defer c.beatWatch.enter(stepIdle, c.now(), 0)
	for {
		// The next beat, failed or not, returns within the interval plus one
		// bounded call; a loop that does not is wedged.
		c.beatWatch.enter(stepLoop, c.now(), c.opts.HeartbeatInterval+c.opts.OperationTimeout+c.opts.WedgeMargin)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := c.heartbeat(ctx, false); err != nil && ctx.Err() == nil {
			c.metrics.RedisErrors.WithLabelValues("heartbeat").Inc()
			c.log.Warn("heartbeat failed; jobs are abandoned if their lease cannot be confirmed in time", zap.Error(err))
			t.Reset(b.next())
			continue
		}
		b.reset()
		t.Reset(c.opts.HeartbeatInterval)
	}
}

// sinceBeat is the age of the last confirmed heartbeat.
func (c *Consumer) sinceBeat() time.Duration {
	return time.Since(c.epoch) - time.Duration(c.lastBeat.Load())
}

// fenceAfter is how old the last confirmed heartbeat may get before the
// leases are no longer trusted: the lease minus the fence margin.
func (c *Consumer) fenceAfter() time.Duration { return c.opts.LeaseDuration - c.opts.FenceMargin }

// stale says the leases may run out before the next job could start: the
// last confirmed heartbeat is older than fenceAfter.
func (c *Consumer) stale() bool {
	return c.sinceBeat() >= c.fenceAfter()
}

// fenceLoop cancels every job in progress, and keeps them from settling,
// once the leases can no longer be confirmed: a replica cut off from Redis
// (but not from Kubernetes) must not act on jobs a recoverer is handing to
// another replica.
func (c *Consumer) fenceLoop(ctx context.Context) {
	t := time.NewTimer(c.fenceAfter())
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if wait := c.fenceAfter() - c.sinceBeat(); wait > 0 {
			t.Reset(wait)
			continue
		}
		c.fenceAll()
		t.Reset(max(c.opts.FenceMargin/4, 10*time.Millisecond))
	}
}

func (c *Consumer) fenceAll() {
	for _, s := range c.slots {
		if s.fence() {
			c.metrics.Fenced.Inc()
			c.log.Error("lease not confirmed for too long (Redis unreachable?); cancelling the job in progress, leaving it to the recoverer",
				zap.String("slot", s.name), zap.Duration("since_heartbeat", c.sinceBeat()), zap.Duration("lease", c.opts.LeaseDuration))
		}
	}
}

// heartbeat extends every slot's lease; first registers them.
func (c *Consumer) heartbeat(ctx context.Context, first bool) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.OperationTimeout)
	defer cancel()
	flag := "0"
	if first {
		flag = "1"
	}
	args := []any{c.opts.LeaseDuration.Milliseconds()}
	for _, s := range c.slots {
		args = append(args, s.name, s.queue, s.member(), c.keys.WorkerStarted(s.name, s.queue), c.keys.WorkerPing(s.name), s.inflight, flag)
	}
	sent := time.Since(c.epoch)
	res, err := heartbeatScript.Run(ctx, c.rdb, []string{c.keys.Leases(), c.keys.Slots(), c.keys.Workers()}, args...).Slice()
	if err != nil {
		return err
	}
	if len(res) != 2 {
		return fmt.Errorf("heartbeat: unexpected reply %v", res)
	}
	lost, _ := res[0].([]any)
	lengths, _ := res[1].([]any)
	// Every lease now runs at least LeaseDuration past the moment we sent
	// the beat (Redis read its clock after that).
	for {
		old := c.lastBeat.Load()
		if int64(sent) <= old || c.lastBeat.CompareAndSwap(old, int64(sent)) {
			break
		}
	}
	for _, l := range lost {
		name, _ := l.(string)
		for _, s := range c.slots {
			if s.name == name {
				c.metrics.LeasesLost.Inc()
				c.log.Error("lease lost or expired (missed heartbeats); abandoning the job in progress", zap.String("slot", name))
				s.fence()
			}
		}
	}
	for i, s := range c.slots {
		if i < len(lengths) {
			if n, _ := lengths[i].(int64); n > 0 && !s.busy() {
				// An idle slot with entries in its in-flight list: a settle a
				// failover undid, or a take whose reply was lost. The slot
				// returns them before its next take. (If the slot took a job
				// just now, the sweep finds only what is stale by then.)
				s.dirty.Store(true)
			}
		}
	}
	return nil
}

func (c *Consumer) unregister(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.OperationTimeout)
	defer cancel()
	for _, s := range c.slots {
		keys := []string{c.keys.Leases(), c.keys.Slots(), c.keys.Workers(), s.record,
			c.keys.WorkerPing(s.name), c.keys.WorkerStarted(s.name, s.queue),
			c.keys.WorkerStatProcessed(s.name), c.keys.WorkerStatFailed(s.name), s.inflight}
		n, err := unregisterScript.Run(ctx, c.rdb, keys, s.name, s.member()).Int()
		if err != nil {
			c.log.Warn("unregistering a slot failed; its lease will expire", zap.String("slot", s.name), zap.Error(err))
		} else if n == 0 {
			c.log.Warn("slot still holds a job at exit; it returns to its queue when the lease expires", zap.String("slot", s.name))
		}
	}
}

// delivery is one taken job and the means to settle it.
type delivery struct {
	Job     *Job
	c       *Consumer
	slot    *slot
	raw     string
	takenAt time.Time
	// takeCtx is the consumer's Run context: while it is live, the settle
	// may take the slot's next job in the same script.
	takeCtx context.Context
	// next is the job the settle took (haveNext), now in the slot's
	// in-flight list; the slot works it next.
	next     string
	haveNext bool
	// settled says a settle ran to the end (written or given up on).
	settled bool
}

func (d *delivery) class() string {
	if d.Job != nil {
		return d.Job.Class
	}
	return ""
}

// mayTake says whether this settle may take the slot's next job too.
func (d *delivery) mayTake() bool { return d.takeCtx != nil && d.takeCtx.Err() == nil }

// settleReply reads a settling script's {n, swept, ...} reply.
func settleReply(res []any) (n, swept int, err error) {
	if len(res) < 2 {
		return 0, 0, fmt.Errorf("unexpected reply %v", res)
	}
	a, ok1 := res[0].(int64)
	b, ok2 := res[1].(int64)
	if !ok1 || !ok2 {
		return 0, 0, fmt.Errorf("unexpected reply %v", res)
	}
	return int(a), int(b), nil
}

// runTake executes a settling script with retries; it runs even when the
// job's context is done: a cancelled job must still be written back. When
// take is set its first attempt is the script's take-next variant (see
// takeNextTail), which also moves the slot's next job into the in-flight
// list. Retries use the plain script: if the first attempt's reply was lost,
// a job it took may sit in the in-flight list, so the slot is marked dirty
// and sweeps it back to the queue before taking.
func (d *delivery) runTake(ctx context.Context, take bool, plain, withTake *redis.Script, keys []string, args ...any) (int, error) {
	s := d.slot
	var tkeys []string
	var targs []any
	if take {
		tkeys = append(keys[:len(keys):len(keys)], d.c.keys.Leases())
		targs = append(args[:len(args):len(args)], s.name, s.recordHead(d.c.now()), s.recordTail)
	}
	first := true
	swept := 0
	n, err := d.c.withRetry(ctx, func(ctx context.Context) (int, error) {
		script, k, a := plain, keys, args
		withTakeNow := take && first
		if withTakeNow {
			script, k, a = withTake, tkeys, targs
		}
		first = false
		res, err := script.Run(ctx, d.c.rdb, k, a...).Slice()
		var n int
		if err == nil {
			n, swept, err = settleReply(res)
		}
		if err == nil && withTakeNow {
			err = d.readTake(res)
		}
		if err != nil && withTakeNow {
			s.dirty.Store(true)
		}
		return n, err
	})
	if err == nil && swept > 0 {
		d.c.metrics.StaleReturned.Add(float64(swept))
		d.c.log.Warn("returned entries found in the slot's in-flight list besides its own job (a settle undone by a Redis failover or restart?) to the queue",
			zap.String("slot", s.name), zap.Int("entries", swept))
	}
	return n, err
}

// readTake reads the took part of a take variant's reply.
func (d *delivery) readTake(res []any) error {
	if len(res) < 3 {
		return fmt.Errorf("unexpected reply %v", res)
	}
	switch took, _ := res[2].(int64); took {
	case tookNothing:
	case tookNotLeased:
		d.slot.needLease.Store(true)
	case tookJob:
		job, ok := "", len(res) == 4
		if ok {
			job, ok = res[3].(string)
		}
		if !ok {
			return fmt.Errorf("unexpected reply %v", res)
		}
		d.next, d.haveNext = job, true
	default:
		return fmt.Errorf("unexpected reply %v", res)
	}
	return nil
}

func (d *delivery) settle(op string, n int, err error) error {
	d.settled = true
	if err != nil {
		d.c.metrics.RedisErrors.WithLabelValues(op).Inc()
		d.slot.dirty.Store(true)
		// The slot returns the job to its queue itself.
		d.c.metrics.InFlight.Dec()
		return fmt.Errorf("%s job %s: %w", op, d.describe(), err)
	}
	d.c.metrics.InFlight.Dec()
	if d.haveNext {
		d.slot.m.taken.Inc()
		d.c.metrics.InFlight.Inc()
	}
	d.c.metrics.TakeToSettle.Observe(d.c.now().Sub(d.takenAt).Seconds())
	if n == 0 {
		d.slot.needLease.Store(true)
		d.c.metrics.LostSettles.WithLabelValues(op).Inc()
		d.c.log.Warn("job was no longer in flight (its lease was recovered elsewhere); nothing written", zap.String("slot", d.slot.name), zap.String("op", op))
	}
	return nil
}

// ack removes the job from flight and counts it processed.
func (d *delivery) ack(ctx context.Context) error {
	hook("settle-script")
	s := d.slot
	keys := []string{s.inflight, s.queueKey, s.record, d.c.keys.StatProcessed(), d.c.keys.WorkerStatProcessed(s.name)}
	n, err := d.runTake(ctx, d.mayTake(), ackScript, ackTakeScript, keys, d.raw)
	if err == nil && n == 1 {
		s.m.acked.Inc()
	}
	return d.settle(opAck, n, err)
}

// failure is the failed entry of this job, in node-resque's format so resque
// tooling can show and retry it (secrets redacted, see Failure.Encode; the
// attempt marker dropped, see failedPayload).
func (d *delivery) failure(exception string, reason error) []byte {
	return Failure{
		Worker:    d.slot.name,
		Queue:     d.Job.Queue,
		Payload:   failedPayload([]byte(d.raw), d.c.limits),
		Exception: exception,
		Error:     reason.Error(),
		FailedAt:  d.c.now(),
	}.Encode()
}

// fail moves the job to the resque failed list at once, as entry. report,
// if not nil, is a job pushed onto the job's queue in the same script.
func (d *delivery) fail(ctx context.Context, entry, report []byte) error {
	hook("settle-script")
	s := d.slot
	keys := []string{s.inflight, s.queueKey, s.record, d.c.keys.Failed(), d.c.keys.StatFailed(), d.c.keys.WorkerStatFailed(s.name),
		d.c.keys.Queue(d.Job.Queue)}
	n, err := d.runTake(ctx, d.mayTake(), failScript, failTakeScript, keys, d.raw, entry, string(report))
	if err := d.settle(opFail, n, err); err != nil {
		return err
	}
	if n == 1 {
		s.m.deadLettered.Inc()
	}
	return nil
}

// schedule puts the job back through the delayed schedule as next (the job
// rendered for its next attempt), due after delay by Redis's clock (op is
// the metric label: retried or delayed).
func (d *delivery) schedule(ctx context.Context, next []byte, delay time.Duration, op string) error {
	hook("settle-script")
	s := d.slot
	keys := []string{s.inflight, s.queueKey, s.record, d.c.keys.DelayedSchedule()}
	n, err := d.runTake(ctx, d.mayTake(), delayScript, delayTakeScript, keys, d.raw, next, delay.Milliseconds(), d.c.keys.Namespace())
	if err := d.settle(op, n, err); err != nil {
		return err
	}
	if op == OutcomeRetried {
		s.m.retried.Inc()
	} else {
		s.m.postponed.Inc()
	}
	return nil
}

// requeue returns the job to the head of its queue unchanged.
// It never takes the next job: that would take this one straight back.
func (d *delivery) requeue(ctx context.Context) error {
	hook("settle-script")
	s := d.slot
	n, err := d.runTake(ctx, false, requeueSettleScript, nil, []string{s.inflight, s.queueKey, s.record}, d.raw)
	return d.settle(opRequeue, n, err)
}

func (d *delivery) describe() string {
	if d.Job != nil && d.Job.Class != "" {
		return d.Job.Class + " from " + d.slot.queue
	}
	return "from " + d.slot.queue
}

type backoff struct{ min, max, cur time.Duration }

func newBackoff(min, max time.Duration) *backoff { return &backoff{min: min, max: max} }

func (b *backoff) next() time.Duration {
	if b.cur == 0 {
		b.cur = b.min
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	return b.cur
}

func (b *backoff) reset() { b.cur = 0 }

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
