// Package queue owns the resque side of Redis: the key layout node-resque and
// Screwdriver's queue-service write, taking jobs without ever holding one only
// in process memory (a blocking atomic move into a per-slot in-flight list),
// settling them (ack, or a node-resque-compatible entry in the failed list),
// and the buildConfigs hash that ids-only jobs point into.
//
// Producers stay untouched: jobs are read exactly as node-resque writes them.
package queue
