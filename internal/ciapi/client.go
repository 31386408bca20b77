package ciapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/sdkata/queue-worker/internal/breaker"
)

// Defaults for zero Options fields.
const (
	DefaultTimeout       = 10 * time.Second
	DefaultMaxAttempts   = 5
	DefaultRetryDelay    = 3 * time.Second
	DefaultMaxRetryDelay = 30 * time.Second
	// BreakerName is the name of the client's breaker (a metric label).
	BreakerName = "ci-api"
)

// Status messages the daemon sends, as the reference sends them.
const (
	MsgWaiting         = "Waiting for resources to be available."
	MsgInitDelayed     = "Build initialization delayed - pod creation taking longer than expected"
	MsgSkippedVirtual  = "Skipped execution of the virtual job"
	StatusFailure      = "FAILURE"
	StatusSuccess      = "SUCCESS"
	MessageTypeInfo    = "INFO"
	maxResponseRead    = 64 << 10
	redactedToken      = "[redacted]"
	imagePullTimestamp = "2006-01-02T15:04:05.000Z07:00" // JS toISOString in UTC
)

// Options configure a Client. Zero fields take the defaults.
type Options struct {
	// HTTPClient sends the requests (nil: a client with TLS 1.2+ and
	// certificate verification). The client is copied: redirects are never
	// followed, and a *http.Transport with InsecureSkipVerify is replaced by
	// a verifying copy.
	HTTPClient *http.Client
	// Timeout bounds each HTTP attempt.
	Timeout time.Duration
	// MaxAttempts bounds the attempts of one update (REQUEST_MAXATTEMPTS).
	MaxAttempts int
	// RetryDelay is the first backoff (REQUEST_RETRYDELAY); it doubles per
	// attempt, with jitter, up to MaxRetryDelay.
	RetryDelay time.Duration
	// MaxRetryDelay caps the backoff and any Retry-After the API asks for.
	MaxRetryDelay time.Duration
	// Breaker configures the "ci-api" breaker. If IsFailure is nil the
	// client's own rule applies: transport errors, timeouts, 5xx and 429
	// count against the API, other answers do not.
	Breaker breaker.Settings
	// BreakerMetrics receives the breaker's metrics (nil: unregistered).
	BreakerMetrics *breaker.Metrics
	// DefaultAPI is the CI API (ecosystem.api). A build's own apiUri is
	// used only if it is on DefaultAPI's origin or one of TrustedAPIs;
	// any other is replaced by DefaultAPI, so a build token never goes to
	// a host the operator did not name. Empty: every apiUri is used as is.
	DefaultAPI  string
	TrustedAPIs []string
}

// BuildUpdate is the JSON body of PUT /v4/builds/<id>.
type BuildUpdate struct {
	Status            string `json:"status,omitempty"`
	StatusMessage     string `json:"statusMessage,omitempty"`
	StatusMessageType string `json:"statusMessageType,omitempty"`
	Stats             *Stats `json:"stats,omitempty"`
}

// Stats are the build stats the daemon reports.
type Stats struct {
	Hostname           string `json:"hostname,omitempty"`
	ImagePullStartTime string `json:"imagePullStartTime,omitempty"`
}

// Client calls the CI API. It is safe for concurrent use.
type Client struct {
	defaultAPI    string
	trusted       map[string]bool // scheme://host[:port]
	hc            *http.Client
	timeout       time.Duration
	maxAttempts   int
	retryDelay    time.Duration
	maxRetryDelay time.Duration
	breaker       *breaker.Breaker
	log           *zap.Logger
	m             *Metrics
}

// New returns a client. log nil: no logs; m nil: unregistered metrics.
func New(opts Options, log *zap.Logger, m *Metrics) *Client {
	if log == nil {
		log = zap.NewNop()
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	if opts.RetryDelay <= 0 {
		opts.RetryDelay = DefaultRetryDelay
	}
	if opts.MaxRetryDelay <= 0 {
		opts.MaxRetryDelay = DefaultMaxRetryDelay
	}
	bs := opts.Breaker
	if bs.IsFailure == nil {
		bs.IsFailure = countsAgainstAPI
	}
	if bs.Logger == nil {
		bs.Logger = log
	}
	trusted := map[string]bool{}
	for _, u := range append([]string{opts.DefaultAPI}, opts.TrustedAPIs...) {
		if o := origin(u); o != "" {
			trusted[o] = true
		}
	}
	return &Client{
		defaultAPI:    opts.DefaultAPI,
		trusted:       trusted,
		hc:            httpClient(opts.HTTPClient, log),
		timeout:       opts.Timeout,
		maxAttempts:   opts.MaxAttempts,
		retryDelay:    opts.RetryDelay,
		maxRetryDelay: opts.MaxRetryDelay,
		breaker:       breaker.New(BreakerName, bs, opts.BreakerMetrics),
		log:           log,
		m:             m,
	}
}

// Breaker is the client's "ci-api" breaker, for health reporting.
func (c *Client) Breaker() *breaker.Breaker { return c.breaker }

func httpClient(given *http.Client, log *zap.Logger) *http.Client {
	var hc http.Client
	if given != nil {
		hc = *given
	} else {
		t := http.DefaultTransport.(*http.Transport).Clone()
		t.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		hc.Transport = t
	}
	if t, ok := hc.Transport.(*http.Transport); ok && t.TLSClientConfig != nil && t.TLSClientConfig.InsecureSkipVerify {
		log.Warn("ci api: the given HTTP transport skips TLS verification; verifying anyway")
		t = t.Clone()
		t.TLSClientConfig.InsecureSkipVerify = false
		hc.Transport = t
	}
	// A redirect would resend the body, and possibly the token, elsewhere.
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &hc
}

// ReportScheduled records the node the build's pod was scheduled on and now
// as the image pull start: {"stats":{"hostname":..,"imagePullStartTime":..}}.
func (c *Client) ReportScheduled(ctx context.Context, apiURI string, buildID int64, token, nodeName string, now time.Time) error {
	u := BuildUpdate{Stats: &Stats{Hostname: nodeName, ImagePullStartTime: now.UTC().Format(imagePullTimestamp)}}
	return c.update(ctx, KindScheduled, apiURI, buildID, token, u)
}

// ReportWaiting sets the build's status message without changing its status;
// msg "" sends MsgWaiting ("Waiting for resources to be available.").
func (c *Client) ReportWaiting(ctx context.Context, apiURI string, buildID int64, token, msg string) error {
	if msg == "" {
		msg = MsgWaiting
	}
	return c.update(ctx, KindWaiting, apiURI, buildID, token, BuildUpdate{StatusMessage: msg})
}

// ReportFailure marks the build FAILURE with msg as its status message (sent
// as is: no "Error: " prefix).
func (c *Client) ReportFailure(ctx context.Context, apiURI string, buildID int64, token, msg string) error {
	return c.update(ctx, KindFailure, apiURI, buildID, token, BuildUpdate{Status: StatusFailure, StatusMessage: msg})
}

// ReportSuccessSkipped marks a virtual job's build SUCCESS without running it.
func (c *Client) ReportSuccessSkipped(ctx context.Context, apiURI string, buildID int64, token string) error {
	u := BuildUpdate{Status: StatusSuccess, StatusMessage: MsgSkippedVirtual, StatusMessageType: MessageTypeInfo}
	return c.update(ctx, KindSkipped, apiURI, buildID, token, u)
}

// Build is what the CI API holds of a build, as far as the daemon's own
// updates go: enough to tell whether an update already arrived.
type Build struct {
	Status        string `json:"status"`
	StatusMessage string `json:"statusMessage"`
	Stats         Stats  `json:"stats"`
}

// GetBuild reads the build (GET <apiURI>/v4/builds/<buildID>, with the
// build token, which may read its own build). One attempt, through the
// breaker: it only decides whether an update must be sent again, and an
// error means "send it".
func (c *Client) GetBuild(ctx context.Context, apiURI string, buildID int64, token string) (*Build, error) {
	target, err := c.target(KindRead, apiURI, buildID)
	if err != nil {
		return nil, fmt.Errorf("reading build %d: %w", buildID, err)
	}
	var raw []byte
	err = c.breaker.Execute(ctx, func() error {
		start := time.Now()
		code, body, _, err := c.send(ctx, http.MethodGet, target.String(), token, nil)
		c.m.Duration.WithLabelValues(KindRead).Observe(time.Since(start).Seconds())
		c.m.Requests.WithLabelValues(KindRead, codeClass(code)).Inc()
		raw = body
		if err != nil && code == 0 && ctx.Err() != nil {
			return &callerGone{err}
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("reading build %d at %s: %w", buildID, target.Host, err)
	}
	var b Build
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, fmt.Errorf("reading build %d at %s: decoding: %w", buildID, target.Host, err)
	}
	return &b, nil
}

// target is the build's URL on a trusted CI API (see Options.DefaultAPI).
func (c *Client) target(kind, apiURI string, buildID int64) (*url.URL, error) {
	if c.defaultAPI != "" && !c.trusted[origin(apiURI)] {
		// The build's apiUri comes from Redis; its token goes only where the
		// operator's config says the CI API is.
		c.log.Warn("build apiUri is not a trusted CI API; using ecosystem.api instead",
			zap.Int64("build_id", buildID), zap.String("kind", kind), zap.String("api_uri", redactURL(apiURI)),
			zap.String("api", redactURL(c.defaultAPI)))
		c.m.Untrusted.Inc()
		apiURI = c.defaultAPI
	}
	return buildURL(apiURI, buildID)
}

// UpdateBuild sends PUT <apiURI>/v4/builds/<buildID> with u as its body and
// the build token as bearer. It retries transport errors, timeouts, 5xx and
// 429 up to MaxAttempts, and returns:
//   - nil once the API answered 2xx;
//   - an error wrapping breaker.ErrOpen if the breaker refused (IsUnavailable);
//   - an error wrapping *StatusError for any other answer: never retried if
//     4xx other than 429 (IsRejected for 401/403/404), and retryable ones
//     once the attempts ran out (IsUnavailable);
//   - an error wrapping the transport or context error otherwise.
func (c *Client) UpdateBuild(ctx context.Context, apiURI string, buildID int64, token string, u BuildUpdate) error {
	return c.update(ctx, KindOther, apiURI, buildID, token, u)
}

func (c *Client) update(ctx context.Context, kind, apiURI string, buildID int64, token string, u BuildUpdate) error {
	target, err := c.target(kind, apiURI, buildID)
	if err != nil {
		return fmt.Errorf("updating build %d (%s): %w", buildID, kind, err)
	}
	if token == "" {
		return fmt.Errorf("updating build %d (%s): %w", buildID, kind, &inputError{"no build token"})
	}
	body, err := json.Marshal(u)
	if err != nil {
		return fmt.Errorf("updating build %d (%s): encoding body: %w", buildID, kind, err)
	}
	log := c.log.With(zap.Int64("build_id", buildID), zap.String("kind", kind), zap.String("api", target.Host))
	what := fmt.Sprintf("updating build %d (%s) at %s", buildID, kind, target.Host)

	var lastErr error
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			return joinLast(fmt.Errorf("%s: gave up before attempt %d: %w", what, attempt, err), lastErr)
		}
		retryAfter, err := c.attempt(ctx, kind, target.String(), token, body)
		if err == nil {
			log.Debug("ci api build updated", zap.Int("attempt", attempt))
			return nil
		}
		if errors.Is(err, breaker.ErrOpen) {
			log.Warn("ci api unavailable: breaker open, not calling", zap.Int("attempt", attempt))
			return joinLast(fmt.Errorf("%s: %w", what, err), lastErr)
		}
		var se *StatusError
		isStatus := errors.As(err, &se)
		if isStatus && !se.Retryable() {
			c.m.Rejected.WithLabelValues(se.rejectedLabel()).Inc()
			log.Error("ci api refused build update",
				zap.Int("code", se.Code), zap.String("class", se.Class()), zap.String("body", se.Body))
			return fmt.Errorf("%s: %w", what, err)
		}
		if cerr := ctx.Err(); cerr != nil {
			return fmt.Errorf("%s: stopped after attempt %d: %w; attempt error: %w", what, attempt, cerr, err)
		}
		if isCertError(err) {
			// Retrying cannot fix a certificate; it still counted against
			// the breaker, as the API is unusable.
			log.Error("ci api TLS certificate not trusted", zap.Error(err))
			return fmt.Errorf("%s: %w", what, err)
		}
		if attempt >= c.maxAttempts {
			log.Warn("ci api build update failed; attempts exhausted",
				zap.Int("attempts", attempt), zap.Error(err))
			return fmt.Errorf("%s: %d attempts failed, last: %w", what, attempt, err)
		}
		delay := c.backoff(attempt, retryAfter)
		fields := []zap.Field{zap.Int("attempt", attempt), zap.Int("max_attempts", c.maxAttempts), zap.Duration("retry_in", delay), zap.Error(err)}
		if isStatus {
			fields = append(fields, zap.Int("code", se.Code))
		}
		log.Warn("ci api build update failed; retrying", fields...)
		lastErr = err
		if err := sleep(ctx, delay); err != nil {
			return joinLast(fmt.Errorf("%s: waiting to retry after attempt %d: %w", what, attempt, err), lastErr)
		}
	}
}

func joinLast(err, last error) error {
	if last == nil {
		return err
	}
	return fmt.Errorf("%w; previous attempt: %w", err, last)
}

// attempt sends one request through the breaker. It returns how long the API
// asked to wait (Retry-After) on 429 or 503.
func (c *Client) attempt(ctx context.Context, kind, target, token string, body []byte) (time.Duration, error) {
	var retryAfter time.Duration
	err := c.breaker.Execute(ctx, func() error {
		start := time.Now()
		code, _, ra, err := c.send(ctx, http.MethodPut, target, token, body)
		c.m.Duration.WithLabelValues(kind).Observe(time.Since(start).Seconds())
		c.m.Requests.WithLabelValues(kind, codeClass(code)).Inc()
		retryAfter = ra
		if err != nil && code == 0 && ctx.Err() != nil {
			// The caller went away: says nothing about the API.
			return &callerGone{err}
		}
		return err
	})
	return retryAfter, err
}

// send does one HTTP exchange; code 0 means no answer. It returns the
// response body of a 2xx answer.
func (c *Client) send(ctx context.Context, method, target, token string, body []byte) (int, []byte, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return 0, nil, 0, &inputError{fmt.Sprintf("building request: %v", err)}
	}
	req.Header.Set("Authorization", "Bearer "+token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return 0, nil, 0, fmt.Errorf("sending request: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseRead))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// An update is applied even if reading the rest of the body failed;
		// a read needs the body.
		if err != nil && method == http.MethodGet {
			return resp.StatusCode, nil, 0, fmt.Errorf("reading the response: %w", err)
		}
		return resp.StatusCode, raw, 0, nil
	}
	if err != nil {
		raw = append(raw, "…(unreadable)"...)
	}
	se := &StatusError{Code: resp.StatusCode, Body: cleanBody(raw, token)}
	return resp.StatusCode, nil, parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()), se
}

// callerGone marks a failed attempt whose context the caller cancelled.
type callerGone struct{ err error }

func (e *callerGone) Error() string { return e.err.Error() }
func (e *callerGone) Unwrap() error { return e.err }

// countsAgainstAPI is the breaker's failure rule.
func countsAgainstAPI(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.Retryable()
	}
	var ie *inputError
	var cg *callerGone
	return !errors.As(err, &ie) && !errors.As(err, &cg)
}

func isCertError(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	return errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &hostname) || errors.As(err, &invalid)
}

func buildURL(apiURI string, buildID int64) (*url.URL, error) {
	u, err := url.Parse(strings.TrimSpace(apiURI))
	if err != nil {
		return nil, &inputError{fmt.Sprintf("parsing api uri: %v", err)}
	}
	if (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return nil, &inputError{fmt.Sprintf("api uri %q: want http(s)://host[/path]", u.Redacted())}
	}
	u.User, u.RawQuery, u.Fragment = nil, "", ""
	return u.JoinPath("v4", "builds", strconv.FormatInt(buildID, 10)), nil
}

// origin is scheme://host[:port] of an absolute http(s) URL, lowercased;
// "" for anything else.
func origin(raw string) string {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return ""
	}
	return strings.ToLower(u.Scheme + "://" + u.Host)
}

// redactURL is raw without its userinfo, for logs.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable)"
	}
	return u.Redacted()
}

func cleanBody(raw []byte, token string) string {
	s := strings.ReplaceAll(string(raw), token, redactedToken)
	s = strings.TrimSpace(s)
	if len(s) > maxErrorBody {
		s = s[:maxErrorBody] + "…"
	}
	return strings.ToValidUTF8(s, "")
}

// parseRetryAfter reads delay-seconds or an HTTP date; 0 if absent or bad.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 0 {
			return 0
		}
		return time.Duration(n) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// backoff is the wait after a failed attempt: the API's Retry-After if it
// gave one, else RetryDelay doubled per attempt with jitter (half fixed, half
// random); either capped at MaxRetryDelay.
func (c *Client) backoff(attempt int, retryAfter time.Duration) time.Duration {
	if retryAfter > 0 {
		return min(retryAfter, c.maxRetryDelay)
	}
	d := c.retryDelay
	for i := 1; i < attempt && d < c.maxRetryDelay; i++ {
		d *= 2
	}
	d = min(d, c.maxRetryDelay)
	half := d / 2
	return half + rand.N(d-half+1)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
