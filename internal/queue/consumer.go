package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
)

// Handler works one delivery and must settle it (Ack or Fail). A delivery the
// handler leaves unsettled is returned to the head of its queue.
type Handler interface {
	Handle(ctx context.Context, d *Delivery)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, d *Delivery)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, d *Delivery) { f(ctx, d) }

// Options configure a Consumer.
type Options struct {
	// Queues are full queue names (prefix included), e.g. "builds".
	Queues []string
	// Concurrency is the number of slots; slots are spread over the queues
	// round-robin, so it must be at least len(Queues).
	Concurrency int
	// WorkerName identifies this process in resque's tooling: "host:pid",
	// at most one ':' (node-resque splits worker names on ':').
	WorkerName string
	// BlockTimeout bounds one blocking take, so a stop is noticed promptly.
	BlockTimeout time.Duration
	// OperationTimeout bounds every non-blocking Redis call.
	OperationTimeout time.Duration
	// DrainTimeout is how long in-flight jobs may keep running after Run's
	// context is cancelled; then their context is cancelled too.
	DrainTimeout time.Duration
}

// Consumer takes resque jobs and hands them to a Handler.
type Consumer struct {
	rdb     redis.UniversalClient
	keys    Keys
	opts    Options
	log     *zap.Logger
	metrics *Metrics
	now     func() time.Time
}

// NewConsumer returns a consumer over rdb. metrics may be nil.
func NewConsumer(rdb redis.UniversalClient, keys Keys, opts Options, log *zap.Logger, metrics *Metrics) (*Consumer, error) {
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
	if metrics == nil {
		metrics = NewMetrics(nil)
	}
	return &Consumer{rdb: rdb, keys: keys, opts: opts, log: log, metrics: metrics, now: time.Now}, nil
}

// slot is one concurrent taker with its own in-flight list.
type slot struct {
	name     string // resque-style worker name of this slot
	queue    string
	inflight string
}

func (c *Consumer) slots() []slot {
	out := make([]slot, c.opts.Concurrency)
	for i := range out {
		name := c.opts.WorkerName + "-" + strconv.Itoa(i)
		out[i] = slot{name: name, queue: c.opts.Queues[i%len(c.opts.Queues)], inflight: c.keys.InFlight(name)}
	}
	return out
}

// Run takes and hands over jobs until ctx is cancelled, then lets jobs in
// progress finish for up to DrainTimeout. It returns when every slot is done.
func (c *Consumer) Run(ctx context.Context, h Handler) error {
	// workCtx outlives ctx by the drain timeout, so a SIGTERM stops taking
	// without cutting off a pod create half-way.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
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

	slots := c.slots()
	// A previous process with the same name (a restarted container keeps its
	// hostname and usually PID 1) may have left jobs in our in-flight lists.
	for _, s := range slots {
		if err := c.requeueInFlight(context.WithoutCancel(ctx), s); err != nil {
			return fmt.Errorf("returning leftover in-flight jobs of %s: %w", s.name, err)
		}
	}
	var wg sync.WaitGroup
	for _, s := range slots {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.runSlot(ctx, workCtx, s, h)
		}()
	}
	wg.Wait()
	return nil
}

func (c *Consumer) runSlot(ctx, workCtx context.Context, s slot, h Handler) {
	backoff := newBackoff(100*time.Millisecond, 5*time.Second)
	for ctx.Err() == nil {
		raw, err := c.rdb.BLMove(ctx, c.keys.Queue(s.queue), s.inflight, "LEFT", "RIGHT", c.opts.BlockTimeout).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			c.metrics.RedisErrors.WithLabelValues("take").Inc()
			c.log.Warn("taking a job failed; backing off", zap.String("queue", s.queue), zap.Error(err))
			sleepCtx(ctx, backoff.next())
			continue
		}
		backoff.reset()
		c.metrics.Taken.WithLabelValues(s.queue).Inc()
		if ctx.Err() != nil {
			// Stopped while the move was in flight: give the job straight back.
			c.giveBack(s, raw)
			break
		}
		c.deliver(workCtx, s, raw, h)
	}
}

func (c *Consumer) deliver(ctx context.Context, s slot, raw string, h Handler) {
	d := &Delivery{c: c, slot: s, raw: raw, takenAt: c.now()}
	job, err := ParseJob([]byte(raw), s.queue)
	if err != nil {
		// Nothing can make a malformed envelope succeed: dead-letter it with
		// the reason instead of retrying or dropping it.
		d.Job = &Job{Queue: s.queue, Raw: []byte(raw)}
		if ferr := d.Fail(ctx, "MalformedJob", err); ferr != nil {
			c.log.Error("dead-lettering a malformed job failed; it stays in flight", zap.String("queue", s.queue), zap.Error(ferr))
		}
		return
	}
	d.Job = job
	h.Handle(ctx, d)
	if !d.settled {
		c.log.Error("handler left a job unsettled; returning it to its queue", zap.String("queue", s.queue), zap.String("class", job.Class))
		c.giveBack(s, raw)
	}
}

// giveBack returns a taken job to the head of its queue.
func (c *Consumer) giveBack(s slot, raw string) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.OperationTimeout)
	defer cancel()
	if err := requeueScript.Run(ctx, c.rdb, []string{s.inflight, c.keys.Queue(s.queue)}, raw).Err(); err != nil {
		c.metrics.RedisErrors.WithLabelValues("requeue").Inc()
		c.log.Error("returning a job to its queue failed; it stays in flight", zap.String("queue", s.queue), zap.Error(err))
	}
}

// requeueInFlight moves every job left in a slot's in-flight list back to the
// head of the queue named in the job (or the slot's queue).
func (c *Consumer) requeueInFlight(ctx context.Context, s slot) error {
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
		if err := requeueScript.Run(ctx, c.rdb, []string{s.inflight, c.keys.Queue(q)}, left[i]).Err(); err != nil {
			return err
		}
		c.log.Info("returned a leftover in-flight job to its queue", zap.String("slot", s.name), zap.String("queue", q))
	}
	return nil
}

// Delivery is one taken job and the handle to settle it.
type Delivery struct {
	Job     *Job
	c       *Consumer
	slot    slot
	raw     string
	takenAt time.Time
	settled bool
}

// Ack removes the job from flight and counts it processed.
func (d *Delivery) Ack(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.c.opts.OperationTimeout)
	defer cancel()
	keys := []string{d.slot.inflight, d.c.keys.StatProcessed()}
	n, err := ackScript.Run(ctx, d.c.rdb, keys, d.raw).Int()
	if err != nil {
		d.c.metrics.RedisErrors.WithLabelValues("ack").Inc()
		return fmt.Errorf("acking job %s: %w", d.describe(), err)
	}
	d.settled = true
	d.c.metrics.Acked.WithLabelValues(d.slot.queue).Inc()
	d.c.metrics.TakeToSettle.Observe(d.c.now().Sub(d.takenAt).Seconds())
	if n == 0 {
		d.c.log.Warn("acked job was no longer in flight (recovered elsewhere?)", zap.String("slot", d.slot.name))
	}
	return nil
}

// Fail moves the job to the resque failed list with exception and reason, in
// node-resque's format, so resque tooling can show and retry it.
func (d *Delivery) Fail(ctx context.Context, exception string, reason error) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.c.opts.OperationTimeout)
	defer cancel()
	entry := Failure{
		Worker:    d.c.opts.WorkerName,
		Queue:     d.Job.Queue,
		Payload:   []byte(d.raw),
		Exception: exception,
		Error:     reason.Error(),
		FailedAt:  d.c.now(),
	}.Encode()
	keys := []string{d.slot.inflight, d.c.keys.Failed(), d.c.keys.StatFailed()}
	n, err := failScript.Run(ctx, d.c.rdb, keys, d.raw, entry).Int()
	if err != nil {
		d.c.metrics.RedisErrors.WithLabelValues("fail").Inc()
		return fmt.Errorf("dead-lettering job %s: %w", d.describe(), err)
	}
	d.settled = true
	d.c.metrics.DeadLettered.WithLabelValues(d.slot.queue).Inc()
	d.c.metrics.TakeToSettle.Observe(d.c.now().Sub(d.takenAt).Seconds())
	if n == 0 {
		d.c.log.Warn("failed job was no longer in flight (recovered elsewhere?); not written twice", zap.String("slot", d.slot.name))
	}
	return nil
}

// Requeue returns the job to the head of its queue unchanged, e.g. when the
// worker cannot work it right now and nothing about the job is wrong.
func (d *Delivery) Requeue(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.c.opts.OperationTimeout)
	defer cancel()
	if err := requeueScript.Run(ctx, d.c.rdb, []string{d.slot.inflight, d.c.keys.Queue(d.slot.queue)}, d.raw).Err(); err != nil {
		d.c.metrics.RedisErrors.WithLabelValues("requeue").Inc()
		return fmt.Errorf("requeueing job %s: %w", d.describe(), err)
	}
	d.settled = true
	return nil
}

func (d *Delivery) describe() string {
	if d.Job != nil && d.Job.Class != "" {
		return d.Job.Class + " from " + d.slot.queue
	}
	return "from " + d.slot.queue
}

// Scripts: each settles a job atomically, and only if it is still in this
// slot's in-flight list, so a job recovered by another replica is never
// written twice.
var (
	ackScript = redis.NewScript(`
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then redis.call('INCR', KEYS[2]) end
return n`)
	failScript = redis.NewScript(`
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('INCR', KEYS[3])
end
return n`)
	requeueScript = redis.NewScript(`
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then redis.call('LPUSH', KEYS[2], ARGV[1]) end
return n`)
)

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
