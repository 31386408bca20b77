// Package supervisor owns what happens to a build pod after its start: it
// watches the build pods (and their sandbox events) through informers,
// queues each changed build in a rate-limited workqueue, and syncs one build
// at a time, level-triggered: judge the current pod (Assess), then report
// the node, a waiting state or a FAILURE to the CI API, relaunch a Kata
// runtime failure on hyperd and learn its image, or delete a failed pending
// pod. What was done is recorded per pod in Redis, so the next leader
// carries on.
// One replica supervises at a time, elected on a Lease; every replica keeps
// the pod cache, which the routing budgets count from.
package supervisor
