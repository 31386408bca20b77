package autopilot

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Fields of the autopilot's hash, <namespace>:qw:autopilot. One key, so
// the commit is one script on one slot (Redis Cluster included).
const (
	fieldSeq     = "seq"     // commits so far (the commit's fence)
	fieldState   = "state"   // State, JSON
	fieldHistory = "history" // Decisions, one JSON line each, oldest first
	// FieldPaused and FieldPin are the operator's controls: any value in
	// paused pauses the autopilot (the value is the reason shown); pin holds
	// the Kata share at its percentage on every replica.
	FieldPaused = "paused"
	FieldPin    = "pin"
)

// HistoryCap is how many decisions the history keeps (a week at the
// default 10-minute interval).
const HistoryCap = 1008

// commitScript writes a decision and the state it leads to, if no other
// leader committed since the state was read.
//
// KEYS[1] the autopilot hash
// ARGV[1] the seq read with the state ("0" when there was none)
// ARGV[2] the new state, JSON
// ARGV[3] the decision, one line of JSON
// ARGV[4] the history's cap (entries)
// Returns 1 when committed (seq is ARGV[1]+1), 0 when the seq moved.
//
// The lines are counted, not kept in a counter: an operator may delete or
// edit the history field, and the trim must still keep the newest entries.
var commitScript = redis.NewScript(`
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
if seq ~= ARGV[1] then return 0 end
local hist = (redis.call('HGET', KEYS[1], 'history') or '') .. ARGV[3] .. '\n'
local _, n = string.gsub(hist, '\n', '\n')
local cap = tonumber(ARGV[4])
while n > cap do
  hist = string.sub(hist, string.find(hist, '\n', 1, true) + 1)
  n = n - 1
end
redis.call('HSET', KEYS[1], 'seq', tonumber(ARGV[1]) + 1, 'state', ARGV[2], 'history', hist)
return 1
`)

// ErrConflict: another leader committed since the state was read.
var ErrConflict = errors.New("the autopilot state changed since it was read (another leader committed)")

// Store keeps the autopilot's state, history and controls in Redis.
type Store struct {
	rdb     redis.UniversalClient
	key     string
	timeout time.Duration
}

// NewStore returns the store of a resque namespace.
func NewStore(rdb redis.UniversalClient, namespace string, timeout time.Duration) *Store {
	return &Store{rdb: rdb, key: Key(namespace), timeout: timeout}
}

// Key is the autopilot's hash in a resque namespace (for operators and docs).
func Key(namespace string) string { return namespace + ":qw:autopilot" }

// Snapshot is what every replica reads: the state and the controls.
type Snapshot struct {
	State  State
	Paused string
	Pin    *float64
	// PinError says why a pin value was ignored.
	PinError string
}

// Load reads the state and the controls in one round trip.
func (s *Store) Load(ctx context.Context) (Snapshot, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := s.rdb.HMGet(ctx, s.key, fieldSeq, fieldState, FieldPaused, FieldPin).Result()
	if err != nil {
		return Snapshot{}, fmt.Errorf("reading the autopilot state: %w", err)
	}
	str := func(i int) string { x, _ := v[i].(string); return x }
	var snap Snapshot
	if raw := str(1); raw != "" {
		if err := json.Unmarshal([]byte(raw), &snap.State); err != nil {
			return Snapshot{}, fmt.Errorf("decoding the autopilot state in %s: %w", s.key, err)
		}
	}
	if seq := str(0); seq != "" {
		n, err := strconv.ParseInt(seq, 10, 64)
		if err != nil {
			return Snapshot{}, fmt.Errorf("decoding the autopilot seq in %s: %w", s.key, err)
		}
		snap.State.Seq = n
	}
	snap.Paused = strings.TrimSpace(str(2))
	if v[2] != nil && snap.Paused == "" {
		snap.Paused = "paused (no reason given)"
	}
	if raw := strings.TrimSpace(str(3)); raw != "" {
		p, err := ParsePin(raw)
		if err != nil {
			snap.PinError = err.Error()
		} else {
			snap.Pin = &p
		}
	}
	return snap, nil
}

// ParsePin reads a pin: a percentage 0-100, "%" allowed.
func ParsePin(raw string) (float64, error) {
	p, err := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(raw), "%"), 64)
	if err != nil || math.IsNaN(p) || p < 0 || p > 100 {
		return 0, fmt.Errorf("pin %q is not a percentage 0-100; ignored", raw)
	}
	return roundPercent(p), nil
}

// Commit writes decision d and the state it leads to, fenced by the seq
// the state was read with: ErrConflict when another leader got there first.
func (s *Store) Commit(ctx context.Context, readSeq int64, next State, d Decision) error {
	next.Seq = readSeq + 1
	st, err := json.Marshal(next)
	if err != nil {
		return fmt.Errorf("encoding the autopilot state: %w", err)
	}
	dec, err := json.Marshal(d) // no newline: encoding/json escapes it in strings
	if err != nil {
		return fmt.Errorf("encoding the autopilot decision: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ok, err := commitScript.Run(ctx, s.rdb, []string{s.key}, readSeq, st, dec, HistoryCap).Int()
	if err != nil {
		return fmt.Errorf("committing the autopilot decision: %w", err)
	}
	if ok != 1 {
		return ErrConflict
	}
	return nil
}

// History returns the last n decisions, oldest first (n <= 0: all kept).
func (s *Store) History(ctx context.Context, n int) ([]Decision, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	raw, err := s.rdb.HGet(ctx, s.key, fieldHistory).Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the autopilot history: %w", err)
	}
	lines := strings.Split(strings.TrimSuffix(raw, "\n"), "\n")
	if n > 0 && len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	out := make([]Decision, 0, len(lines))
	for _, l := range lines {
		if l == "" {
			continue
		}
		var d Decision
		if err := json.Unmarshal([]byte(l), &d); err != nil {
			return nil, fmt.Errorf("decoding the autopilot history: %w", err)
		}
		out = append(out, d)
	}
	return out, nil
}
