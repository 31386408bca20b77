// Package worker owns the meaning of one resque job of the builds queue:
// decode its payload, resolve ids-only jobs through the buildConfigs hash,
// route and launch a start (or delete the build's pods on stop), report a
// start that will never run, and say how it went as a queue.Outcome. The
// queue package settles; the supervisor package follows the pod.
package worker
