// Package executor owns everything Kubernetes: the shape of a build pod on
// each runtime (a Kata pod with runtimeClassName, or HyperD's privileged
// vm-launcher pod), creating it idempotently under a deterministic name with
// the build token in a per-build Secret, and deleting a build's pods on stop.
package executor
