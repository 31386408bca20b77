// Package testbed owns the test side of the real dependencies: a Redis
// connection with a private resque namespace per test, and a Kubernetes
// clientset for the project's local control plane with a fresh namespace
// per test. It is imported by tests only.
//
// Tests never skip when a dependency is missing: they fail and say how to
// bring the bed up (`make test` does it itself).
package testbed
