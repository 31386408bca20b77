package breaker

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"
)

func TestRoundTripper_OpensOnServerErrorsAndPassesResponses(t *testing.T) {
	var code atomic.Int32
	code.Store(http.StatusServiceUnavailable)
	var hits atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits.Add(1)
		w.WriteHeader(int(code.Load()))
	}))
	defer srv.Close()
	b := New("kubernetes", Settings{ConsecutiveFailures: 3, OpenTimeout: 200 * time.Millisecond, IsFailure: HTTPFailure}, NewMetrics(nil))
	c := &http.Client{Transport: RoundTripper(b, http.DefaultTransport)}
	for range 3 {
		resp, err := c.Get(srv.URL)
		if err != nil {
			t.Fatalf("a 503 must reach the caller as a response, got %v", err)
		}
		resp.Body.Close()
	}
	if _, err := c.Get(srv.URL); !errors.Is(err, ErrOpen) {
		t.Fatalf("after 3 server errors: %v, want ErrOpen", err)
	}
	if hits.Load() != 3 {
		t.Fatalf("server saw %d requests, want 3 (the open breaker sends none)", hits.Load())
	}
	code.Store(http.StatusNotFound) // answering again: a 404 is not a failure
	time.Sleep(250 * time.Millisecond)
	resp, err := c.Get(srv.URL)
	if err != nil || resp.StatusCode != http.StatusNotFound {
		t.Fatalf("half-open probe: %v %v", resp, err)
	}
	resp.Body.Close()
	if b.State() != StateClosed {
		t.Fatalf("state %v after a good probe, want closed", b.State())
	}
}
