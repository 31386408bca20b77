// Package autopilot moves the Kata share of weighted builds step by step
// while Kata proves itself, and steps back when it does not: progressive
// delivery for the runtime builds run on.
//
// The elected supervisor also leads the autopilot (Lead runs for each of
// its terms), because it is the replica that sees every start's outcome.
// Every Interval it compares the window's weighted Kata and hyperd starts
// (Window) with Decide, a pure function, and commits the decision and the
// state it leads to in one fenced script (Store). Every replica rereads the
// state (Run) and routes with it (Autopilot.Current is routing's rules
// source), so the share survives restarts and leader changes. Weighted
// buckets are sticky and monotone: a promotion moves only new buckets to
// Kata, a step back returns only the most recently promoted ones.
package autopilot
