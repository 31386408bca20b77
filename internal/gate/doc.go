// Package gate owns queue-service's per-job start state in Redis: which
// build of a job is running (<prefix>running_job_<jobId>), which ran last
// (last_<prefix>running_job_<jobId>) and which are waiting
// (<prefix>waiting_job_<jobId>). Before a start creates anything, the gate
// decides in one atomic script whether the build starts, is blocked (a
// build of a job in its blockedBy list, or of its own job, is running) or is
// collapsed (with screwdriver.cd/collapseBuilds, only the newest waiting
// build of a job runs). Release undoes a build's part of that state the way
// queue-service's stop does, so the next waiting build can start.
//
// The keys, their values and their expiries are queue-service's, so
// queue-service's worker and this one can run side by side on one Redis
// (docs/migration.md). The rules are ours, written from queue-service's
// behaviour; where it is ambiguous the choice is noted at the rule.
package gate
