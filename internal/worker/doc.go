// Package worker owns the dispatch of one resque job: decode its payload,
// resolve ids-only jobs through the buildConfigs hash, route a start, ask the
// executor for the pod (or delete the build's pods on stop), and settle the
// job: ack on success, the failed list with the reason when retrying cannot
// help, a bounded retry when it can.
package worker
