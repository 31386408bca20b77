package exclusion

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Entry is why an image was learned as excluded.
type Entry struct {
	Image     string    `json:"image"`
	Signature string    `json:"signature"`
	BuildID   int64     `json:"buildId"`
	At        time.Time `json:"at"`
}

// Store is the learned-exclusion set. Each image is one key with its own TTL
// (keyed by a hash of the image, which may be long or hold any character).
type Store struct {
	rdb     redis.UniversalClient
	prefix  string
	ttl     time.Duration
	timeout time.Duration
}

// NewStore returns the store of a resque namespace; entries live under
// <namespace>:qw:learned-exclusion:, beside the queue's own keys.
func NewStore(rdb redis.UniversalClient, namespace string, ttl, timeout time.Duration) *Store {
	return &Store{rdb: rdb, prefix: namespace + ":qw:learned-exclusion:", ttl: ttl, timeout: timeout}
}

func (s *Store) key(image string) string {
	sum := sha256.Sum256([]byte(image))
	return s.prefix + hex.EncodeToString(sum[:12])
}

// Add learns an image as excluded from Kata for the store's TTL.
func (s *Store) Add(ctx context.Context, e Entry) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, _ := json.Marshal(e)
	if err := s.rdb.Set(ctx, s.key(e.Image), v, s.ttl).Err(); err != nil {
		return fmt.Errorf("learning exclusion of image %q: %w", e.Image, err)
	}
	return nil
}

// Get returns the entry of an image, or nil if it is not excluded.
func (s *Store) Get(ctx context.Context, image string) (*Entry, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	v, err := s.rdb.Get(ctx, s.key(image)).Bytes()
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
