// Package timeouts owns queue-service's <prefix>timeoutConfigs hash (buildId
// → {"jobId","startTime","timeout"}) and the timeout checker that reads it:
// a build still running past its timeout plus a buffer has its active step
// ended with code 3 and is failed with "Build failed due to timeout", as
// queue-service's checker does; its pods are then deleted. One pass runs at
// most once per interval across all replicas (a pass lock in Redis), and
// each build is failed once whichever replica finds it (a per-build lock,
// then one script that clears the build's state only while it still runs).
package timeouts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/gate"
)

// Queue-service's constants.
const (
	// TimeoutCode is the exit code the active step gets.
	TimeoutCode = 3
	// Message is the FAILURE status message.
	Message = "Build failed due to timeout"
	// DefaultTimeout (minutes) applies to an entry without a usable timeout.
	DefaultTimeout = 90
)

// jsTime is JavaScript's Date.prototype.toISOString.
const jsTime = "2006-01-02T15:04:05.000Z"

// Record is one timeoutConfigs value, in queue-service's field order.
type Record struct {
	JobID     int64  `json:"jobId"`
	StartTime string `json:"startTime"`
	Timeout   int    `json:"timeout"`
}

// entry is a Record as read back: queue-service writes startTime as the
// API sent it (an ISO string) and timeout as a number, but anything may be
// there.
type entry struct {
	JobID     json.Number     `json:"jobId"`
	StartTime json.RawMessage `json:"startTime"`
	Timeout   json.RawMessage `json:"timeout"`
}

// Verdict is the pure part of a check: is the entry past its timeout?
type Verdict struct {
	// Known: the entry has a start time (queue-service skips one without).
	Known bool
	// Elapsed and Limit are whole minutes, as queue-service rounds them.
	Elapsed, Limit int64
	Over           bool
}

// Judge decides whether a build that started at start with a timeout of
// timeout minutes is over it at now: elapsed minutes, rounded to the
// nearest, greater than timeout plus buffer.
func Judge(start time.Time, timeout int, buffer time.Duration, now time.Time) Verdict {
	if start.IsZero() {
		return Verdict{}
	}
	elapsed := int64(math.Floor(float64(now.Sub(start).Milliseconds())/60000 + 0.5))
	limit := int64(timeout) + int64(buffer/time.Minute)
	return Verdict{Known: true, Elapsed: elapsed, Limit: limit, Over: elapsed > limit}
}

// parseEntry reads a timeoutConfigs value. startTime may be an ISO string
// (what the CI API sends queue-service) or epoch milliseconds; timeout
// follows parseInt, else DefaultTimeout.
func parseEntry(raw string) (jobID int64, start time.Time, timeout int, err error) {
	var e entry
	d := json.NewDecoder(strings.NewReader(raw))
	d.UseNumber()
	if err := d.Decode(&e); err != nil {
		return 0, time.Time{}, 0, fmt.Errorf("decoding %q: %w", raw, err)
	}
	jobID, err = e.JobID.Int64()
	if err != nil {
		return 0, time.Time{}, 0, fmt.Errorf("jobId of %q: %w", raw, err)
	}
	timeout = DefaultTimeout
	var s string
	if json.Unmarshal(e.Timeout, &s) != nil {
		s = string(e.Timeout)
	}
	if n, ok := parseIntPrefix(s); ok {
		timeout = n
	}
	if json.Unmarshal(e.StartTime, &s) == nil {
		if t, perr := time.Parse(time.RFC3339Nano, s); perr == nil {
			start = t
		}
	} else if ms, perr := strconv.ParseFloat(string(e.StartTime), 64); perr == nil && ms > 0 {
		start = time.UnixMilli(int64(ms))
	}
	return jobID, start, timeout, nil
}

func parseIntPrefix(s string) (int, bool) {
	s = strings.TrimSpace(s)
	end := 0
	for end < len(s) && (s[end] >= '0' && s[end] <= '9' || end == 0 && s[0] == '-') {
		end++
	}
	n, err := strconv.Atoi(s[:end])
	return n, err == nil
}

// Reporter is the CI API side of a timeout.
type Reporter interface {
	ActiveStep(ctx context.Context, apiURI string, buildID int64, token string) (string, error)
	StopStep(ctx context.Context, apiURI string, buildID int64, token, step string, code int, end time.Time) error
	ReportFailure(ctx context.Context, apiURI string, buildID int64, token, msg string) error
}

// Pods deletes a build's pods and tells when its build container started.
type Pods interface {
	Stop(ctx context.Context, buildID int64) error
	// BuildStartedAt is when the build's container started running (zero
	// if it has not, or the build has no pod of ours).
	BuildStartedAt(ctx context.Context, buildID int64) (time.Time, error)
}

// Marks records a stopped build, so that nothing relaunches it.
type Marks interface {
	MarkStopped(ctx context.Context, buildID int64) error
}

// Options tune the checker.
type Options struct {
	// Prefix is the queue prefix (REDIS_QUEUE_PREFIX).
	Prefix string
	// Namespace is the resque namespace: the pass and per-build locks live
	// under <namespace>:qw:.
	Namespace string
	// Identity names this replica in the pass lock.
	Identity string
	// Interval is the least time between two passes across all replicas
	// (queue-service: 60s per worker).
	Interval time.Duration
	// Buffer is added to each build's timeout (queue-service: 1 minute, so
	// the launcher's own timeout acts first).
	Buffer time.Duration
	// Timeout bounds each Redis call.
	Timeout time.Duration
}

// Deps are what the checker works with.
type Deps struct {
	Redis    redis.UniversalClient
	Reporter Reporter
	// Pods may be nil: no pod is deleted and the recorded start time is
	// the only one.
	Pods  Pods
	Marks Marks
	Log   *zap.Logger
	// Metrics may be nil (collectors not registered anywhere).
	Metrics *Metrics
	// Now is the clock (nil: time.Now).
	Now func() time.Time
}

// Checker records builds' timeout configs and fails builds past them.
type Checker struct {
	deps Deps
	opts Options
	keys gate.Keys
	m    *Metrics
}

// New returns a checker.
func New(deps Deps, opts Options) *Checker {
	if deps.Metrics == nil {
		deps.Metrics = NewMetrics(nil)
	}
	if deps.Now == nil {
		deps.Now = time.Now
	}
	if deps.Log == nil {
		deps.Log = zap.NewNop()
	}
	if opts.Interval <= 0 {
		opts.Interval = time.Minute
	}
	if opts.Buffer < 0 {
		opts.Buffer = 0
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	return &Checker{deps: deps, opts: opts, keys: gate.NewKeys(opts.Prefix), m: deps.Metrics}
}

// Record writes a started build's timeout config, unless one is there
// already (queue-service's startTimer, called when the build runs, writes
// only if absent too): {"jobId":..,"startTime":<now, ISO>,"timeout":<minutes>}.
func (c *Checker) Record(ctx context.Context, buildID, jobID int64, timeout int) error {
	raw, _ := json.Marshal(Record{JobID: jobID, StartTime: c.deps.Now().UTC().Format(jsTime), Timeout: timeout})
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	if err := c.deps.Redis.HSetNX(ctx, c.keys.TimeoutConfigs(), strconv.FormatInt(buildID, 10), raw).Err(); err != nil {
		return fmt.Errorf("recording the timeout config of build %d: %w", buildID, err)
	}
	return nil
}

func (c *Checker) passLock() string { return c.opts.Namespace + ":qw:timeout-pass" }

func (c *Checker) buildLock(buildID int64) string {
	return c.opts.Namespace + ":qw:timeout-lock:" + strconv.FormatInt(buildID, 10)
}

// Run checks every interval until ctx is done. Every replica runs it; a
// replica checks only when it takes the pass lock, which stays taken for an
// interval, so passes happen at most once per interval wherever they run,
// and a dead replica's turn is taken by another within one interval.
func (c *Checker) Run(ctx context.Context) {
	tick := c.opts.Interval / 6
	if tick < 100*time.Millisecond {
		tick = 100 * time.Millisecond
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		if ok, err := c.takePass(ctx); err != nil && ctx.Err() == nil {
			c.m.Errors.Inc()
			c.deps.Log.Warn("timeout checker: taking the pass lock failed", zap.Error(err))
		} else if ok {
			if _, err := c.Pass(ctx); err != nil && ctx.Err() == nil {
				c.m.Errors.Inc()
				c.deps.Log.Warn("timeout check pass failed", zap.Error(err))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (c *Checker) takePass(ctx context.Context) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	return c.deps.Redis.SetNX(ctx, c.passLock(), c.opts.Identity, c.opts.Interval).Result()
}

// inspectScript is checkTimeout's eligibility, applied to every entry: an
// entry whose build config is gone (the build finished) or whose job's
// running key names another build (or none) is dropped. For an eligible
// entry over its time (ARGV[2] "1") the build config is returned.
// KEYS timeoutConfigs, buildConfigs, running_job_<job>. ARGV build id, over.
// Returns {"cleanup"}, {"within"}, {"gone"} or {"over", config}.
var inspectScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return {'gone'} end
local cfg = redis.call('HGET', KEYS[2], ARGV[1])
if not cfg or redis.call('GET', KEYS[3]) ~= ARGV[1] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return {'cleanup'}
end
if ARGV[2] == '1' then return {'over', cfg} end
return {'within'}`)

// expireScript clears a timed-out build's state, if it is still the
// running build: its build config, its job's running and last-running keys,
// its place in the waiting list and its timeout config (queue-service's
// TIMEOUT branch). KEYS timeoutConfigs, buildConfigs, running, last running,
// waiting. ARGV build id. Returns 1 if it cleared.
var expireScript = redis.NewScript(`
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 or redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[3])
if redis.call('GET', KEYS[4]) == ARGV[1] then redis.call('DEL', KEYS[4]) end
redis.call('LREM', KEYS[5], 0, ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1`)

// Result counts what a pass did.
type Result struct {
	Checked, Cleaned, Failed int
}

// Pass checks every entry once.
func (c *Checker) Pass(ctx context.Context) (Result, error) {
	start := c.deps.Now()
	var res Result
	defer func() {
		c.m.Passes.Inc()
		c.m.PassSeconds.Observe(c.deps.Now().Sub(start).Seconds())
		c.m.Entries.Set(float64(res.Checked - res.Cleaned - res.Failed))
	}()
	var cursor uint64
	for {
		rctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
		kv, next, err := c.deps.Redis.HScan(rctx, c.keys.TimeoutConfigs(), cursor, "*", 500).Result()
		cancel()
		if err != nil {
			return res, fmt.Errorf("scanning %s: %w", c.keys.TimeoutConfigs(), err)
		}
		for i := 0; i+1 < len(kv); i += 2 {
			buildID, err := strconv.ParseInt(kv[i], 10, 64)
			if err != nil {
				continue
			}
			res.Checked++
			switch outcome, err := c.check(ctx, buildID, kv[i+1]); {
			case err != nil:
				c.m.Errors.Inc()
				c.deps.Log.Warn("timeout check of a build failed; next pass tries again", zap.Int64("build_id", buildID), zap.Error(err))
			case outcome == "cleanup":
				res.Cleaned++
			case outcome == "failed":
				res.Failed++
			}
		}
		cursor = next
		if cursor == 0 || ctx.Err() != nil {
			return res, ctx.Err()
		}
	}
}

// check inspects one entry and fails its build if it is over time.
func (c *Checker) check(ctx context.Context, buildID int64, raw string) (string, error) {
	log := c.deps.Log.With(zap.Int64("build_id", buildID))
	jobID, started, timeout, err := parseEntry(raw)
	if err != nil {
		// queue-service drops an entry it cannot process; so do we, loudly.
		log.Warn("dropping a timeoutConfigs entry that cannot be read", zap.Error(err))
		rctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
		defer cancel()
		return "cleanup", c.deps.Redis.HDel(rctx, c.keys.TimeoutConfigs(), strconv.FormatInt(buildID, 10)).Err()
	}
	now := c.deps.Now()
	v := Judge(started, timeout, c.opts.Buffer, now)
	if v.Over && c.deps.Pods != nil {
		// The launcher's own timer starts once the build container runs; a
		// build whose image pull or init took long is not over yet.
		if ran, err := c.deps.Pods.BuildStartedAt(ctx, buildID); err == nil && ran.After(started) {
			v = Judge(ran, timeout, c.opts.Buffer, now)
		}
	}
	if v.Over {
		ok, err := c.lock(ctx, buildID)
		if err != nil || !ok {
			return "locked", err
		}
	}
	rctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	r, err := inspectScript.Run(rctx, c.deps.Redis, []string{c.keys.TimeoutConfigs(), c.keys.BuildConfigs(), c.keys.Running(jobID)},
		buildID, boolFlag(v.Over)).StringSlice()
	cancel()
	if err != nil {
		c.unlock(ctx, buildID, v.Over)
		return "", fmt.Errorf("inspecting the timeout of build %d: %w", buildID, err)
	}
	if r[0] != "over" {
		c.unlock(ctx, buildID, v.Over)
		if r[0] == "cleanup" {
			log.Debug("dropped the timeout config of a build no longer running")
		}
		return r[0], nil
	}
	if err := c.fail(ctx, buildID, jobID, r[1], v, log); err != nil {
		c.unlock(ctx, buildID, true)
		return "", err
	}
	return "failed", nil
}

// fail reports the timeout, then clears the build's state and deletes its
// pods. The report comes first: if the CI API is down, the entry stays and
// the next pass tries again.
func (c *Checker) fail(ctx context.Context, buildID, jobID int64, rawConfig string, v Verdict, log *zap.Logger) error {
	var cfg struct {
		APIURI string `json:"apiUri"`
		Token  string `json:"token"`
	}
	if err := json.Unmarshal([]byte(rawConfig), &cfg); err != nil {
		return fmt.Errorf("decoding the build config of timed-out build %d: %w", buildID, err)
	}
	step, err := c.deps.Reporter.ActiveStep(ctx, cfg.APIURI, buildID, cfg.Token)
	if err != nil {
		// queue-service fails the build even without its step.
		log.Warn("no active step found for a timed-out build", zap.Error(err))
	}
	if step != "" {
		if err := c.deps.Reporter.StopStep(ctx, cfg.APIURI, buildID, cfg.Token, step, TimeoutCode, c.deps.Now()); err != nil {
			log.Warn("ending the active step of a timed-out build failed", zap.String("step", step), zap.Error(err))
		}
	}
	if err := c.deps.Reporter.ReportFailure(ctx, cfg.APIURI, buildID, cfg.Token, Message); err != nil {
		return fmt.Errorf("reporting the timeout of build %d: %w", buildID, err)
	}
	rctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	_, err = expireScript.Run(rctx, c.deps.Redis,
		[]string{c.keys.TimeoutConfigs(), c.keys.BuildConfigs(), c.keys.Running(jobID), c.keys.LastRunning(jobID), c.keys.Waiting(jobID)},
		buildID).Int()
	cancel()
	if err != nil {
		log.Warn("clearing a timed-out build's state failed; its keys expire on their own", zap.Error(err))
	}
	c.m.Failed.Inc()
	log.Info("build failed due to timeout", zap.Int64("job_id", jobID), zap.String("step", step),
		zap.Int64("elapsed_minutes", v.Elapsed), zap.Int64("limit_minutes", v.Limit), zap.String("reason", "timeout"))
	if c.deps.Marks != nil {
		if err := c.deps.Marks.MarkStopped(ctx, buildID); err != nil {
			log.Warn("marking a timed-out build stopped failed", zap.Error(err))
		}
	}
	if c.deps.Pods != nil {
		if err := c.deps.Pods.Stop(ctx, buildID); err != nil {
			log.Warn("deleting a timed-out build's pods failed", zap.Error(err))
		}
	}
	return nil
}

// lock takes the per-build lock for as long as a failing build may take
// (the CI API calls retry), so two replicas never fail one build at once.
func (c *Checker) lock(ctx context.Context, buildID int64) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.Timeout)
	defer cancel()
	ok, err := c.deps.Redis.SetNX(ctx, c.buildLock(buildID), c.opts.Identity, 5*time.Minute).Result()
	if err != nil {
		return false, fmt.Errorf("locking build %d for its timeout: %w", buildID, err)
	}
	return ok, nil
}

func (c *Checker) unlock(ctx context.Context, buildID int64, held bool) {
	if !held {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opts.Timeout)
	defer cancel()
	if err := c.deps.Redis.Del(ctx, c.buildLock(buildID)).Err(); err != nil && !errors.Is(err, redis.Nil) {
		c.deps.Log.Warn("releasing a build's timeout lock failed; it expires on its own", zap.Int64("build_id", buildID), zap.Error(err))
	}
}

func boolFlag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Metrics are the checker's collectors.
type Metrics struct {
	Passes      prometheus.Counter
	PassSeconds prometheus.Histogram
	Failed      prometheus.Counter
	Errors      prometheus.Counter
	Entries     prometheus.Gauge
}

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Passes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "timeout", Name: "passes_total",
			Help: "Timeout checker passes run by this replica (at most one per interval across replicas)."}),
		PassSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "queue_worker", Subsystem: "timeout", Name: "pass_seconds",
			Help: "Duration of one timeout checker pass.", Buckets: prometheus.ExponentialBuckets(0.005, 2, 14)}),
		Failed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "timeout", Name: "builds_failed_total",
			Help: "Builds failed because they ran past their timeout plus the buffer."}),
		Errors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "queue_worker", Subsystem: "timeout", Name: "errors_total",
			Help: "Timeout checks that failed (Redis or CI API errors); the next pass tries again."}),
		Entries: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "queue_worker", Subsystem: "timeout", Name: "tracked_builds",
			Help: "Builds in timeoutConfigs after this replica's last pass."}),
	}
	if reg != nil {
		reg.MustRegister(m.Passes, m.PassSeconds, m.Failed, m.Errors, m.Entries)
	}
	return m
}
