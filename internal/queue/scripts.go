package queue

import "github.com/redis/go-redis/v9"

// Every state change of a job is one Lua script, so it is atomic whatever
// dies when. Settling scripts act only if the job is still in the slot's
// in-flight list: a job a recoverer already returned is never written twice.
// Lease deadlines and delayed-job timestamps come from Redis's own clock
// (TIME), so replicas with skewed clocks agree on what has expired and what
// is due.
//
// The settling scripts (ack, fail, delay, requeue) share one layout:
//
//	KEYS[1] the slot's in-flight list, KEYS[2] the slot's queue,
//	KEYS[3] the slot's worker record, then the operation's own keys;
//	ARGV[1] the raw job, then the operation's own arguments.
//
// They return {n, swept}: n is 1 if the job was in flight (and the settle
// applied), 0 if not; swept counts the other entries found in the in-flight
// list and returned to the head of the slot's queue (see sweepTail).
//
// Their *TakeScript variants append KEYS leases and ARGV slot name, worker
// record head and tail, and return {n, swept, took[, job]} (see takeNextTail).

// sweepTail: a slot works one job at a time, so once its job is settled,
// anything still in its in-flight list is not being worked by anyone: a job
// whose settle a Redis failover or a restart from a snapshot undid, sitting
// behind the current one under a live lease no recoverer touches. It goes
// back to the head of the queue, oldest first.
const sweepTail = `
local swept = 0
if n == 1 then
  while redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT') do swept = swept + 1 end
end
`

// ackBody: KEYS inflight, slot queue, worker record, stat:processed,
// stat:processed:<slot>.
const ackBody = `
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  redis.call('INCR', KEYS[4])
  redis.call('INCR', KEYS[5])
  redis.call('DEL', KEYS[3])
end
` + sweepTail

var (
	ackScript     = redis.NewScript(ackBody + "return {n, swept}")
	ackTakeScript = redis.NewScript(ackBody + takeNextTail)
)

// failBody: KEYS inflight, slot queue, worker record, failed, stat:failed,
// stat:failed:<slot>, the job's queue. ARGV raw job, failed entry, report
// job ("" for none). The report job (e.g. the FAILURE report of a start that
// will never run) is pushed in the same step, so it exists iff the failed
// entry does.
const failBody = `
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  redis.call('RPUSH', KEYS[4], ARGV[2])
  redis.call('INCR', KEYS[5])
  redis.call('INCR', KEYS[6])
  redis.call('DEL', KEYS[3])
  if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[7], ARGV[3]) end
end
` + sweepTail

var (
	failScript     = redis.NewScript(failBody + "return {n, swept}")
	failTakeScript = redis.NewScript(failBody + takeNextTail)
)

// requeueSettleScript returns the job to the head of its queue unchanged (a
// Requeue outcome). KEYS inflight, slot queue, worker record. ARGV raw job.
var requeueSettleScript = redis.NewScript(`
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  redis.call('DEL', KEYS[3])
end
` + sweepTail + `
if n == 1 then redis.call('LPUSH', KEYS[2], ARGV[1]) end
return {n, swept}`)

// requeueScript moves one given entry of an in-flight list back to the head
// of a queue (leftovers of a previous process, a job given back at stop).
// KEYS inflight, queue, worker record. ARGV raw job. Returns n.
var requeueScript = redis.NewScript(`
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  redis.call('DEL', KEYS[3])
end
return n`)

// delayBody schedules a job the way node-resque's enqueueAt does, so its
// scheduler and ours both move it when due; the due second is
// round((Redis TIME + delay) / 1000), node-resque's rounding on Redis's clock.
// KEYS inflight, slot queue, worker record, delayed_queue_schedule.
// ARGV raw job, new job bytes, delay ms, namespace. The delayed:<ts> and
// timestamps:<new job> keys are built from the namespace (the second is not
// known before TIME is read); they carry its hash tag, so on Redis Cluster
// they sit in the same slot as the declared keys.
const delayBody = `
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  local t = redis.call('TIME')
  local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ts = string.format('%d', math.floor((now_ms + tonumber(ARGV[3])) / 1000 + 0.5))
  local member = 'delayed:' .. ts
  local stamps = ARGV[4] .. ':timestamps:' .. ARGV[2]
  -- The same bytes already due the same second: one copy is enough.
  if redis.call('SISMEMBER', stamps, member) == 0 then
    redis.call('RPUSH', ARGV[4] .. ':' .. member, ARGV[2])
    redis.call('SADD', stamps, member)
    redis.call('ZADD', KEYS[4], tonumber(ts), ts)
  end
  redis.call('DEL', KEYS[3])
end
` + sweepTail

var (
	delayScript     = redis.NewScript(delayBody + "return {n, swept}")
	delayTakeScript = redis.NewScript(delayBody + takeNextTail)
)

// Values of took in a take variant's reply.
const (
	tookNothing   = 0 // the settle did not apply, or the queue is empty
	tookJob       = 1 // the reply's 4th element is the job taken
	tookNotLeased = 2 // the slot's lease is not live: re-lease before taking
)

// takeNextTail ends the *TakeScript variants of the settling scripts: after
// a settle that found the job in flight (n == 1), it moves the next job of
// the slot's queue into the slot's in-flight list (emptied by the settle and
// the sweep) and writes resque's worker record for it, in the same atomic
// step. So the slot owns the next job, crash-safely, before the reply leaves
// Redis, and the slot needs no separate take (BLMOVE) while its queue has
// work. It takes only under a live lease (deadline after Redis TIME): a slot
// whose lease expired or vanished may already have been recovered, and a job
// taken under no lease would be returned by a recoverer while it runs.
//
// The variants take one extra KEY after the settle's own, the leases zset;
// and three extra ARGV: the slot's name and the record's text before and
// after the payload (the raw job is the payload).
const takeNextTail = `
if n ~= 1 then return {n, swept, 0} end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('ZSCORE', KEYS[#KEYS], ARGV[#ARGV-2])
if not deadline or tonumber(deadline) <= now_ms then return {n, swept, 2} end
local job = redis.call('LMOVE', KEYS[2], KEYS[1], 'LEFT', 'RIGHT')
if not job then return {n, swept, 0} end
redis.call('SET', KEYS[3], ARGV[#ARGV-1] .. job .. ARGV[#ARGV])
return {n, swept, 1, job}`

// dueScript lists up to ARGV[1] delayed timestamps due by Redis's clock,
// rounded to the second as node-resque's scheduler rounds its own.
// KEYS delayed_queue_schedule.
var dueScript = redis.NewScript(`
local t = redis.call('TIME')
local now_s = math.floor((tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)) / 1000 + 0.5)
return redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_s, 'LIMIT', 0, tonumber(ARGV[1]))`)

// moveDueScript moves the jobs of one due timestamp into their queues
// (RPUSH, as node-resque's scheduler does), at most ARGV[4] per call.
// Atomic, so replicas and a node-resque scheduler running at once never move
// a job twice. KEYS delayed_queue_schedule, delayed:<ts>, queues.
// ARGV ts, namespace, fallback queue, limit. (cjson refuses nesting beyond
// 1000 levels with an error, caught here: such a job goes to the fallback
// queue, where the consumer's limits reject it.)
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
// ARGV lease ms, then per slot seven values: name, queue, workers-set
// member, started key, ping key, in-flight key, "1" on the first beat else
// "0". (The per-slot keys share the namespace's hash tag.)
// Returns {lost, lengths}: the names of slots whose lease had vanished
// (recovered elsewhere) or expired (a recoverer may be moving their job right
// now), whose owner must stop working the job it holds; and the length of
// every slot's in-flight list, in ARGV order, so an idle slot finds entries
// it does not hold.
var heartbeatScript = redis.NewScript(`
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = now_ms + tonumber(ARGV[1])
local lost, lengths = {}, {}
local i = 2
while i + 6 <= #ARGV do
  local slot, q, member, started, ping, inflight, first = ARGV[i], ARGV[i+1], ARGV[i+2], ARGV[i+3], ARGV[i+4], ARGV[i+5], ARGV[i+6]
  if first == '0' then
    local old = redis.call('ZSCORE', KEYS[1], slot)
    if old == false or tonumber(old) <= now_ms then table.insert(lost, slot) end
  end
  redis.call('ZADD', KEYS[1], deadline, slot)
  redis.call('HSET', KEYS[2], slot, q)
  redis.call('SADD', KEYS[3], member)
  if first == '1' then redis.call('SET', started, t[1]) end
  redis.call('SET', ping, '{"time":' .. t[1] .. ',"name":"' .. slot .. '","queues":"' .. q .. '"}')
  table.insert(lengths, redis.call('LLEN', inflight))
  i = i + 7
end
return {lost, lengths}`)

// recoverScript returns a slot's in-flight jobs to the head of its queue if
// its lease expired or is missing, and clears its resque registration (so
// node-resque's stuck-worker cleanup never writes the job to failed later).
// Each job returned is counted, by the SHA-1 of its bytes, in a key that
// lives ARGV[5] ms: a job found in a dead slot more than ARGV[3] times is
// suspected of killing its workers and goes to the poison list instead
// (entry "<slot>\n<queue>\n<count>\n<job>"), from which the recoverer writes
// it to the failed list.
// KEYS leases, slots, inflight, queue, workers, worker record, ping, started,
// stat:processed:<slot>, stat:failed:<slot>, poison list.
// ARGV slot, workers-set member, max recoveries, recovery-count key prefix
// (in the namespace, so in its hash slot), count TTL ms, queue name.
// Returns {returned, poisoned}, or {-1, 0} if the lease is live.
var recoverScript = redis.NewScript(`
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local deadline = redis.call('ZSCORE', KEYS[1], ARGV[1])
if deadline and tonumber(deadline) > now_ms then return {-1, 0} end
local moved, poisoned = 0, 0
local max = tonumber(ARGV[3])
while true do
  local job = redis.call('RPOP', KEYS[3])
  if not job then break end
  local counter = ARGV[4] .. redis.sha1hex(job)
  local count = redis.call('INCR', counter)
  redis.call('PEXPIRE', counter, ARGV[5])
  if count > max then
    redis.call('LPUSH', KEYS[11], ARGV[1] .. '\n' .. ARGV[6] .. '\n' .. count .. '\n' .. job)
    poisoned = poisoned + 1
  else
    redis.call('LPUSH', KEYS[4], job)
    moved = moved + 1
  end
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('SREM', KEYS[5], ARGV[2])
redis.call('DEL', KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10])
return {moved, poisoned}`)

// poisonFailScript writes one poison-list entry's job to the failed list,
// and its dead-letter notice (if any) to the job's queue in the same step.
// KEYS poison list, failed, stat:failed, the job's recovery counter, the
// job's queue. ARGV poison entry, failed entry, notice job ("" for none).
// Returns 1 if the entry was still there.
var poisonFailScript = redis.NewScript(`
local n = redis.call('LREM', KEYS[1], 1, ARGV[1])
if n == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[2])
  redis.call('INCR', KEYS[3])
  redis.call('DEL', KEYS[4])
  if ARGV[3] ~= '' then redis.call('RPUSH', KEYS[5], ARGV[3]) end
end
return n`)

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
