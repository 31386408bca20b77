package breaker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sony/gobreaker"
)

var (
	errDown    = errors.New("connection refused")
	errIgnored = errors.New("404 not found")
)

func fail(err error) func() error { return func() error { return err } }
func ok() error                   { return nil }

func ignore404(err error) bool { return !errors.Is(err, errIgnored) }

func TestBreakerTripsAfterConsecutiveFailures(t *testing.T) {
	for _, tc := range []struct {
		name      string
		threshold uint32
		want      int // failures that reach fn before it opens
	}{
		{"default threshold is five", 0, DefaultConsecutiveFailures},
		{"threshold of one trips on the first failure", 1, 1},
		{"threshold of three", 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := New("dep", Settings{ConsecutiveFailures: tc.threshold, OpenTimeout: time.Hour}, nil)
			ran := 0
			for i := 0; i < tc.want+3; i++ {
				err := b.Execute(context.Background(), func() error { ran++; return errDown })
				if i < tc.want && !errors.Is(err, errDown) {
					t.Fatalf("call %d: got %v, want the call's own error", i, err)
				}
				if i >= tc.want && !errors.Is(err, ErrOpen) {
					t.Fatalf("call %d: got %v, want ErrOpen", i, err)
				}
			}
			if ran != tc.want {
				t.Fatalf("fn ran %d times, want %d", ran, tc.want)
			}
			if b.State() != StateOpen {
				t.Fatalf("state %v, want open", b.State())
			}
		})
	}
}

func TestBreakerSuccessResetsTheFailureRun(t *testing.T) {
	b := New("dep", Settings{ConsecutiveFailures: 3, OpenTimeout: time.Hour}, nil)
	for range 5 {
		_ = b.Execute(context.Background(), fail(errDown))
		_ = b.Execute(context.Background(), fail(errDown))
		_ = b.Execute(context.Background(), ok)
	}
	if b.State() != StateClosed {
		t.Fatalf("state %v, want closed: failures were never consecutive", b.State())
	}
}

func TestBreakerIgnoredErrorsDoNotTrip(t *testing.T) {
	b := New("dep", Settings{ConsecutiveFailures: 2, OpenTimeout: time.Hour, IsFailure: ignore404}, nil)
	for i := range 10 {
		if err := b.Execute(context.Background(), fail(errIgnored)); !errors.Is(err, errIgnored) {
			t.Fatalf("call %d: got %v, want the ignored error passed through", i, err)
		}
	}
	if b.State() != StateClosed {
		t.Fatalf("state %v, want closed", b.State())
	}
	// An ignored error also breaks a run of real failures.
	_ = b.Execute(context.Background(), fail(errDown))
	_ = b.Execute(context.Background(), fail(errIgnored))
	_ = b.Execute(context.Background(), fail(errDown))
	if b.State() != StateClosed {
		t.Fatalf("state %v, want closed", b.State())
	}
	_ = b.Execute(context.Background(), fail(errDown))
	if b.State() != StateOpen {
		t.Fatalf("state %v, want open after two real failures in a row", b.State())
	}
}

func TestBreakerOpenErrorWrapsGobreakerAndSkipsTheCall(t *testing.T) {
	b := New("dep", Settings{ConsecutiveFailures: 1, OpenTimeout: time.Hour}, nil)
	_ = b.Execute(context.Background(), fail(errDown))
	ran := false
	err := b.Execute(context.Background(), func() error { ran = true; return nil })
	if ran {
		t.Fatal("fn ran through an open breaker")
	}
	if !errors.Is(err, ErrOpen) || !errors.Is(err, gobreaker.ErrOpenState) {
		t.Fatalf("got %v, want ErrOpen wrapping gobreaker.ErrOpenState", err)
	}
}

func TestBreakerHalfOpen(t *testing.T) {
	const openFor = 30 * time.Millisecond
	for _, tc := range []struct {
		name  string
		probe error
		want  State
	}{
		{"a successful probe closes it", nil, StateClosed},
		{"an ignored error counts as the dependency answering", errIgnored, StateClosed},
		{"a failed probe reopens it", errDown, StateOpen},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := New("dep", Settings{ConsecutiveFailures: 1, OpenTimeout: openFor, IsFailure: ignore404}, nil)
			_ = b.Execute(context.Background(), fail(errDown))
			if b.State() != StateOpen {
				t.Fatalf("state %v, want open", b.State())
			}
			time.Sleep(openFor + 20*time.Millisecond)
			if b.State() != StateHalfOpen {
				t.Fatalf("state %v, want half-open after the open timeout", b.State())
			}
			_ = b.Execute(context.Background(), fail(tc.probe))
			if b.State() != tc.want {
				t.Fatalf("state %v, want %v", b.State(), tc.want)
			}
		})
	}
}

func TestBreakerHalfOpenLimitsProbes(t *testing.T) {
	const openFor = 20 * time.Millisecond
	b := New("dep", Settings{ConsecutiveFailures: 1, OpenTimeout: openFor, MaxHalfOpenRequests: 2}, nil)
	_ = b.Execute(context.Background(), fail(errDown))
	time.Sleep(openFor + 20*time.Millisecond)

	release := make(chan struct{})
	started := make(chan struct{}, 2)
	done := make(chan error, 2)
	for range 2 {
		go func() {
			done <- b.Execute(context.Background(), func() error { started <- struct{}{}; <-release; return nil })
		}()
	}
	<-started
	<-started
	err := b.Execute(context.Background(), ok)
	if !errors.Is(err, ErrOpen) || !errors.Is(err, gobreaker.ErrTooManyRequests) {
		t.Fatalf("third probe: got %v, want ErrOpen wrapping ErrTooManyRequests", err)
	}
	close(release)
	for range 2 {
		if err := <-done; err != nil {
			t.Fatalf("probe: %v", err)
		}
	}
	if b.State() != StateClosed {
		t.Fatalf("state %v, want closed after two successful probes", b.State())
	}
}

func TestBreakerDoneContextSkipsTheCall(t *testing.T) {
	b := New("dep", Settings{ConsecutiveFailures: 1}, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	err := b.Execute(ctx, func() error { ran = true; return nil })
	if ran || !errors.Is(err, context.Canceled) {
		t.Fatalf("ran=%v err=%v, want not run and context.Canceled", ran, err)
	}
	if b.State() != StateClosed {
		t.Fatalf("state %v: a cancelled caller must not count against the dependency", b.State())
	}
}

func TestDoReturnsTheValue(t *testing.T) {
	b := New("dep", Settings{}, nil)
	got, err := Do(context.Background(), b, func() (int, error) { return 42, nil })
	if err != nil || got != 42 {
		t.Fatalf("got %d, %v", got, err)
	}
}

func TestMetricsReflectState(t *testing.T) {
	const openFor = 30 * time.Millisecond
	reg := prometheus.NewPedanticRegistry()
	m := NewMetrics(reg)
	b := New("ci-api", Settings{ConsecutiveFailures: 2, OpenTimeout: openFor}, m)
	other := New("kube-api", Settings{}, m)
	_ = other

	state := func() float64 { return testutil.ToFloat64(m.State.WithLabelValues("ci-api")) }
	to := func(s State) float64 { return testutil.ToFloat64(m.Transitions.WithLabelValues("ci-api", s.String())) }
	rejected := func() float64 { return testutil.ToFloat64(m.Rejected.WithLabelValues("ci-api")) }

	if state() != 0 || to(StateOpen) != 0 {
		t.Fatalf("fresh breaker: state %v, opens %v", state(), to(StateOpen))
	}
	_ = b.Execute(context.Background(), fail(errDown))
	_ = b.Execute(context.Background(), fail(errDown))
	_ = b.Execute(context.Background(), ok)
	_ = b.Execute(context.Background(), ok)
	if state() != 2 || to(StateOpen) != 1 || rejected() != 2 {
		t.Fatalf("open: state %v, opens %v, rejected %v; want 2, 1, 2", state(), to(StateOpen), rejected())
	}
	time.Sleep(openFor + 20*time.Millisecond)
	_ = b.State()
	if state() != 1 || to(StateHalfOpen) != 1 {
		t.Fatalf("half-open: state %v, half-opens %v; want 1, 1", state(), to(StateHalfOpen))
	}
	_ = b.Execute(context.Background(), ok)
	if state() != 0 || to(StateClosed) != 1 {
		t.Fatalf("closed: state %v, closes %v; want 0, 1", state(), to(StateClosed))
	}
	if got := testutil.ToFloat64(m.State.WithLabelValues("kube-api")); got != 0 {
		t.Fatalf("other breaker's state %v, want 0: breakers must not share state", got)
	}
	if n, err := testutil.GatherAndCount(reg, "queue_worker_breaker_state", "queue_worker_breaker_transitions_total", "queue_worker_breaker_rejected_total"); err != nil || n != 2+6+2 {
		t.Fatalf("gathered %d series (%v), want 10", n, err)
	}
}

func TestBreaker_CheckFailsWhileOpenAndSaysSinceWhen(t *testing.T) {
	b := New("ci-api", Settings{ConsecutiveFailures: 1, OpenTimeout: 50 * time.Millisecond}, nil)
	if err := b.Check(context.Background()); err != nil {
		t.Fatalf("closed breaker: %v", err)
	}
	_ = b.Execute(context.Background(), fail(errDown))
	err := b.Check(context.Background())
	const head = "ci-api circuit breaker open since "
	if err == nil || !strings.HasPrefix(err.Error(), head) {
		t.Fatalf("open breaker: %v", err)
	}
	since, perr := time.Parse(time.RFC3339, strings.Fields(strings.TrimPrefix(err.Error(), head))[0][:20])
	if perr != nil || time.Since(since) > 2*time.Second {
		t.Fatalf("open breaker says since %v (%v): %v", since, perr, err)
	}
	time.Sleep(60 * time.Millisecond) // half-open: still not ready until a call succeeds
	if err := b.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "half-open") {
		t.Fatalf("half-open breaker: %v", err)
	}
	_ = b.Execute(context.Background(), ok)
	if err := b.Check(context.Background()); err != nil {
		t.Fatalf("closed again: %v", err)
	}
}
