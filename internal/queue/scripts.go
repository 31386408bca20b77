package queue

import "github.com/redis/go-redis/v9"

// Every state change of a job is one Lua script, so it is atomic whatever
// dies when. Settling scripts act only if the job is still in the slot's
// in-flight list: a job a recoverer already returned is never written twice.
// Lease deadlines come from Redis's own clock (TIME), so replicas with skewed
// clocks agree on what has expired.

// ackScript: KEYS inflight, stat:processed, stat:processed:<slot>, worker record.
const ackBody = `
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  redis.call('INCR', KEYS[2])
  redis.call('INCR', KEYS[3])
  redis.call('DEL', KEYS[4])
end
`

var (
	ackScript     = redis.NewScript(ackBody + "return n")
	ackTakeScript = redis.NewScript(ackBody + takeNextTail)
)

// failScript: KEYS inflight, failed, stat:failed, stat:failed:<slot>, worker
// record, the job's queue. ARGV raw job, failed entry, report job ("" for
// none). The report job (e.g. the FAILURE report of a start that will never
// run) is pushed in the same step, so it exists iff the failed entry does.
const failBody = `
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('INCR', KEYS[3])
  redis.call('INCR', KEYS[4])
  redis.call('DEL', KEYS[5])
  if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[6], ARGV[3]) end
end
`

var (
	failScript     = redis.NewScript(failBody + "return n")
	failTakeScript = redis.NewScript(failBody + takeNextTail)
)

// requeueScript: KEYS inflight, queue, worker record. ARGV raw job.
// Puts the job back at the head of its queue.
var requeueScript = redis.NewScript(`
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
end
return n`)

// delayScript schedules a job the way node-resque's enqueueAt does, so its
// scheduler and ours both move it when due.
// KEYS inflight, delayed:<ts>, timestamps:<new job>, delayed_queue_schedule, worker record.
// ARGV raw job, new job bytes, ts.
const delayBody = `
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  local member = 'delayed:' .. ARGV[3]
  -- The same bytes already due the same second: one copy is enough.
  if redis.call('SISMEMBER', KEYS[3], member) == 0 then
    redis.call('RPUSH', KEYS[2], ARGV[2])
    redis.call('SADD', KEYS[3], member)
    redis.call('ZADD', KEYS[4], tonumber(ARGV[3]), ARGV[3])
  end
  redis.call('DEL', KEYS[5])
end
`

var (
	delayScript     = redis.NewScript(delayBody + "return n")
	delayTakeScript = redis.NewScript(delayBody + takeNextTail)
)

// takeNextTail ends the *TakeScript variants of the settling scripts: after
// a settle that found the job in flight (n == 1), it moves the next job of
// the slot's queue into the slot's in-flight list (emptied by the settle) and
// writes resque's worker record for it, in the same atomic step. So the slot
// owns the next job, crash-safely, before the reply leaves Redis, and the
// slot needs no separate take (BLMOVE) while its queue has work.
//
// The variants take two extra KEYS after the settle's own: the slot's queue
// and its worker record; and two extra ARGV: the record's text before and
// after the payload (the raw job is the payload). They return {n} when
// nothing was taken (settle not applied, or the queue empty) and {n, job}
// when the job was taken.
const takeNextTail = `
if n ~= 1 then return {n} end
local job = redis.call('LMOVE', KEYS[#KEYS-1], KEYS[1], 'LEFT', 'RIGHT')
if not job then return {n} end
redis.call('SET', KEYS[#KEYS], ARGV[#ARGV-1] .. job .. ARGV[#ARGV])
return {n, job}`

// moveDueScript moves the jobs of one due timestamp into their queues
// (RPUSH, as node-resque's scheduler does), at most ARGV[4] per call.
// Atomic, so replicas and a node-resque scheduler running at once never move
// a job twice. KEYS delayed_queue_schedule, delayed:<ts>, queues.
// ARGV ts, namespace, fallback queue, limit.
var moveDueScript = redis.NewScript(`
local moved = 0
local limit = tonumber(ARGV[4])
while moved < limit do
  local job = redis.call('LPOP', KEYS[2])
  if not job then break end
  redis.call('SREM', ARGV[2] .. ':timestamps:' .. job, 'delayed:' .. ARGV[1])
  local q = ARGV[3]
  local ok, decoded = pcall(cjson.decode, job)
  if ok and type(decoded) == 'table' and type(decoded['queue']) == 'string' and decoded['queue'] ~= '' then
    q = decoded['queue']
  end
  redis.call('SADD', KEYS[3], q)
  redis.call('RPUSH', ARGV[2] .. ':queue:' .. q, job)
  moved = moved + 1
end
if redis.call('LLEN', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[1], ARGV[1])
end
return moved`)

// heartbeatScript leases slots (registering them on the first beat) and
// keeps their resque worker records fresh. KEYS leases, slots, workers.
// ARGV lease ms, then per slot six values: name, queue, workers-set member,
// started key, ping key, "1" on the first beat else "0".
// Returns the names of slots whose lease had vanished (recovered elsewhere):
// their owner must stop working the job it holds.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now_ms + tonumber(ARGV[1])
local lost = {}
local i = 2
while i + 5 <= #ARGV do
  local slot, q, member, started, ping, first = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5]
  if first == '0' and redis.call('ZSCORE', KEYS[1], slot) == false then
    table.insert(lost, slot)
  end
  redis.call('ZADD', KEYS[1], deadline, slot)
  redis.call('HSET', KEYS[2], slot, q)
  redis.call('SADD', KEYS[3], member)
  if first == '1' then redis.call('SET', started, t[1]) end
  redis.call('SET', ping, '{"time":' .. t[1] .. ',"name":"' .. slot .. '","queues":"' .. q .. '"}')
  i = i + 6
end
return lost`)

// recoverScript returns a slot's in-flight jobs to the head of its queue if
// its lease expired or is missing, and clears its resque registration (so
// node-resque's stuck-worker cleanup never writes the job to failed later).
// KEYS leases, slots, inflight, queue, workers, worker record, ping, started,
// stat:processed:<slot>, stat:failed:<slot>.
// ARGV slot, workers-set member. Returns jobs moved, or -1 if the lease is live.
var recoverScript = redis.NewScript(`
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if deadline and tonumber(deadline) > now_ms then return -1 end
local moved = 0
while redis.call('LMOVE', KEYS[3], KEYS[4], 'RIGHT', 'LEFT') do
  moved = moved + 1
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[2])
redis.call('DEL', KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10])
return moved`)

// unregisterScript is a clean shutdown of an idle slot (node-resque's worker
// end plus our lease). KEYS leases, slots, workers, worker record, ping,
// started, stat:processed:<slot>, stat:failed:<slot>, inflight.
// ARGV slot, workers-set member. A slot still holding a job keeps its lease
// record so a recoverer returns the job once the lease runs out.
var unregisterScript = redis.NewScript(`
if redis.call('LLEN', KEYS[9]) > 0 then return 0 end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[2])
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
return 1`)
