package gate

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/sdkata/queue-worker/internal/build"
)

// Policy is the configured side of a request: queue-service's
// plugins.blockedBy settings.
type Policy struct {
	// BlockedBySelf: a build waits while another build of its own job runs
	// (PLUGIN_BLOCKEDBY_BLOCKED_BY_SELF, default true).
	BlockedBySelf bool
	// Collapse is the default of the screwdriver.cd/collapseBuilds
	// annotation (PLUGIN_BLOCKEDBY_COLLAPSE, default true).
	Collapse bool
	// BlockTimeout is the running key's TTL for a build without a timeout
	// annotation (PLUGIN_BLOCKEDBY_BLOCK_TIMEOUT, 120 minutes).
	BlockTimeout time.Duration
}

// blockTimeoutBuffer is added to a build's own timeout for its running
// key's TTL, as queue-service does: the key outlives the build a little.
const blockTimeoutBuffer = 30 * time.Minute

// RequestFor turns a start's build config into a gate request. It is pure.
//
// blockedBy is read from the build config in either of queue-service's
// forms: the comma-joined string of the queued args ("678,679") or the
// array of the stored config ([678,679]). (queue-service's Lua worker hands
// the string to its script as one id, so a list of two or more jobs blocks
// nothing there; every listed job blocks here.)
//
// Collapse follows the build's screwdriver.cd/collapseBuilds annotation when
// it is a boolean (or "true"/"false"), else the policy. (queue-service's
// earlier worker read the annotation; its Lua worker only the setting.)
//
// The running key lives for the build's timeout annotation plus 30 minutes,
// else BlockTimeout. (queue-service's Lua worker reads the timeout from the
// queued args, where queue-service never puts it, so there it is always the
// setting; a build allowed to run longer would stop blocking midway.)
func RequestFor(b *build.Config, p Policy) (Request, error) {
	jobs, err := ParseBlockedBy(b.BlockedBy)
	if err != nil {
		return Request{}, fmt.Errorf("build %d: %w", b.BuildID, err)
	}
	r := Request{
		BuildID: b.BuildID, JobID: b.JobID, BlockedBy: jobs,
		BlockedBySelf: p.BlockedBySelf, Collapse: p.Collapse, RunningTTL: p.BlockTimeout,
	}
	if v, ok := b.Annotation("collapseBuilds"); ok {
		switch t := v.(type) {
		case bool:
			r.Collapse = t
		case string:
			if s := strings.ToLower(strings.TrimSpace(t)); s == "true" || s == "false" {
				r.Collapse = s == "true"
			}
		}
	}
	if m, ok := timeoutMinutes(b); ok && m > 0 {
		r.RunningTTL = time.Duration(m)*time.Minute + blockTimeoutBuffer
	}
	if r.RunningTTL <= 0 {
		r.RunningTTL = 120 * time.Minute
	}
	return r, nil
}

// timeoutMinutes reads screwdriver.cd/timeout as JavaScript's parseInt
// would: a number (truncated) or a string starting with digits.
func timeoutMinutes(b *build.Config) (int64, bool) {
	v, ok := b.Annotation("timeout")
	if !ok {
		return 0, false
	}
	switch t := v.(type) {
	case float64:
		if math.IsNaN(t) || math.IsInf(t, 0) || math.Abs(t) > 1e9 {
			return 0, false
		}
		return int64(t), true
	case string:
		s := strings.TrimSpace(t)
		end := 0
		for end < len(s) && (s[end] >= '0' && s[end] <= '9' || end == 0 && (s[0] == '-' || s[0] == '+')) {
			end++
		}
		n, err := strconv.ParseInt(s[:end], 10, 64)
		return n, err == nil
	}
	return 0, false
}

// ParseBlockedBy reads a blockedBy value: "678,679", [678,679], ["678"],
// 678, null or absent. Blank entries are skipped; anything else that is not
// a job id is an error (silently dropping a blocker would let two deploys
// run together).
func ParseBlockedBy(raw json.RawMessage) ([]int64, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || bytes.Equal(raw, []byte("null")) {
		return nil, nil
	}
	var items []json.RawMessage
	switch raw[0] {
	case '[':
		if err := json.Unmarshal(raw, &items); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadBlockedBy, err)
		}
	case '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, fmt.Errorf("%w: %v", ErrBadBlockedBy, err)
		}
		for _, part := range strings.Split(s, ",") {
			items = append(items, json.RawMessage(strconv.Quote(part)))
		}
	default:
		items = []json.RawMessage{raw}
	}
	var out []int64
	for _, it := range items {
		var s string
		if err := json.Unmarshal(it, &s); err != nil {
			s = string(it) // a number
		}
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return nil, fmt.Errorf("%w: %q", ErrBadBlockedBy, s)
		}
		out = append(out, n)
	}
	return out, nil
}
