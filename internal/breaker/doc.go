// Package breaker owns the daemon's circuit breakers: one per remote
// dependency (the CI API, the Kubernetes API, ...), each a thin layer over
// github.com/sony/gobreaker that adds context handling, a caller-supplied
// notion of which errors count as the dependency failing, an ErrOpen sentinel
// meaning "dependency unavailable: delay the work, do not fail it", and
// Prometheus metrics for state, transitions and rejected calls.
package breaker
