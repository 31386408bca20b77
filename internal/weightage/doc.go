// Package weightage owns the routing decision "Kata or hyperd?" for a build:
// one pure function, Route, over a build's routing inputs and a set of Rules.
// The decision carries its reason (rule, matched pattern, bucket, weight) so
// the daemon can record it on the pod and an operator can explain it.
//
// The percentage draw is deterministic: a stable hash of a stickiness key
// (the job by default) plus a salt gives a bucket in [0, 10000); a build goes
// to Kata when its bucket is below the weight in basis points. Raising the
// weight therefore only moves buckets from hyperd to Kata, never back.
package weightage
