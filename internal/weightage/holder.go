package weightage

import "sync/atomic"

// Holder publishes the rules in force; a reload swaps them atomically, so a
// decision always sees one consistent rule set.
type Holder struct {
	p atomic.Pointer[Rules]
}

// NewHolder returns a holder with initial rules.
func NewHolder(r *Rules) *Holder {
	h := &Holder{}
	h.p.Store(r)
	return h
}

// Current returns the rules in force.
func (h *Holder) Current() *Rules { return h.p.Load() }

// Swap replaces the rules in force.
func (h *Holder) Swap(r *Rules) { h.p.Store(r) }
