package httpserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"
)

// Check reports whether a dependency is usable; it must honour ctx.
type Check func(ctx context.Context) error

// Server serves /metrics, /healthz and /readyz. Both endpoints run their
// checks and answer 200 or 503 with one line per check ("name: ok" or
// "name: why"), so a failing probe explains itself in the kubelet's events.
type Server struct {
	mux    *http.ServeMux
	log    *zap.Logger
	mu     sync.Mutex
	checks map[string]Check // readiness: can the dependencies be used?
	live   map[string]Check // liveness: is the process making progress?
	// CheckTimeout bounds each check.
	CheckTimeout time.Duration
}

// New returns a server exposing gatherer's metrics.
func New(gatherer prometheus.Gatherer, log *zap.Logger) *Server {
	s := &Server{mux: http.NewServeMux(), log: log, checks: map[string]Check{}, live: map[string]Check{}, CheckTimeout: 2 * time.Second}
	s.mux.Handle("/metrics", promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}))
	s.mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { s.serveChecks(w, r, s.live) })
	s.mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) { s.serveChecks(w, r, s.checks) })
	return s
}

// AddLiveness registers a liveness check: it fails only when the process
// is stuck in a way a restart cures (a wedged slot, a silent watch), never
// because a dependency is down (that is readiness).
func (s *Server) AddLiveness(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.live[name] = c
}

// Handle adds a handler (e.g. a debug endpoint).
func (s *Server) Handle(pattern string, h http.Handler) { s.mux.Handle(pattern, h) }

// AddCheck registers a readiness check.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = c
}

func (s *Server) serveChecks(w http.ResponseWriter, r *http.Request, set map[string]Check) {
	s.mu.Lock()
	names := make([]string, 0, len(set))
	checks := make(map[string]Check, len(set))
	for n, c := range set {
		names = append(names, n)
		checks[n] = c
	}
	s.mu.Unlock()
	sort.Strings(names)

	var b strings.Builder
	failed := false
	for _, n := range names {
		ctx, cancel := context.WithTimeout(r.Context(), s.CheckTimeout)
		err := checks[n](ctx)
		cancel()
		if err != nil {
			failed = true
			fmt.Fprintf(&b, "%s: %v\n", n, err)
			continue
		}
		fmt.Fprintf(&b, "%s: ok\n", n)
	}
	if failed {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	if len(names) == 0 {
		b.WriteString("ok\n")
	}
	fmt.Fprint(w, b.String())
}

// Run listens on addr until ctx is cancelled, then shuts down gracefully.
func (s *Server) Run(ctx context.Context, addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", addr, err)
	}
	return s.Serve(ctx, ln)
}

// Serve serves on ln until ctx is cancelled.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	s.log.Info("http server listening", zap.String("addr", ln.Addr().String()))
	select {
	case err := <-done:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutCtx); err != nil {
		return fmt.Errorf("http server shutdown: %w", err)
	}
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
