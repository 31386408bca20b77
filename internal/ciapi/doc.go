// Package ciapi owns the daemon's calls back to the Screwdriver CI API: the
// build updates (PUT /v4/builds/<id>) that record where a build's pod was
// scheduled, that it is waiting for resources, that it failed before the
// launcher took over, or that a virtual job was skipped.
//
// Every call has a timeout, verifies TLS, retries only what can succeed on a
// second try (transport errors, timeouts, 5xx, 429) with capped, jittered
// exponential backoff, and goes through one circuit breaker ("ci-api") so a
// dead API makes calls fail fast with breaker.ErrOpen. Rejections (401, 403,
// 404) and other 4xx are never retried and never swallowed: they are logged
// at ERROR, counted, and returned as *StatusError for the caller to act on.
// The build token is sent only in the Authorization header; it never appears
// in logs or errors.
package ciapi
