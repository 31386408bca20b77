package queue

import (
	"context"
	"encoding/json"
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

// Handler works one delivery and must settle it (Ack, Fail, Retry,
// RetryLater or Requeue). A delivery left unsettled goes back to the head of
// its queue.
type Handler interface {
	Handle(ctx context.Context, d *Delivery)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, d *Delivery)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, d *Delivery) { f(ctx, d) }

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
	// OnDeadLetter is called after a job was written to the failed list.
	OnDeadLetter func(ctx context.Context, job *Job, reason error)
}

func (o *Options) defaults() {
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
}

// NewConsumer returns a consumer over rdb. metrics may be nil.
func NewConsumer(rdb redis.UniversalClient, keys Keys, opts Options, log *zap.Logger, metrics *Metrics) (*Consumer, error) {
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
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	c := &Consumer{rdb: rdb, keys: keys, opts: opts, log: log, metrics: metrics, now: time.Now}
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
	// cancelJob cancels the job in progress when the lease is found lost.
	mu        sync.Mutex
	cancelJob context.CancelFunc
	// dirty is set when a settle could not be written: the slot's in-flight
	// list may hold a job its (live) lease hides from recoverers, so the slot
	// returns it to the queue before taking anything else.
	dirty atomic.Bool
	// needLease is set when the slot's lease was recovered elsewhere: it
	// re-leases itself before taking again, or recoverers would treat its
	// next job as an orphan.
	needLease atomic.Bool
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

func (s *slot) setCancel(f context.CancelFunc) {
	s.mu.Lock()
	s.cancelJob = f
	s.mu.Unlock()
}

func (s *slot) leaseLost() {
	s.needLease.Store(true)
	s.mu.Lock()
	if s.cancelJob != nil {
		s.cancelJob()
	}
	s.mu.Unlock()
}

// Run takes and hands over jobs until ctx is cancelled, then lets jobs in
// progress finish for up to DrainTimeout, returns what is left to its queue
// and unregisters. It also runs the heartbeat, and unless disabled the
// recoverer and the delayed-job mover, all stopped before it returns.
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
	bgWG.Add(1)
	go func() { defer bgWG.Done(); c.heartbeatLoop(hbCtx) }()
	if c.opts.RecoverInterval > 0 {
		r := NewRecoverer(c.rdb, c.keys, c.opts.Queues[0], c.opts.OperationTimeout, c.log, c.metrics)
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
	// next is a job the last settle already moved into our in-flight list
	// (and recorded in the worker record), in the same script.
	var next string
	var haveNext bool
	for {
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
		if s.needLease.Load() {
			if err := c.heartbeat(ctx, false); err != nil {
				c.metrics.RedisErrors.WithLabelValues("heartbeat").Inc()
				sleepCtx(ctx, backoff.next())
				continue
			}
			s.needLease.Store(false)
		}
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

// deliver hands one in-flight job to h. recorded says the worker record
// already holds it (written by the settle script that took it). It returns
// the next job if the job's settle took one (only while takeCtx is live).
func (c *Consumer) deliver(takeCtx, ctx context.Context, s *slot, raw string, recorded bool, h Handler) (string, bool) {
	jobCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	s.setCancel(cancel)
	defer s.setCancel(nil)

	d := &Delivery{c: c, slot: s, raw: raw, takenAt: c.now(), takeCtx: takeCtx, prefetched: recorded}
	job, err := ParseJob([]byte(raw), s.queue)
	c.recordWorkingOn(ctx, s, raw, recorded, err == nil)
	if err != nil {
		// Nothing can make a malformed envelope succeed: dead-letter it with
		// the reason instead of retrying or dropping it.
		d.Job = &Job{Queue: s.queue, Raw: []byte(raw)}
		if ferr := d.Fail(jobCtx, "MalformedJob", err); ferr != nil {
			c.log.Error("dead-lettering a malformed job failed; it stays in flight for recovery", zap.String("queue", s.queue), zap.Error(ferr))
		}
		return d.next, d.haveNext
	}
	d.Job = job
	h.Handle(jobCtx, d)
	if !d.settled.Load() {
		c.log.Error("handler left a job unsettled; returning it to its queue", zap.String("queue", s.queue), zap.String("class", job.Class))
		c.giveBack(s, raw)
	}
	return d.next, d.haveNext
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
// the head of the queue named in the job (or the slot's queue).
func (c *Consumer) requeueLeftovers(ctx context.Context, s *slot) error {
	ctx, cancel := context.WithTimeout(ctx, c.opts.OperationTimeout)
	defer cancel()
	left, err := c.rdb.LRange(ctx, s.inflight, 0, -1).Result()
	if err != nil {
		return err
	}
	for i := len(left) - 1; i >= 0; i-- {
		q := s.queue
		if j, err := ParseJob([]byte(left[i]), s.queue); err == nil {
			q = j.Queue
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
	t := time.NewTicker(c.opts.HeartbeatInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := c.heartbeat(ctx, false); err != nil && ctx.Err() == nil {
				c.metrics.RedisErrors.WithLabelValues("heartbeat").Inc()
				c.log.Warn("heartbeat failed; leases run out if this persists", zap.Error(err))
			}
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
		args = append(args, s.name, s.queue, s.member(), c.keys.WorkerStarted(s.name, s.queue), c.keys.WorkerPing(s.name), flag)
	}
	lost, err := heartbeatScript.Run(ctx, c.rdb, []string{c.keys.Leases(), c.keys.Slots(), c.keys.Workers()}, args...).StringSlice()
	if err != nil {
		return err
	}
	for _, name := range lost {
		for _, s := range c.slots {
			if s.name == name {
				c.metrics.LeasesLost.Inc()
				c.log.Error("lease lost (recovered by another replica after missed heartbeats); abandoning the job in progress", zap.String("slot", name))
				s.leaseLost()
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

// Delivery is one taken job and the handle to settle it.
type Delivery struct {
	Job     *Job
	c       *Consumer
	slot    *slot
	raw     string
	takenAt time.Time
	settled atomic.Bool
	// takeCtx is the consumer's Run context: while it is live, the first
	// settle may take the slot's next job in the same script.
	takeCtx context.Context
	// state is settleFresh until the first settle starts; settleTook marks a
	// first settle that may have moved another job into the in-flight list,
	// after which no further settle may touch that list.
	state atomic.Int32
	// next is the job the settle took (haveNext), now in the slot's
	// in-flight list; the slot works it next.
	next     string
	haveNext bool
	// prefetched says this job was taken by the previous job's settle.
	prefetched bool
}

const (
	settleFresh int32 = iota
	settlePlain
	settleTook
)

// errSettledAlready refuses a second settle after the first one took the
// slot's next job: the in-flight list now holds that job, which may even have
// the same bytes as this one.
var errSettledAlready = errors.New("already settled")

// begin claims the delivery's settle. It reports whether this settle may
// take the next job, or an error if an earlier settle took one.
func (d *Delivery) begin(op string, mayTake bool) (bool, error) {
	take := mayTake && d.takeCtx != nil && d.takeCtx.Err() == nil
	st := settlePlain
	if take {
		st = settleTook
	}
	if d.state.CompareAndSwap(settleFresh, st) {
		return take, nil
	}
	if d.state.Load() == settleTook {
		return false, fmt.Errorf("%s job %s: %w", op, d.describe(), errSettledAlready)
	}
	return false, nil
}

// run executes a settling script with retries. It runs even when the job's
// context is done: a cancelled job must still be written back.
func (d *Delivery) run(ctx context.Context, s *redis.Script, keys []string, args ...any) (int, error) {
	return d.c.withRetry(ctx, func(ctx context.Context) (int, error) {
		return s.Run(ctx, d.c.rdb, keys, args...).Int()
	})
}

// runTake is run, but when take is set its first attempt is the script's
// take-next variant (see takeNextTail), which also moves the slot's next
// job into the in-flight list. Retries use the plain script: if the first
// attempt's reply was lost, a job it took may sit in the in-flight list, so
// the slot is marked dirty and sweeps it back to the queue before taking.
func (d *Delivery) runTake(ctx context.Context, take bool, plain, withTake *redis.Script, keys []string, args ...any) (int, error) {
	if !take {
		return d.run(ctx, plain, keys, args...)
	}
	s := d.slot
	tkeys := append(keys[:len(keys):len(keys)], s.queueKey, s.record)
	targs := append(args[:len(args):len(args)], s.recordHead(d.c.now()), s.recordTail)
	first := true
	return d.c.withRetry(ctx, func(ctx context.Context) (int, error) {
		if !first {
			return plain.Run(ctx, d.c.rdb, keys, args...).Int()
		}
		first = false
		res, err := withTake.Run(ctx, d.c.rdb, tkeys, targs...).Slice()
		if err == nil && (len(res) < 1 || len(res) > 2) {
			err = fmt.Errorf("unexpected reply %v", res)
		}
		var n int64
		if err == nil {
			var ok bool
			if n, ok = res[0].(int64); !ok {
				err = fmt.Errorf("unexpected reply %v", res)
			}
		}
		if err == nil && len(res) == 2 {
			job, ok := res[1].(string)
			if !ok {
				err = fmt.Errorf("unexpected reply %v", res)
			} else {
				d.next, d.haveNext = job, true
			}
		}
		if err != nil {
			s.dirty.Store(true)
			return 0, err
		}
		if !d.haveNext {
			// Nothing was taken: a later settle may touch the list again.
			d.state.Store(settlePlain)
		}
		return int(n), nil
	})
}

func (d *Delivery) settle(op string, n int, err error) error {
	if err != nil {
		d.c.metrics.RedisErrors.WithLabelValues(op).Inc()
		d.slot.dirty.Store(true)
		// Counted as settled: the slot returns the job to its queue itself.
		d.settled.Store(true)
		d.c.metrics.InFlight.Dec()
		return fmt.Errorf("%s job %s: %w", op, d.describe(), err)
	}
	d.settled.Store(true)
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

// Ack removes the job from flight and counts it processed.
func (d *Delivery) Ack(ctx context.Context) error {
	take, err := d.begin("ack", true)
	if err != nil {
		return err
	}
	keys := []string{d.slot.inflight, d.c.keys.StatProcessed(), d.c.keys.WorkerStatProcessed(d.slot.name), d.slot.record}
	n, err := d.runTake(ctx, take, ackScript, ackTakeScript, keys, d.raw)
	if err == nil && n == 1 {
		d.slot.m.acked.Inc()
	}
	return d.settle("ack", n, err)
}

// Fail moves the job to the resque failed list at once, with exception and
// reason, in node-resque's format so resque tooling can show and retry it.
// Use it for failures no retry can fix.
func (d *Delivery) Fail(ctx context.Context, exception string, reason error) error {
	take, err := d.begin("fail", true)
	if err != nil {
		return err
	}
	entry := Failure{
		Worker:    d.slot.name,
		Queue:     d.Job.Queue,
		Payload:   []byte(d.raw),
		Exception: exception,
		Error:     reason.Error(),
		FailedAt:  d.c.now(),
	}.Encode()
	keys := []string{d.slot.inflight, d.c.keys.Failed(), d.c.keys.StatFailed(), d.c.keys.WorkerStatFailed(d.slot.name), d.slot.record}
	n, err := d.runTake(ctx, take, failScript, failTakeScript, keys, d.raw, entry)
	if err := d.settle("fail", n, err); err != nil {
		return err
	}
	if n == 1 {
		d.slot.m.deadLettered.Inc()
		if d.c.opts.OnDeadLetter != nil && d.Job.Class != "" {
			d.c.opts.OnDeadLetter(context.WithoutCancel(ctx), d.Job, reason)
		}
	}
	return nil
}

// Retry re-queues a failed attempt through the delayed schedule with
// exponential backoff, or, after the last retry, writes the job to the
// failed list. It reports whether the job was re-queued.
func (d *Delivery) Retry(ctx context.Context, exception string, reason error) (bool, error) {
	next := d.Job.Attempt + 1
	if next > d.c.opts.Retry.MaxRetries {
		err := d.Fail(ctx, exception, fmt.Errorf("%w (gave up after %d attempts)", reason, next))
		return false, err
	}
	if err := d.schedule(ctx, d.c.opts.Retry.backoff(next), next, "retry"); err != nil {
		return false, err
	}
	d.slot.m.retried.Inc()
	d.c.log.Info("job re-queued for a later attempt", zap.String("class", d.Job.Class), zap.Int("attempt", next),
		zap.Duration("delay", d.c.opts.Retry.backoff(next)), zap.String("reason", reason.Error()))
	return true, nil
}

// RetryLater puts the job back after delay without counting an attempt: the
// job is fine, the worker cannot run it now (a paused runtime, a budget, an
// open circuit breaker).
func (d *Delivery) RetryLater(ctx context.Context, delay time.Duration) error {
	if err := d.schedule(ctx, delay, d.Job.Attempt, "delay"); err != nil {
		return err
	}
	d.slot.m.postponed.Inc()
	return nil
}

// FollowUp replaces the job, atomically, with another job due after delay
// (e.g. a start with the verify that checks its pod). Nothing is lost if the
// process dies at any point: either the old job is in flight or the new one
// is scheduled.
func (d *Delivery) FollowUp(ctx context.Context, class string, args any, delay time.Duration) error {
	a, err := json.Marshal([]any{args})
	if err != nil {
		return fmt.Errorf("encoding the follow-up of job %s: %w", d.describe(), err)
	}
	next := &Job{Class: class, Queue: d.Job.Queue, rawArgsOverride: a}
	return d.scheduleJob(ctx, delay, next, 0, "follow-up")
}

func (d *Delivery) schedule(ctx context.Context, delay time.Duration, attempt int, op string) error {
	return d.scheduleJob(ctx, delay, d.Job, attempt, op)
}

func (d *Delivery) scheduleJob(ctx context.Context, delay time.Duration, j *Job, attempt int, op string) error {
	next, err := j.withAttempt(attempt)
	if err != nil {
		return fmt.Errorf("%s job %s: %w", op, d.describe(), err)
	}
	take, err := d.begin(op, true)
	if err != nil {
		return err
	}
	// node-resque's enqueueIn rounds to the nearest second.
	ts := int64(math.Round(float64(d.c.now().Add(delay).UnixMilli()) / 1000))
	keys := []string{d.slot.inflight, d.c.keys.Delayed(ts), d.c.keys.Timestamps(string(next)), d.c.keys.DelayedSchedule(), d.slot.record}
	n, err := d.runTake(ctx, take, delayScript, delayTakeScript, keys, d.raw, next, ts)
	return d.settle(op, n, err)
}

// Requeue returns the job to the head of its queue unchanged.
// It never takes the next job: that would take this one straight back.
func (d *Delivery) Requeue(ctx context.Context) error {
	if _, err := d.begin("requeue", false); err != nil {
		return err
	}
	n, err := d.run(ctx, requeueScript, []string{d.slot.inflight, d.slot.queueKey, d.slot.record}, d.raw)
	return d.settle("requeue", n, err)
}

func (d *Delivery) describe() string {
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
