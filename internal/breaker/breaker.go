package breaker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/sony/gobreaker"
	"go.uber.org/zap"
)

// ErrOpen is wrapped by every error a Breaker returns without running the
// call: the breaker is open, or half-open with all its probes in flight. The
// dependency is unavailable; callers should delay the work rather than fail
// it. The returned error also wraps gobreaker.ErrOpenState or
// gobreaker.ErrTooManyRequests.
var ErrOpen = errors.New("dependency unavailable: circuit breaker open")

// Defaults for zero Settings fields.
const (
	DefaultConsecutiveFailures = 5
	DefaultOpenTimeout         = 30 * time.Second
	DefaultMaxHalfOpenRequests = 1
)

// Settings configure one breaker. Zero fields take the defaults above.
type Settings struct {
	// ConsecutiveFailures is how many failures in a row trip the breaker
	// from closed to open.
	ConsecutiveFailures uint32
	// OpenTimeout is how long the breaker stays open before it lets probe
	// calls through (half-open).
	OpenTimeout time.Duration
	// MaxHalfOpenRequests is how many probe calls may run while half-open;
	// that many successes in a row close the breaker, one failure reopens it.
	MaxHalfOpenRequests uint32
	// IsFailure says whether an error returned by the call means the
	// dependency is failing. Errors for which it returns false (say, an HTTP
	// 404 for one resource) count as the dependency answering. nil: every
	// non-nil error is a failure.
	IsFailure func(error) bool
	// Logger receives state transitions (nil: none are logged).
	Logger *zap.Logger
}

func (s Settings) withDefaults() Settings {
	if s.ConsecutiveFailures == 0 {
		s.ConsecutiveFailures = DefaultConsecutiveFailures
	}
	if s.OpenTimeout <= 0 {
		s.OpenTimeout = DefaultOpenTimeout
	}
	if s.MaxHalfOpenRequests == 0 {
		s.MaxHalfOpenRequests = DefaultMaxHalfOpenRequests
	}
	if s.IsFailure == nil {
		s.IsFailure = func(err error) bool { return err != nil }
	}
	if s.Logger == nil {
		s.Logger = zap.NewNop()
	}
	return s
}

// State is a breaker's state; its numeric value is what the state gauge shows.
type State int

// The states, in gauge order.
const (
	StateClosed   State = 0
	StateHalfOpen State = 1
	StateOpen     State = 2
)

func (s State) String() string {
	switch s {
	case StateClosed:
		return "closed"
	case StateHalfOpen:
		return "half-open"
	case StateOpen:
		return "open"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

func fromGobreaker(s gobreaker.State) State {
	switch s {
	case gobreaker.StateHalfOpen:
		return StateHalfOpen
	case gobreaker.StateOpen:
		return StateOpen
	}
	return StateClosed
}

// Breaker guards calls to one dependency. It is safe for concurrent use.
type Breaker struct {
	name      string
	isFailure func(error) bool
	cb        *gobreaker.CircuitBreaker
	m         *Metrics
	// openedAt is when the breaker last opened (unix nanoseconds), for
	// readiness to say since when.
	openedAt atomic.Int64
}

// New returns the breaker for the dependency name (a small fixed set such as
// "ci-api": it is a metric label). m nil: unregistered metrics.
func New(name string, s Settings, m *Metrics) *Breaker {
	s = s.withDefaults()
	if m == nil {
		m = NewMetrics(nil)
	}
	b := &Breaker{name: name, isFailure: s.IsFailure, m: m}
	log := s.Logger.With(zap.String("breaker", name))
	threshold := s.ConsecutiveFailures
	b.cb = gobreaker.NewCircuitBreaker(gobreaker.Settings{
		Name:        name,
		MaxRequests: s.MaxHalfOpenRequests,
		Timeout:     s.OpenTimeout,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= threshold },
		// gobreaker counts "successful" errors as the dependency answering.
		IsSuccessful: func(err error) bool { return err == nil || !s.IsFailure(err) },
		// Runs under gobreaker's lock: only metrics and logging here.
		OnStateChange: func(_ string, from, to gobreaker.State) {
			f, t := fromGobreaker(from), fromGobreaker(to)
			m.observeTransition(name, t)
			if t == StateOpen && f == StateClosed {
				b.openedAt.Store(time.Now().UnixNano())
			}
			fields := []zap.Field{zap.String("from", f.String()), zap.String("to", t.String())}
			if t == StateOpen {
				log.Warn("circuit breaker opened: calls fail fast", append(fields, zap.Duration("open_for", s.OpenTimeout))...)
			} else {
				log.Info("circuit breaker changed state", fields...)
			}
		},
	})
	m.init(name)
	return b
}

// Name is the dependency's name.
func (b *Breaker) Name() string { return b.name }

// State is the current state. Reading it may move an open breaker whose
// timeout has passed to half-open.
func (b *Breaker) State() State { return fromGobreaker(b.cb.State()) }

// Check is a readiness check: an error while the breaker is open or
// half-open (the dependency failed and has not answered since), saying
// since when.
func (b *Breaker) Check(context.Context) error {
	if s := b.State(); s != StateClosed {
		since := time.Unix(0, b.openedAt.Load()).UTC().Format(time.RFC3339)
		return fmt.Errorf("%s circuit breaker %s since %s: calls fail fast", b.name, s, since)
	}
	return nil
}

// Execute runs fn unless the breaker rejects it, and records fn's outcome.
// It returns ctx's error without running fn if ctx is already done, an error
// wrapping ErrOpen if the breaker rejected the call, and otherwise fn's own
// error unchanged.
func (b *Breaker) Execute(ctx context.Context, fn func() error) error {
	_, err := Do(ctx, b, func() (struct{}, error) { return struct{}{}, fn() })
	return err
}

// Do is Execute for calls that return a value.
func Do[T any](ctx context.Context, b *Breaker, fn func() (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, fmt.Errorf("calling %s: %w", b.name, err)
	}
	var (
		out   T
		inner error
		ran   bool
	)
	_, err := b.cb.Execute(func() (any, error) {
		ran = true
		out, inner = fn()
		return nil, inner
	})
	if !ran {
		if errors.Is(err, gobreaker.ErrOpenState) || errors.Is(err, gobreaker.ErrTooManyRequests) {
			b.m.Rejected.WithLabelValues(b.name).Inc()
			return zero, fmt.Errorf("calling %s: %w (%w)", b.name, ErrOpen, err)
		}
		return zero, fmt.Errorf("calling %s: %w", b.name, err)
	}
	// fn's error is returned as is: callers classify it themselves.
	return out, inner
}
