package queue

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

// StatProcessed and StatFailed are node-resque's global counters.
func (k Keys) StatProcessed() string { return k.ns + ":stat:processed" }

// StatFailed is node-resque's global failure counter.
func (k Keys) StatFailed() string { return k.ns + ":stat:failed" }

// InFlight is the list holding the job a consumer slot is working on. It is
// ours (node-resque never reads it), under the resque namespace so it shares
// the cluster hash slot with the queues it is moved from and back to.
func (k Keys) InFlight(slot string) string { return k.ns + ":qw:inflight:" + slot }
