package exclusion

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Entry is why an image was learned as excluded: the failure that
// completed its strikes.
type Entry struct {
	Image     string    `json:"image"`
	Signature string    `json:"signature"`
	BuildID   int64     `json:"buildId"`
	Node      string    `json:"node,omitempty"`
	At        time.Time `json:"at"`
}

// Options tune the store.
type Options struct {
	// Namespace is the resque namespace; entries live under
	// <namespace>:qw:learned-exclusion:, strikes under
	// <namespace>:qw:learned-strikes:, beside the queue's own keys.
	Namespace string
	// TTL is how long a learned image goes straight to hyperd.
	TTL time.Duration
	// LearnAfter is how many distinct nodes must see an image fail on Kata
	// (one strike per node) before it is learned: one bad node (CNI, a
	// broken sandbox) or one build that crashes on its own must not send a
	// shared image to hyperd for every tenant. 1 learns at once.
	LearnAfter int
	// Window is how long a strike counts.
	Window time.Duration
	// Timeout bounds each Redis call.
	Timeout time.Duration
}

// Store is the learned-exclusion set. Each image is one key with its own TTL
// (keyed by a hash of the image, which may be long or hold any character),
// and one hash of strikes (node → the failure seen there).
type Store struct {
	rdb  redis.UniversalClient
	opts Options
}

// NewStore returns the store of a resque namespace.
func NewStore(rdb redis.UniversalClient, opts Options) *Store {
	if opts.LearnAfter < 1 {
		opts.LearnAfter = 1
	}
	if opts.Window <= 0 {
		opts.Window = opts.TTL
	}
	return &Store{rdb: rdb, opts: opts}
}

func (s *Store) key(kind, image string) string {
	sum := sha256.Sum256([]byte(image))
	return s.opts.Namespace + ":qw:" + kind + ":" + hex.EncodeToString(sum[:12])
}

// strikeScript counts a Kata runtime failure of an image and learns the
// image once enough distinct nodes have seen one, atomically (two replicas
// striking at once cannot both miss the threshold).
// KEYS[1] strikes hash, KEYS[2] exclusion key.
// ARGV[1] node (the hash field), ARGV[2] entry JSON, ARGV[3] strikes needed,
// ARGV[4] strike window (ms), ARGV[5] exclusion TTL (ms).
// Returns {strikes, learned (0/1)}.
var strikeScript = redis.NewScript(`
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
local n = redis.call('HLEN', KEYS[1])
if n >= tonumber(ARGV[3]) then
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[5])
  redis.call('DEL', KEYS[1])
  return {n, 1}
end
return {n, 0}`)

// Strike records a Kata runtime failure of e.Image on e.Node and learns the
// image as excluded once LearnAfter distinct nodes have struck within the
// window. It returns the strikes counted and whether the image is now
// learned.
func (s *Store) Strike(ctx context.Context, e Entry) (strikes int, learned bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	v, err := json.Marshal(e)
	if err != nil {
		return 0, false, fmt.Errorf("encoding the strike of image %q: %w", e.Image, err)
	}
	field := e.Node
	if field == "" {
		field = "build:" + strconv.FormatInt(e.BuildID, 10)
	}
	res, err := strikeScript.Run(ctx, s.rdb, []string{s.key("learned-strikes", e.Image), s.key("learned-exclusion", e.Image)},
		field, v, s.opts.LearnAfter, s.opts.Window.Milliseconds(), s.opts.TTL.Milliseconds()).Int64Slice()
	if err != nil {
		return 0, false, fmt.Errorf("counting a Kata failure of image %q: %w", e.Image, err)
	}
	if len(res) != 2 {
		return 0, false, fmt.Errorf("counting a Kata failure of image %q: unexpected reply %v", e.Image, res)
	}
	return int(res[0]), res[1] == 1, nil
}

// Get returns the entry of an image, or nil if it is not excluded.
func (s *Store) Get(ctx context.Context, image string) (*Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, s.opts.Timeout)
	defer cancel()
	v, err := s.rdb.Get(ctx, s.key("learned-exclusion", image)).Bytes()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("looking up learned exclusion of image %q: %w", image, err)
	}
	var e Entry
	if err := json.Unmarshal(v, &e); err != nil {
		return nil, fmt.Errorf("decoding learned exclusion of image %q: %w", image, err)
	}
	return &e, nil
}

// Excluded reports whether an image is currently learned as excluded.
func (s *Store) Excluded(ctx context.Context, image string) (bool, error) {
	e, err := s.Get(ctx, image)
	return e != nil, err
}
