// Package httpserver owns the daemon's HTTP listener: Prometheus metrics,
// liveness (/healthz) and readiness (/readyz) backed by dependency checks.
package httpserver
