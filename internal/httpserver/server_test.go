package httpserver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
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
