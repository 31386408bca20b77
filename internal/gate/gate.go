package gate

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// Keys names queue-service's side keys. They are plain keys (no resque
// namespace), built from the queue prefix exactly as queue-service builds
// them; on Redis Cluster they share a slot only if the prefix carries a
// {hash tag}.
type Keys struct{ prefix string }

// NewKeys returns the key names for a queue prefix (REDIS_QUEUE_PREFIX).
func NewKeys(prefix string) Keys { return Keys{prefix: prefix} }

func id(n int64) string { return strconv.FormatInt(n, 10) }

// Running holds the build of a job that is running (or starting).
func (k Keys) Running(jobID int64) string { return k.prefix + "running_job_" + id(jobID) }

// LastRunning holds the build of a job that started last.
func (k Keys) LastRunning(jobID int64) string { return "last_" + k.prefix + "running_job_" + id(jobID) }

// Waiting lists the blocked builds of a job, oldest first.
func (k Keys) Waiting(jobID int64) string { return k.prefix + "waiting_job_" + id(jobID) }

// Deleted is set (to "") by queue-service's stop for a build aborted while
// queued; it has no prefix.
func (k Keys) Deleted(jobID, buildID int64) string { return "deleted_" + id(jobID) + "_" + id(buildID) }

// BuildConfigs is the buildId → build config hash.
func (k Keys) BuildConfigs() string { return k.prefix + "buildConfigs" }

// TimeoutConfigs is the buildId → {"jobId","startTime","timeout"} hash the
// timeout checker reads.
func (k Keys) TimeoutConfigs() string { return k.prefix + "timeoutConfigs" }

// Action is what the gate decided for a start.
type Action string

// Actions of a decision.
const (
	// Start: the build may run; it now holds its job's running key.
	Start Action = "start"
	// Block: a blocking build is running; the build waits in its job's
	// waiting list and its start comes back after the re-enqueue wait.
	Block Action = "block"
	// Collapse: a newer build of the job supersedes this one; it never runs.
	Collapse Action = "collapse"
)

// Reasons of a decision (bounded: they are metric labels).
const (
	ReasonReady = "ready"
	// ReasonAlreadyRunning: the running key already names this build (a
	// retried or redelivered start whose first attempt got past the gate).
	ReasonAlreadyRunning = "already_running"
	// ReasonUngated: the start names no job, so there is nothing to gate.
	ReasonUngated         = "ungated"
	ReasonBlockedByJobs   = "blocked_by_jobs"
	ReasonBlockedBySelf   = "blocked_by_same_job"
	ReasonOlderThanLast   = "older_than_last_running"
	ReasonNewerBuildWaits = "newer_build_waiting"
)

// Decision is the gate's answer for one start.
type Decision struct {
	Action Action
	Reason string
	// Blocking are the running builds that block this one (Block).
	Blocking []int64
	// CollapsedTo is the newer build this one gave way to (Collapse).
	CollapsedTo int64
}

// Message is the status message the CI API gets, as queue-service words it.
func (d Decision) Message() string {
	switch d.Action {
	case Block:
		links := make([]string, len(d.Blocking))
		for i, b := range d.Blocking {
			links[i] = fmt.Sprintf(`<a href="/builds/%d">%d</a>`, b, b)
		}
		return "Blocked by these running build(s): " + strings.Join(links, ", ")
	case Collapse:
		return "Collapsed to build: " + id(d.CollapsedTo)
	}
	return ""
}

// Status is the build status the CI API gets: BLOCKED or COLLAPSED ("" for
// a start).
func (d Decision) Status() string {
	switch d.Action {
	case Block:
		return "BLOCKED"
	case Collapse:
		return "COLLAPSED"
	}
	return ""
}

// Request is one start as the gate sees it.
type Request struct {
	BuildID int64
	JobID   int64
	// BlockedBy are the jobs whose running builds block this one; the job
	// itself may be listed (queue-service always lists it) and is governed
	// by BlockedBySelf instead.
	BlockedBy     []int64
	BlockedBySelf bool
	Collapse      bool
	// RunningTTL is how long the running key lives (last running: twice
	// that), so a build whose stop never comes blocks no one forever.
	RunningTTL time.Duration
}

// Options tune the gate.
type Options struct {
	Prefix string
	// Timeout bounds each Redis call.
	Timeout time.Duration
}

// Deps are what the gate works with.
type Deps struct {
	Redis redis.UniversalClient
	// Metrics may be nil (collectors not registered anywhere).
	Metrics *Metrics
}

// Gate decides starts and releases builds.
type Gate struct {
	rdb  redis.UniversalClient
	keys Keys
	opts Options
	m    *Metrics
}

// New returns a gate.
func New(deps Deps, opts Options) *Gate {
	if deps.Metrics == nil {
		deps.Metrics = NewMetrics(nil)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 5 * time.Second
	}
	return &Gate{rdb: deps.Redis, keys: NewKeys(opts.Prefix), opts: opts, m: deps.Metrics}
}

// Keys are the gate's key names.
func (g *Gate) Keys() Keys { return g.keys }

// decideScript is the whole start decision, atomic. Order of the rules
// (queue-service's priority, abort aside: the caller checks stop marks
// before and after): already running > collapse > block > start.
//
// KEYS[1] running_job_<job>, KEYS[2] last_running_job_<job>,
// KEYS[3] waiting_job_<job>, KEYS[4..] running_job_<blocking job> (the job
// itself excluded). ARGV[1] build id, ARGV[2] blocked by self "1"/"0",
// ARGV[3] collapse "1"/"0", ARGV[4] running key TTL (seconds), ARGV[5] "1"
// to apply, "0" for a dry run (explain). Returns {action, reason, ids...}.
var decideScript = redis.NewScript(`
local build = ARGV[1]
local b = tonumber(build)
local apply = ARGV[5] == '1'
local running = redis.call('GET', KEYS[1])
if running == build then return {'start', 'already_running'} end
local waiting = redis.call('LRANGE', KEYS[3], 0, -1)
if ARGV[3] == '1' then
  -- An older build than the one that started last never runs after it
  -- (queue-service's earlier worker; its Lua version only checks this
  -- while builds wait).
  local last = redis.call('GET', KEYS[2])
  if last and tonumber(last) and b < tonumber(last) then
    if apply then redis.call('LREM', KEYS[3], 0, build) end
    return {'collapse', 'older_than_last_running', last}
  end
  local newest, newestN = nil, nil
  for _, w in ipairs(waiting) do
    local n = tonumber(w)
    if n and (not newestN or n > newestN) then newest, newestN = w, n end
  end
  if newestN and b < newestN then
    if apply then redis.call('LREM', KEYS[3], 0, build) end
    return {'collapse', 'newer_build_waiting', newest}
  end
end
local out = {}
for i = 4, #KEYS do
  local r = redis.call('GET', KEYS[i])
  if r then table.insert(out, r) end
end
local reason = nil
if #out > 0 then
  reason = 'blocked_by_jobs'
elseif ARGV[2] == '1' and running then
  reason = 'blocked_by_same_job'
  out = {running}
end
if reason then
  if apply then
    local present = false
    for _, w in ipairs(waiting) do
      if w == build then present = true break end
    end
    if not present then redis.call('RPUSH', KEYS[3], build) end
  end
  table.insert(out, 1, reason)
  table.insert(out, 1, 'block')
  return out
end
if apply then
  local ttl = tonumber(ARGV[4])
  redis.call('SET', KEYS[1], build, 'EX', ttl)
  redis.call('SET', KEYS[2], build, 'EX', ttl * 2)
  redis.call('LREM', KEYS[3], 0, build)
end
return {'start', 'ready'}`)

// releaseScript is queue-service's stop cleanup for one build: the running
// and last-running keys if they name it, its place in the waiting list, its
// build config and its timeout config. The deleted_ mark is left to expire:
// it is what tells a start still in the schedule that its build was aborted.
// KEYS running, last running, waiting, buildConfigs, timeoutConfigs.
// ARGV build id. Returns 1 if the build held the running key.
var releaseScript = redis.NewScript(`
local build = ARGV[1]
local held = 0
if redis.call('GET', KEYS[1]) == build then
  redis.call('DEL', KEYS[1])
  held = 1
end
if redis.call('GET', KEYS[2]) == build then redis.call('DEL', KEYS[2]) end
redis.call('LREM', KEYS[3], 0, build)
redis.call('HDEL', KEYS[4], build)
redis.call('HDEL', KEYS[5], build)
return held`)

// Decide takes the start decision for a build, atomically, and applies it:
// a started build holds its job's running key, a blocked one is in its
// job's waiting list, a collapsed one is out of it.
func (g *Gate) Decide(ctx context.Context, r Request) (Decision, error) {
	d, err := g.run(ctx, r, true)
	if err == nil {
		g.m.Decisions.WithLabelValues(string(d.Action), d.Reason).Inc()
	}
	return d, err
}

// Peek is Decide without writing anything: what the gate would decide now.
func (g *Gate) Peek(ctx context.Context, r Request) (Decision, error) {
	return g.run(ctx, r, false)
}

func (g *Gate) run(ctx context.Context, r Request, apply bool) (Decision, error) {
	if r.JobID <= 0 {
		return Decision{Action: Start, Reason: ReasonUngated}, nil
	}
	keys := []string{g.keys.Running(r.JobID), g.keys.LastRunning(r.JobID), g.keys.Waiting(r.JobID)}
	seen := map[int64]bool{r.JobID: true}
	for _, j := range r.BlockedBy {
		if !seen[j] && j > 0 {
			seen[j] = true
			keys = append(keys, g.keys.Running(j))
		}
	}
	ttl := int64(r.RunningTTL / time.Second)
	if ttl < 1 {
		ttl = 1
	}
	ctx, cancel := context.WithTimeout(ctx, g.opts.Timeout)
	defer cancel()
	res, err := decideScript.Run(ctx, g.rdb, keys, r.BuildID, flag(r.BlockedBySelf), flag(r.Collapse), ttl, flag(apply)).StringSlice()
	if err != nil {
		return Decision{}, fmt.Errorf("deciding the start of build %d (job %d): %w", r.BuildID, r.JobID, err)
	}
	return parseDecision(res)
}

func parseDecision(res []string) (Decision, error) {
	if len(res) < 2 {
		return Decision{}, fmt.Errorf("gate script answered %q", res)
	}
	d := Decision{Action: Action(res[0]), Reason: res[1]}
	ids := make([]int64, 0, len(res)-2)
	for _, s := range res[2:] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			// A running key holding something other than a build id still
			// blocks; it just cannot be linked.
			continue
		}
		ids = append(ids, n)
	}
	switch d.Action {
	case Block:
		d.Blocking = ids
	case Collapse:
		if len(ids) > 0 {
			d.CollapsedTo = ids[0]
		}
	case Start:
	default:
		return Decision{}, fmt.Errorf("gate script answered an unknown action %q", d.Action)
	}
	return d, nil
}

// Release drops a build's part of the start state, as queue-service's stop
// does: its running and last-running keys if they name it, its place in the
// waiting list, its build config and its timeout config. It reports whether
// the build held its job's running key. jobID 0 (a stop without its job)
// drops only the configs.
func (g *Gate) Release(ctx context.Context, buildID, jobID int64, cause string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, g.opts.Timeout)
	defer cancel()
	if jobID <= 0 {
		_, err := g.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.HDel(ctx, g.keys.BuildConfigs(), id(buildID))
			p.HDel(ctx, g.keys.TimeoutConfigs(), id(buildID))
			return nil
		})
		if err != nil {
			return false, fmt.Errorf("releasing build %d: %w", buildID, err)
		}
		g.m.Releases.WithLabelValues(cause).Inc()
		return false, nil
	}
	keys := []string{g.keys.Running(jobID), g.keys.LastRunning(jobID), g.keys.Waiting(jobID), g.keys.BuildConfigs(), g.keys.TimeoutConfigs()}
	held, err := releaseScript.Run(ctx, g.rdb, keys, buildID).Int()
	if err != nil {
		return false, fmt.Errorf("releasing build %d of job %d: %w", buildID, jobID, err)
	}
	g.m.Releases.WithLabelValues(cause).Inc()
	return held == 1, nil
}

// ErrBadBlockedBy marks a blockedBy value that names no job ids.
var ErrBadBlockedBy = errors.New("blockedBy is not a list of job ids")

func flag(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// Metrics are the gate's collectors.
type Metrics struct {
	// Decisions counts start decisions by action and reason.
	Decisions *prometheus.CounterVec
	// Releases counts builds released from the start state, by cause
	// (stop, aborted, collapsed, dead_lettered, virtual, timeout).
	Releases *prometheus.CounterVec
}

// Release causes (metric labels).
const (
	CauseStop         = "stop"
	CauseAborted      = "aborted"
	CauseCollapsed    = "collapsed"
	CauseDeadLettered = "dead_lettered"
	CauseVirtual      = "virtual"
)

// NewMetrics creates the collectors and registers them with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Subsystem: "gate", Name: "decisions_total",
			Help: "Start decisions of the blocked-by/collapse gate, by action (start, block, collapse) and reason.",
		}, []string{"action", "reason"}),
		Releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "queue_worker", Subsystem: "gate", Name: "releases_total",
			Help: "Builds released from their job's running/waiting state, by cause.",
		}, []string{"cause"}),
	}
	for _, p := range [][2]string{
		{string(Start), ReasonReady}, {string(Start), ReasonAlreadyRunning}, {string(Block), ReasonBlockedByJobs},
		{string(Block), ReasonBlockedBySelf}, {string(Collapse), ReasonOlderThanLast}, {string(Collapse), ReasonNewerBuildWaits},
	} {
		m.Decisions.WithLabelValues(p[0], p[1])
	}
	for _, c := range []string{CauseStop, CauseAborted, CauseCollapsed, CauseDeadLettered, CauseVirtual} {
		m.Releases.WithLabelValues(c)
	}
	if reg != nil {
		reg.MustRegister(m.Decisions, m.Releases)
	}
	return m
}
