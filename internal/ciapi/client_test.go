package ciapi

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/sdkata/queue-worker/internal/breaker"
	"github.com/sdkata/queue-worker/internal/testbed"
)

const (
	buildID = int64(4242)
	token   = "eyJhbGciOi.build-token-SECRET-42.sig"
)

// fast is Options for tests: tiny delays, a breaker that does not trip.
func fast() Options {
	return Options{
		Timeout:       2 * time.Second,
		RetryDelay:    time.Millisecond,
		MaxRetryDelay: 5 * time.Millisecond,
		Breaker:       breaker.Settings{ConsecutiveFailures: 1000},
	}
}

type fixture struct {
	api *testbed.FakeAPI
	c   *Client
	m   *Metrics
	bm  *breaker.Metrics
	obs *observer.ObservedLogs
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	f := &fixture{api: testbed.FakeCIAPI(t), m: NewMetrics(prometheus.NewPedanticRegistry()), bm: breaker.NewMetrics(nil)}
	core, obs := observer.New(zapcore.DebugLevel)
	f.obs = obs
	if opts.HTTPClient == nil {
		opts.HTTPClient = f.api.Client()
	}
	opts.BreakerMetrics = f.bm
	f.c = New(opts, zap.New(core), f.m)
	return f
}

func TestReportBodiesMatchTheReference(t *testing.T) {
	now := time.Date(2025, 3, 4, 5, 6, 7, 890_000_000, time.FixedZone("CET", 3600))
	for _, tc := range []struct {
		name string
		call func(c *Client, api string) error
		want string
	}{
		{"scheduled reports hostname and image pull start in UTC ISO-8601",
			func(c *Client, api string) error {
				return c.ReportScheduled(context.Background(), api, buildID, token, "node-7.example", now)
			},
			`{"stats":{"hostname":"node-7.example","imagePullStartTime":"2025-03-04T04:06:07.890Z"}}`},
		{"waiting without a message sends the reference message",
			func(c *Client, api string) error {
				return c.ReportWaiting(context.Background(), api, buildID, token, "")
			},
			`{"statusMessage":"Waiting for resources to be available."}`},
		{"waiting with the init-delay message sends no status",
			func(c *Client, api string) error {
				return c.ReportWaiting(context.Background(), api, buildID, token, MsgInitDelayed)
			},
			`{"statusMessage":"Build initialization delayed - pod creation taking longer than expected"}`},
		{"failure sends the message without an Error: prefix",
			func(c *Client, api string) error {
				return c.ReportFailure(context.Background(), api, buildID, token, "Build failed to start. Please check if your image is valid.")
			},
			`{"status":"FAILURE","statusMessage":"Build failed to start. Please check if your image is valid."}`},
		{"skipped virtual job",
			func(c *Client, api string) error {
				return c.ReportSuccessSkipped(context.Background(), api, buildID, token)
			},
			`{"status":"SUCCESS","statusMessage":"Skipped execution of the virtual job","statusMessageType":"INFO"}`},
		{"generic update omits empty fields",
			func(c *Client, api string) error {
				return c.UpdateBuild(context.Background(), api, buildID, token, BuildUpdate{Status: "BLOCKED"})
			},
			`{"status":"BLOCKED"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fast())
			if err := tc.call(f.c, f.api.URL()); err != nil {
				t.Fatal(err)
			}
			reqs := f.api.RequestsFor(buildID)
			if len(reqs) != 1 {
				t.Fatalf("%d requests, want 1", len(reqs))
			}
			r := reqs[0]
			if r.Method != http.MethodPut || r.Path != "/v4/builds/4242" {
				t.Errorf("request %s %s, want PUT /v4/builds/4242", r.Method, r.Path)
			}
			if r.Auth != "Bearer "+token {
				t.Errorf("Authorization %q, want the bearer token", r.Auth)
			}
			if r.ContentType != "application/json" {
				t.Errorf("Content-Type %q", r.ContentType)
			}
			if string(r.Raw) != tc.want {
				t.Errorf("body\n got %s\nwant %s", r.Raw, tc.want)
			}
		})
	}
}

func TestUpdateBuildJoinsTheURL(t *testing.T) {
	for _, tc := range []struct {
		name, suffix, path string
	}{
		{"bare base", "", "/v4/builds/4242"},
		{"base with trailing slash", "/", "/v4/builds/4242"},
		{"base with a path prefix", "/ci", "/ci/v4/builds/4242"},
		{"prefix with trailing slash", "/ci/", "/ci/v4/builds/4242"},
		{"query and fragment dropped", "/?x=1#frag", "/v4/builds/4242"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fast())
			if err := f.c.ReportWaiting(context.Background(), f.api.URL()+tc.suffix, buildID, token, ""); err != nil {
				t.Fatal(err)
			}
			if got := f.api.Requests()[0].Path; got != tc.path {
				t.Fatalf("path %q, want %q", got, tc.path)
			}
		})
	}
}

func TestUpdateBuildRefusesBadInput(t *testing.T) {
	for _, tc := range []struct {
		name, api, token string
	}{
		{"empty api uri", "", token},
		{"no scheme", "api.example.com", token},
		{"ftp scheme", "ftp://api.example.com", token},
		{"no token", "http://127.0.0.1:1", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fast())
			err := f.c.ReportWaiting(context.Background(), tc.api, buildID, tc.token, "")
			if err == nil || IsUnavailable(err) || IsRejected(err) {
				t.Fatalf("got %v, want a permanent input error", err)
			}
			if n := len(f.api.Requests()); n != 0 {
				t.Fatalf("%d requests sent", n)
			}
		})
	}
}

func TestUpdateBuildRetries(t *testing.T) {
	for _, tc := range []struct {
		name     string
		program  func(api *testbed.FakeAPI)
		wantReqs int
		wantOK   bool
		wantCode int // StatusError code expected, 0 for none
		rejected bool
		unavail  bool
		rejLabel string
	}{
		{"5xx retried then success", func(a *testbed.FakeAPI) { a.FailNext(2, 503) }, 3, true, 0, false, false, ""},
		{"500 on every attempt exhausts them", func(a *testbed.FakeAPI) { a.SetStatus(500) }, DefaultMaxAttempts, false, 500, false, true, ""},
		{"unreachable API retried until it returns", func(a *testbed.FakeAPI) { a.Down(); go func() { time.Sleep(3 * time.Millisecond); a.Up() }() }, 0, true, 0, false, false, ""},
		{"unreachable API exhausts the attempts", func(a *testbed.FakeAPI) { a.Down() }, DefaultMaxAttempts, false, 0, false, true, ""},
		{"400 not retried", func(a *testbed.FakeAPI) { a.SetStatus(400) }, 1, false, 400, false, false, "other"},
		{"409 not retried", func(a *testbed.FakeAPI) { a.SetBuildStatus(buildID, 409) }, 1, false, 409, false, false, "other"},
		{"401 rejected", func(a *testbed.FakeAPI) { a.SetStatus(401) }, 1, false, 401, true, false, "401"},
		{"403 rejected", func(a *testbed.FakeAPI) { a.FailNextFor(buildID, 1, 403) }, 1, false, 403, true, false, "403"},
		{"404 rejected", func(a *testbed.FakeAPI) { a.SetStatus(404) }, 1, false, 404, true, false, "404"},
		{"5xx then 404 stops at the 404", func(a *testbed.FakeAPI) { a.FailNext(1, 502); a.SetStatus(404) }, 2, false, 404, true, false, "404"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, fast())
			tc.program(f.api)
			err := f.c.ReportFailure(context.Background(), f.api.URL(), buildID, token, "boom")
			if tc.wantOK != (err == nil) {
				t.Fatalf("err %v, want ok=%v", err, tc.wantOK)
			}
			if tc.wantReqs > 0 {
				if n := len(f.api.RequestsFor(buildID)); n != tc.wantReqs {
					t.Fatalf("%d requests, want %d", n, tc.wantReqs)
				}
			}
			if err == nil {
				return
			}
			var se *StatusError
			if tc.wantCode != 0 && (!errors.As(err, &se) || se.Code != tc.wantCode) {
				t.Fatalf("got %v, want a StatusError %d", err, tc.wantCode)
			}
			if IsRejected(err) != tc.rejected || IsUnavailable(err) != tc.unavail {
				t.Fatalf("rejected=%v unavailable=%v, want %v %v (%v)", IsRejected(err), IsUnavailable(err), tc.rejected, tc.unavail, err)
			}
			if tc.rejLabel != "" {
				if got := testutil.ToFloat64(f.m.Rejected.WithLabelValues(tc.rejLabel)); got != 1 {
					t.Fatalf("ciapi_rejected_total{code=%q} = %v, want 1", tc.rejLabel, got)
				}
				logged := f.obs.FilterLevelExact(zapcore.ErrorLevel).FilterField(zap.Int64("build_id", buildID)).FilterField(zap.Int("code", tc.wantCode))
				if logged.Len() != 1 {
					t.Fatalf("want one ERROR log with build_id and code, got %v", f.obs.All())
				}
			}
		})
	}
}

func TestRequestMetricsCountAttemptsByKindAndClass(t *testing.T) {
	f := newFixture(t, fast())
	f.api.FailNext(1, 500)
	if err := f.c.ReportScheduled(context.Background(), f.api.URL(), buildID, token, "n1", time.Now()); err != nil {
		t.Fatal(err)
	}
	f.api.SetStatus(404)
	_ = f.c.ReportSuccessSkipped(context.Background(), f.api.URL(), buildID, token)
	f.api.Down()
	f.c.maxAttempts = 1
	_ = f.c.ReportWaiting(context.Background(), f.api.URL(), buildID, token, "")
	for _, want := range []struct {
		kind, class string
		n           float64
	}{
		{KindScheduled, "5xx", 1}, {KindScheduled, "2xx", 1}, {KindSkipped, "4xx", 1}, {KindWaiting, "error", 1}, {KindFailure, "2xx", 0},
	} {
		if got := testutil.ToFloat64(f.m.Requests.WithLabelValues(want.kind, want.class)); got != want.n {
			t.Errorf("requests{%s,%s} = %v, want %v", want.kind, want.class, got, want.n)
		}
	}
	if got := testutil.CollectAndCount(f.m.Duration); got != len(allKinds) {
		t.Errorf("%d duration series, want %d", got, len(allKinds))
	}
}

func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		name       string
		retryAfter string
		maxDelay   time.Duration
		minGap     time.Duration
		maxGap     time.Duration
	}{
		{"429 waits the seconds asked for", "1", 5 * time.Second, 900 * time.Millisecond, 3 * time.Second},
		{"an excessive Retry-After is capped", "3600", 50 * time.Millisecond, 40 * time.Millisecond, time.Second},
		{"a bad Retry-After falls back to the backoff", "soon", 50 * time.Millisecond, 0, time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := fast()
			opts.MaxRetryDelay = tc.maxDelay
			f := newFixture(t, opts)
			f.api.RespondNext(1, testbed.CIResponse{Code: 429, RetryAfter: tc.retryAfter})
			if err := f.c.ReportWaiting(context.Background(), f.api.URL(), buildID, token, ""); err != nil {
				t.Fatal(err)
			}
			reqs := f.api.RequestsFor(buildID)
			if len(reqs) != 2 || reqs[0].Status != 429 || reqs[1].Status != 200 {
				t.Fatalf("requests %+v", reqs)
			}
			if gap := reqs[1].At.Sub(reqs[0].At); gap < tc.minGap || gap > tc.maxGap {
				t.Fatalf("retried after %v, want between %v and %v", gap, tc.minGap, tc.maxGap)
			}
		})
	}
}

func TestBackoffIsExponentialJitteredAndCapped(t *testing.T) {
	c := New(Options{RetryDelay: 100 * time.Millisecond, MaxRetryDelay: time.Second}, nil, nil)
	for _, tc := range []struct {
		attempt int
		lo, hi  time.Duration
	}{
		{1, 50 * time.Millisecond, 100 * time.Millisecond},
		{2, 100 * time.Millisecond, 200 * time.Millisecond},
		{3, 200 * time.Millisecond, 400 * time.Millisecond},
		{5, 500 * time.Millisecond, time.Second},
		{40, 500 * time.Millisecond, time.Second},
	} {
		for range 50 {
			if d := c.backoff(tc.attempt, 0); d < tc.lo || d > tc.hi {
				t.Fatalf("attempt %d: %v not in [%v, %v]", tc.attempt, d, tc.lo, tc.hi)
			}
		}
	}
	if d := c.backoff(1, 10*time.Second); d != time.Second {
		t.Fatalf("Retry-After 10s gave %v, want the 1s cap", d)
	}
}

func TestBreakerOpensAcrossCallsAndRecovers(t *testing.T) {
	const openFor = 300 * time.Millisecond
	opts := fast()
	opts.MaxAttempts = 2
	opts.Breaker = breaker.Settings{ConsecutiveFailures: 3, OpenTimeout: openFor}
	f := newFixture(t, opts)
	f.api.SetStatus(500)
	api := f.api.URL()

	// Call 1: two 500s. Call 2: one more 500 trips it; the retry is refused.
	if err := f.c.ReportWaiting(context.Background(), api, buildID, token, ""); errors.Is(err, breaker.ErrOpen) {
		t.Fatalf("first call: %v, the breaker opened too early", err)
	}
	err := f.c.ReportWaiting(context.Background(), api, buildID, token, "")
	if !errors.Is(err, breaker.ErrOpen) || !IsUnavailable(err) {
		t.Fatalf("second call: %v, want breaker.ErrOpen", err)
	}
	if n := len(f.api.Requests()); n != 3 {
		t.Fatalf("%d requests, want 3", n)
	}
	start := time.Now()
	err = f.c.ReportFailure(context.Background(), api, buildID+1, token, "x")
	if !errors.Is(err, breaker.ErrOpen) || time.Since(start) > 50*time.Millisecond {
		t.Fatalf("open breaker: %v after %v, want ErrOpen at once", err, time.Since(start))
	}
	if n := len(f.api.Requests()); n != 3 {
		t.Fatalf("%d requests, want none sent while open", n)
	}
	if got := testutil.ToFloat64(f.bm.State.WithLabelValues(BreakerName)); got != 2 {
		t.Fatalf("breaker_state %v, want 2 (open)", got)
	}

	f.api.SetStatus(0) // the API recovers
	time.Sleep(openFor + 50*time.Millisecond)
	if err := f.c.ReportWaiting(context.Background(), api, buildID, token, ""); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
	if s := f.c.Breaker().State(); s != breaker.StateClosed {
		t.Fatalf("breaker %v, want closed after a successful probe", s)
	}
	for to, want := range map[string]float64{"open": 1, "half-open": 1, "closed": 1} {
		if got := testutil.ToFloat64(f.bm.Transitions.WithLabelValues(BreakerName, to)); got != want {
			t.Errorf("transitions to %s = %v, want %v", to, got, want)
		}
	}
	if got := testutil.ToFloat64(f.bm.Rejected.WithLabelValues(BreakerName)); got != 2 {
		t.Errorf("breaker_rejected_total %v, want 2", got)
	}
}

func TestRejectionsDoNotTripTheBreaker(t *testing.T) {
	opts := fast()
	opts.Breaker = breaker.Settings{ConsecutiveFailures: 2, OpenTimeout: time.Hour}
	f := newFixture(t, opts)
	f.api.SetStatus(404)
	for range 5 {
		if err := f.c.ReportWaiting(context.Background(), f.api.URL(), buildID, token, ""); !IsRejected(err) {
			t.Fatalf("got %v, want rejected", err)
		}
	}
	if s := f.c.Breaker().State(); s != breaker.StateClosed {
		t.Fatalf("breaker %v after 404s, want closed", s)
	}
}

func TestTLSIsVerified(t *testing.T) {
	api := testbed.FakeCIAPITLS(t)
	insecure := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // proves it is overridden
	for _, tc := range []struct {
		name   string
		client *http.Client
		wantOK bool
	}{
		{"a client trusting the server's CA succeeds", api.Client(), true},
		{"the default client rejects an untrusted certificate", nil, false},
		{"a client asking to skip verification still verifies", insecure, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := fast()
			opts.HTTPClient = tc.client
			c := New(opts, nil, nil)
			before := len(api.Requests())
			err := c.ReportWaiting(context.Background(), api.URL(), buildID, token, "")
			if tc.wantOK {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !isCertError(err) || !strings.Contains(err.Error(), "certificate") {
				t.Fatalf("got %v, want a certificate verification error", err)
			}
			if n := len(api.Requests()) - before; n != 0 {
				t.Fatalf("%d requests reached the server over unverified TLS", n)
			}
		})
	}
}

func TestTokenNeverAppearsInLogsOrErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		program func(api *testbed.FakeAPI)
	}{
		{"server echoes the token in 5xx then 403 bodies", func(a *testbed.FakeAPI) {
			echo := fmt.Sprintf(`{"message":"bad token Bearer %s"}`, token)
			a.RespondNext(2, testbed.CIResponse{Code: 500, Body: echo})
			a.SetResponse(testbed.CIResponse{Code: 403, Body: echo})
		}},
		{"401", func(a *testbed.FakeAPI) { a.SetStatus(401) }},
		{"unreachable until the breaker opens", func(a *testbed.FakeAPI) { a.Down() }},
		{"429 with Retry-After", func(a *testbed.FakeAPI) {
			a.SetResponse(testbed.CIResponse{Code: 429, RetryAfter: "0", Body: token})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := fast()
			opts.Breaker = breaker.Settings{ConsecutiveFailures: 3, OpenTimeout: time.Hour}
			f := newFixture(t, opts)
			tc.program(f.api)
			var errs []error
			for range 3 {
				errs = append(errs, f.c.ReportFailure(context.Background(), f.api.URL(), buildID, token, "boom"))
			}
			if f.obs.Len() == 0 {
				t.Fatal("no logs captured: the test would prove nothing")
			}
			for _, err := range errs {
				if err == nil {
					t.Fatal("want failures")
				}
				if strings.Contains(err.Error(), token) || strings.Contains(fmt.Sprintf("%+v", err), token) {
					t.Fatalf("token in error: %v", err)
				}
			}
			for _, e := range f.obs.All() {
				enc := zapcore.NewMapObjectEncoder()
				for _, fld := range e.Context {
					fld.AddTo(enc)
				}
				text := e.Message + fmt.Sprint(enc.Fields)
				if strings.Contains(text, token) || strings.Contains(text, "SECRET") {
					t.Fatalf("token in log entry: %s", text)
				}
			}
		})
	}
}

func TestCancellationStopsRetries(t *testing.T) {
	t.Run("cancelled while waiting to retry", func(t *testing.T) {
		opts := fast()
		opts.RetryDelay, opts.MaxRetryDelay = time.Minute, time.Minute
		f := newFixture(t, opts)
		f.api.SetStatus(500)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- f.c.ReportWaiting(ctx, f.api.URL(), buildID, token, "") }()
		f.api.WaitFor(t, buildID, func(r []testbed.CIRequest) bool { return len(r) == 1 }, 5*time.Second)
		cancel()
		select {
		case err := <-done:
			if !errors.Is(err, context.Canceled) || IsUnavailable(err) {
				t.Fatalf("got %v, want context.Canceled", err)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("retries kept going after cancel")
		}
		if n := len(f.api.Requests()); n != 1 {
			t.Fatalf("%d requests, want 1", n)
		}
	})
	t.Run("cancelled mid-request does not count against the API", func(t *testing.T) {
		opts := fast()
		opts.Breaker = breaker.Settings{ConsecutiveFailures: 1, OpenTimeout: time.Hour}
		f := newFixture(t, opts)
		f.api.SetResponse(testbed.CIResponse{Code: 200, Delay: time.Minute})
		ctx, cancel := context.WithCancel(context.Background())
		go func() {
			f.api.WaitFor(t, buildID, func(r []testbed.CIRequest) bool { return len(r) == 1 }, 5*time.Second)
			cancel()
		}()
		err := f.c.ReportWaiting(ctx, f.api.URL(), buildID, token, "")
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if s := f.c.Breaker().State(); s != breaker.StateClosed {
			t.Fatalf("breaker %v, want closed", s)
		}
	})
	t.Run("already cancelled sends nothing", func(t *testing.T) {
		f := newFixture(t, fast())
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := f.c.ReportWaiting(ctx, f.api.URL(), buildID, token, ""); !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v", err)
		}
		if n := len(f.api.Requests()); n != 0 {
			t.Fatalf("%d requests", n)
		}
	})
}

func TestPerRequestTimeoutIsRetried(t *testing.T) {
	opts := fast()
	opts.Timeout = 50 * time.Millisecond
	opts.MaxAttempts = 2
	f := newFixture(t, opts)
	f.api.SetResponse(testbed.CIResponse{Code: 200, Delay: 5 * time.Second})
	start := time.Now()
	err := f.c.ReportWaiting(context.Background(), f.api.URL(), buildID, token, "")
	if !errors.Is(err, context.DeadlineExceeded) || !IsUnavailable(err) {
		t.Fatalf("got %v, want a timeout counted as unavailable", err)
	}
	if n := len(f.api.Requests()); n != 2 {
		t.Fatalf("%d requests, want 2", n)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("took %v: the per-request timeout did not bound the call", el)
	}
}

func TestStatusErrorClassification(t *testing.T) {
	for _, tc := range []struct {
		code            int
		retry, rejected bool
		class, rejLabel string
	}{
		{500, true, false, "retryable", "other"},
		{503, true, false, "retryable", "other"},
		{429, true, false, "retryable", "other"},
		{401, false, true, "rejected", "401"},
		{403, false, true, "rejected", "403"},
		{404, false, true, "rejected", "404"},
		{400, false, false, "invalid", "other"},
		{422, false, false, "invalid", "other"},
	} {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			e := &StatusError{Code: tc.code}
			if e.Retryable() != tc.retry || e.Rejected() != tc.rejected || e.Class() != tc.class || e.rejectedLabel() != tc.rejLabel {
				t.Fatalf("got retry=%v rejected=%v class=%s label=%s", e.Retryable(), e.Rejected(), e.Class(), e.rejectedLabel())
			}
		})
	}
}

func TestErrorBodyIsTruncated(t *testing.T) {
	f := newFixture(t, fast())
	f.api.SetResponse(testbed.CIResponse{Code: 400, Body: strings.Repeat("x", 10_000)})
	err := f.c.ReportWaiting(context.Background(), f.api.URL(), buildID, token, "")
	var se *StatusError
	if !errors.As(err, &se) || len(se.Body) > maxErrorBody+len("…") {
		t.Fatalf("body of %d bytes kept", len(se.Body))
	}
}

// A build's apiUri comes from Redis: its token goes only to the CI API the
// operator configured (ecosystem.api) or one they trust; any other apiUri
// is replaced by ecosystem.api, never called.
func TestUntrustedAPIURIIsReplacedByTheConfiguredAPI(t *testing.T) {
	trusted := testbed.FakeCIAPI(t) // an internal name of the same API
	evil := testbed.FakeCIAPI(t)
	for _, tc := range []struct {
		name   string
		apiURI func(f *fixture) string
		want   func(f *fixture) *testbed.FakeAPI
	}{
		{"DefaultAPIIsUsed", func(f *fixture) string { return f.api.URL() + "/" }, func(f *fixture) *testbed.FakeAPI { return f.api }},
		{"TrustedAPIIsUsed", func(*fixture) string { return trusted.URL() }, func(*fixture) *testbed.FakeAPI { return trusted }},
		{"OtherHostGoesToTheDefault", func(*fixture) string { return evil.URL() }, func(f *fixture) *testbed.FakeAPI { return f.api }},
		{"OtherSchemeGoesToTheDefault", func(f *fixture) string { return strings.Replace(f.api.URL(), "http://", "https://", 1) }, func(f *fixture) *testbed.FakeAPI { return f.api }},
		{"GarbageGoesToTheDefault", func(*fixture) string { return "javascript:alert(1)" }, func(f *fixture) *testbed.FakeAPI { return f.api }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := fast()
			opts.HTTPClient = http.DefaultClient
			f := &fixture{api: testbed.FakeCIAPI(t)}
			opts.DefaultAPI, opts.TrustedAPIs = f.api.URL(), []string{trusted.URL() + "/some/path"}
			f.m = NewMetrics(nil)
			f.c = New(opts, nil, f.m)
			trusted.Reset()
			evil.Reset()
			if err := f.c.ReportWaiting(context.Background(), tc.apiURI(f), buildID, token, ""); err != nil {
				t.Fatal(err)
			}
			if got := len(tc.want(f).Requests()); got != 1 {
				t.Fatalf("%d requests at the expected API, want 1", got)
			}
			if n := len(evil.Requests()); n != 0 {
				t.Fatalf("the token went to an untrusted host %d times", n)
			}
			redirected := tc.want(f) == f.api && !strings.HasPrefix(tc.apiURI(f), f.api.URL())
			if got := testutil.ToFloat64(f.m.Untrusted); (got == 1) != redirected {
				t.Fatalf("untrusted counter %v, redirected %v", got, redirected)
			}
		})
	}
}

// GetBuild reads back what the API holds, with the build token; an
// unreachable API is an error (the caller then sends the update again).
func TestGetBuildReadsWhatTheAPIHolds(t *testing.T) {
	f := newFixture(t, fast())
	ctx := context.Background()
	if err := f.c.ReportScheduled(ctx, f.api.URL(), buildID, token, "node-7", time.Now()); err != nil {
		t.Fatal(err)
	}
	b, err := f.c.GetBuild(ctx, f.api.URL(), buildID, token)
	if err != nil || b.Stats.Hostname != "node-7" || b.Status != "QUEUED" {
		t.Fatalf("GetBuild = %+v, %v", b, err)
	}
	reqs := f.api.Requests()
	if last := reqs[len(reqs)-1]; last.Method != http.MethodGet || last.Auth != "Bearer "+token {
		t.Fatalf("read sent as %s with auth %q", last.Method, last.Auth)
	}
	f.api.Down()
	if _, err := f.c.GetBuild(ctx, f.api.URL(), buildID, token); err == nil {
		t.Fatal("a read from an API that is down succeeded")
	}
}
