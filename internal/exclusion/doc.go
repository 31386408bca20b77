// Package exclusion owns the learned-exclusion set: images that failed on
// Kata with a runtime signature, kept in Redis with a TTL so every replica
// routes their next builds to hyperd until the entry expires.
package exclusion
