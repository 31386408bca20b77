package queue

import (
	"crypto/sha1"
	"encoding/hex"
	"strconv"
)

// Keys builds resque key names under one namespace ("resque", or
// "resque:{screwdriver-resque}" on Redis Cluster, whose hash tag keeps every
// key in one slot so multi-key scripts stay legal).
type Keys struct {
	ns string
}

// NewKeys returns the key builder for a namespace.
func NewKeys(namespace string) Keys { return Keys{ns: namespace} }

// Namespace is the resque namespace.
func (k Keys) Namespace() string { return k.ns }

// Queue is the list a producer RPUSHes jobs onto.
func (k Keys) Queue(name string) string { return k.ns + ":queue:" + name }

// Queues is the set of known queue names.
func (k Keys) Queues() string { return k.ns + ":queues" }

// Failed is the failed-jobs list node-resque's tooling reads.
func (k Keys) Failed() string { return k.ns + ":failed" }

// StatProcessed is node-resque's global success counter.
func (k Keys) StatProcessed() string { return k.ns + ":stat:processed" }

// StatFailed is node-resque's global failure counter.
func (k Keys) StatFailed() string { return k.ns + ":stat:failed" }

// WorkerStatProcessed and WorkerStatFailed are the per-worker counters.
func (k Keys) WorkerStatProcessed(worker string) string { return k.ns + ":stat:processed:" + worker }

// WorkerStatFailed is the per-worker failure counter.
func (k Keys) WorkerStatFailed(worker string) string { return k.ns + ":stat:failed:" + worker }

// Delayed is the list of jobs due at unix second ts.
func (k Keys) Delayed(ts int64) string { return k.ns + ":delayed:" + strconv.FormatInt(ts, 10) }

// DelayedSchedule is the zset of timestamps that have delayed jobs.
func (k Keys) DelayedSchedule() string { return k.ns + ":delayed_queue_schedule" }

// Timestamps is the set of "delayed:<ts>" entries of one job's exact bytes.
func (k Keys) Timestamps(job string) string { return k.ns + ":timestamps:" + job }

// Workers is the set of registered resque workers ("<name>:<queues>").
func (k Keys) Workers() string { return k.ns + ":workers" }

// Worker is a worker's in-flight record, shown by resque tooling.
func (k Keys) Worker(name, queues string) string { return k.ns + ":worker:" + name + ":" + queues }

// WorkerStarted holds when a worker started (unix seconds).
func (k Keys) WorkerStarted(name, queues string) string { return k.Worker(name, queues) + ":started" }

// WorkerPing is a worker's liveness record.
func (k Keys) WorkerPing(name string) string { return k.ns + ":worker:ping:" + name }

// The keys below are ours; node-resque never reads them. They live under the
// resque namespace so they share its cluster hash slot.

// InFlight is the list holding the job a consumer slot is working on.
func (k Keys) InFlight(slot string) string { return k.ns + ":qw:inflight:" + slot }

// InFlightPattern matches every slot's in-flight list (for the orphan sweep).
func (k Keys) InFlightPattern() string { return k.ns + ":qw:inflight:*" }

// Leases is the zset of slot → lease deadline (unix ms, Redis server time).
func (k Keys) Leases() string { return k.ns + ":qw:leases" }

// Slots is the hash of slot → queue it takes from, so a recoverer knows where
// a dead slot's job goes back to.
func (k Keys) Slots() string { return k.ns + ":qw:slots" }

// Poison is the list of jobs the recoverer found in dead slots more often
// than allowed, on their way to the failed list.
func (k Keys) Poison() string { return k.ns + ":qw:poison" }

// RecoveriesPrefix prefixes the per-job counters of returns from dead slots
// (the suffix is the SHA-1 of the job's bytes).
func (k Keys) RecoveriesPrefix() string { return k.ns + ":qw:recovered:" }

// Stopped marks a build that was stopped, so a start taken later (or raced)
// never leaves a pod behind.
func (k Keys) Stopped(buildID int64) string {
	return k.ns + ":qw:stopped:" + strconv.FormatInt(buildID, 10)
}

// sha1Hex is the hex SHA-1 of s, as Lua's redis.sha1hex computes it.
func sha1Hex(s string) string {
	sum := sha1.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}
