package httpserver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap/zaptest"
)

func TestServer_ReadyzReflectsChecksAndShutsDown(t *testing.T) {
	reg := prometheus.NewRegistry()
	s := New(reg, zaptest.NewLogger(t))
	var redisDown atomic.Bool
	redisDown.Store(true)
	s.AddCheck("redis", func(context.Context) error {
		if redisDown.Load() {
			return errors.New("connection refused")
		}
		return nil
	})
	s.AddCheck("kubernetes", func(context.Context) error { return nil })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, ln) }()
	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "redis: connection refused") || !strings.Contains(body, "kubernetes: ok") {
		t.Fatalf("readyz %d %q", code, body)
	}
	redisDown.Store(false)
	if code, _ := get("/readyz"); code != 200 {
		t.Fatalf("readyz %d after recovery", code)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatal("healthz")
	}
	if code, _ := get("/metrics"); code != 200 {
		t.Fatal("metrics")
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("server did not shut down")
	}
}

// Liveness and readiness are separate sets: a dependency down makes the
// process unready but alive; a wedge makes it not alive, with the reason.
func TestServer_HealthzRunsLivenessChecksOnly(t *testing.T) {
	s := New(prometheus.NewRegistry(), zaptest.NewLogger(t))
	var wedged atomic.Bool
	s.AddLiveness("queue", func(context.Context) error {
		if wedged.Load() {
			return errors.New("slot w-0 stuck in handling a job since 2026-12-06T03:00:00Z")
		}
		return nil
	})
	s.AddCheck("redis", func(context.Context) error { return errors.New("connection refused") })
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		s.mux.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	if code, body := get("/healthz"); code != 200 || body != "queue: ok\n" {
		t.Fatalf("alive with Redis down: %d %q", code, body)
	}
	wedged.Store(true)
	if code, body := get("/healthz"); code != 503 || !strings.Contains(body, "queue: slot w-0 stuck in handling a job") {
		t.Fatalf("wedged: %d %q", code, body)
	}
	if code, _ := get("/readyz"); code != 503 {
		t.Fatalf("readyz %d", code)
	}
}
