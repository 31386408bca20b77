package testbed

import (
	"encoding/json"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// CIRequest is one request that reached a FakeAPI.
type CIRequest struct {
	Method string
	Path   string
	// Auth is the Authorization header as sent.
	Auth        string
	ContentType string
	// BuildID is parsed from /v4/builds/<id>[/...]; 0 for other paths.
	BuildID int64
	// Body is the JSON body decoded into a map (nil if empty or not JSON);
	// Raw is the body as sent.
	Body map[string]any
	Raw  []byte
	At   time.Time
	// Status is the code the fake answered with; 0 means it dropped the
	// connection (Down).
	Status int
}

// CIResponse is a programmed answer.
type CIResponse struct {
	Code int
	// Body defaults to {"message":"<status text>"} for errors and
	// {"id":<buildID>} for 2xx.
	Body string
	// RetryAfter, if non-empty, is sent as the Retry-After header.
	RetryAfter string
	// Delay holds the answer back this long (or until the client goes away).
	Delay time.Duration
}

type ciRules struct {
	next   []CIResponse // consumed one per request
	steady *CIResponse
}

// FakeAPI is a fake Screwdriver CI API that records every request and answers
// as programmed. Precedence for each request: Down; then the build's queued
// answers (FailNextFor/RespondNextFor); then the global queue
// (FailNext/RespondNext); then the build's steady answer (SetBuildStatus);
// then the global one (SetStatus); else 200.
type FakeAPI struct {
	srv *httptest.Server

	mu      sync.Mutex
	changed chan struct{} // closed and replaced on every recorded request
	reqs    []CIRequest
	down    bool
	global  ciRules
	perID   map[int64]*ciRules
	// builds is each build as the API holds it: the fields of every
	// answered PUT merged (stats merged key by key); a GET returns it.
	builds map[int64]map[string]any
}

// FakeCIAPI starts a plain-HTTP fake CI API, closed when t ends.
func FakeCIAPI(t testing.TB) *FakeAPI {
	t.Helper()
	f := newFakeAPI()
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

// FakeCIAPITLS starts the fake behind TLS with httptest's self-signed
// certificate. Only Client() trusts it, so any other client proves that
// certificate verification is on by failing.
func FakeCIAPITLS(t testing.TB) *FakeAPI {
	t.Helper()
	f := newFakeAPI()
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	// Handshakes from clients that rightly distrust the certificate are
	// expected; keep them out of the test output.
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.StartTLS()
	t.Cleanup(f.Close)
	return f
}

func newFakeAPI() *FakeAPI {
	return &FakeAPI{changed: make(chan struct{}), perID: map[int64]*ciRules{}, builds: map[int64]map[string]any{}}
}

// URL is the base URI (no trailing slash) to use as apiUri.
func (f *FakeAPI) URL() string { return f.srv.URL }

// Client is an HTTP client for this server; for the TLS variant it trusts
// the server's certificate and nothing else, with verification on.
func (f *FakeAPI) Client() *http.Client { return f.srv.Client() }

// Close stops the server; it is safe to call more than once.
func (f *FakeAPI) Close() {
	f.mu.Lock()
	f.down = true // release handlers waiting on a Delay
	f.mu.Unlock()
	f.srv.CloseClientConnections()
	f.srv.Close()
}

// Requests returns a copy of every request so far, in arrival order.
func (f *FakeAPI) Requests() []CIRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]CIRequest(nil), f.reqs...)
}

// RequestsFor returns the requests for one build, in arrival order.
func (f *FakeAPI) RequestsFor(buildID int64) []CIRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.forLocked(buildID)
}

func (f *FakeAPI) forLocked(buildID int64) []CIRequest {
	var out []CIRequest
	for _, r := range f.reqs {
		if r.BuildID == buildID {
			out = append(out, r)
		}
	}
	return out
}

// WaitFor waits until pred holds for the build's requests and returns them;
// it fails t after timeout, listing what did arrive.
func (f *FakeAPI) WaitFor(t testing.TB, buildID int64, pred func([]CIRequest) bool, timeout time.Duration) []CIRequest {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		f.mu.Lock()
		got, changed := f.forLocked(buildID), f.changed
		f.mu.Unlock()
		if pred(got) {
			return got
		}
		select {
		case <-changed:
		case <-deadline.C:
			var seen []string
			for _, r := range got {
				seen = append(seen, strconv.Itoa(r.Status)+" "+r.Method+" "+r.Path+" "+string(r.Raw))
			}
			t.Fatalf("fake CI API: condition for build %d not met within %v; its requests:\n%s", buildID, timeout, strings.Join(seen, "\n"))
			return nil
		}
	}
}

// SetStatus makes every request answer code until changed (0 restores 200).
func (f *FakeAPI) SetStatus(code int) { f.SetResponse(CIResponse{Code: code}) }

// SetResponse makes every request get r until changed.
func (f *FakeAPI) SetResponse(r CIResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.global.steady = steady(r)
}

// SetBuildStatus makes requests for one build answer code (0 clears it).
func (f *FakeAPI) SetBuildStatus(buildID int64, code int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rulesLocked(buildID).steady = steady(CIResponse{Code: code})
}

// FailNext makes the next n requests (any build) answer code.
func (f *FakeAPI) FailNext(n, code int) { f.RespondNext(n, CIResponse{Code: code}) }

// RespondNext queues r for the next n requests (any build).
func (f *FakeAPI) RespondNext(n int, r CIResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		f.global.next = append(f.global.next, r)
	}
}

// FailNextFor makes the build's next n requests answer code.
func (f *FakeAPI) FailNextFor(buildID int64, n, code int) {
	f.RespondNextFor(buildID, n, CIResponse{Code: code})
}

// RespondNextFor queues r for the build's next n requests.
func (f *FakeAPI) RespondNextFor(buildID int64, n int, r CIResponse) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules := f.rulesLocked(buildID)
	for range n {
		rules.next = append(rules.next, r)
	}
}

// Down makes the API unreachable: every connection is dropped without an
// answer, so clients see a transport error. Up undoes it.
func (f *FakeAPI) Down() { f.setDown(true) }

// Up makes the API answer again (programmed answers are kept).
func (f *FakeAPI) Up() { f.setDown(false) }

func (f *FakeAPI) setDown(d bool) {
	f.mu.Lock()
	f.down = d
	f.mu.Unlock()
	if d {
		f.srv.CloseClientConnections()
	}
}

// Reset forgets the recorded requests and every programmed answer.
func (f *FakeAPI) Reset() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs, f.down, f.global, f.perID, f.builds = nil, false, ciRules{}, map[int64]*ciRules{}, map[int64]map[string]any{}
}

func steady(r CIResponse) *CIResponse {
	if r.Code == 0 {
		return nil
	}
	return &r
}

func (f *FakeAPI) rulesLocked(buildID int64) *ciRules {
	r := f.perID[buildID]
	if r == nil {
		r = &ciRules{}
		f.perID[buildID] = r
	}
	return r
}

// pickLocked chooses the answer for a request; ok false means drop it.
func (f *FakeAPI) pickLocked(buildID int64) (CIResponse, bool) {
	if f.down {
		return CIResponse{}, false
	}
	if r := f.perID[buildID]; r != nil && len(r.next) > 0 {
		out := r.next[0]
		r.next = r.next[1:]
		return out, true
	}
	if len(f.global.next) > 0 {
		out := f.global.next[0]
		f.global.next = f.global.next[1:]
		return out, true
	}
	if r := f.perID[buildID]; r != nil && r.steady != nil {
		return *r.steady, true
	}
	if f.global.steady != nil {
		return *f.global.steady, true
	}
	return CIResponse{Code: http.StatusOK}, true
}

func buildIDOf(path string) int64 {
	rest, ok := strings.CutPrefix(path, "/v4/builds/")
	if !ok {
		return 0
	}
	id, _, _ := strings.Cut(rest, "/")
	n, err := strconv.ParseInt(id, 10, 64)
	if err != nil {
		return 0
	}
	return n
}

func (f *FakeAPI) serve(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	req := CIRequest{
		Method: r.Method, Path: r.URL.Path,
		Auth: r.Header.Get("Authorization"), ContentType: r.Header.Get("Content-Type"),
		BuildID: buildIDOf(r.URL.Path), Raw: raw, At: time.Now(),
	}
	if len(raw) > 0 {
		var body map[string]any
		if json.Unmarshal(raw, &body) == nil {
			req.Body = body
		}
	}

	f.mu.Lock()
	resp, answer := f.pickLocked(req.BuildID)
	if answer {
		req.Status = resp.Code
		if resp.Code/100 == 2 && resp.Body == "" && req.BuildID != 0 {
			switch r.Method {
			case http.MethodPut:
				f.applyLocked(req.BuildID, req.Body)
			case http.MethodGet:
				b, _ := json.Marshal(f.buildLocked(req.BuildID))
				resp.Body = string(b)
			}
		}
	}
	f.reqs = append(f.reqs, req)
	close(f.changed)
	f.changed = make(chan struct{})
	f.mu.Unlock()

	if !answer {
		drop(w)
		return
	}
	if resp.Delay > 0 {
		select {
		case <-time.After(resp.Delay):
		case <-r.Context().Done():
			return
		}
	}
	body := resp.Body
	if body == "" {
		if resp.Code < 300 {
			body = `{"id":` + strconv.FormatInt(req.BuildID, 10) + `}`
		} else {
			msg, _ := json.Marshal(http.StatusText(resp.Code))
			body = `{"message":` + string(msg) + `}`
		}
	}
	w.Header().Set("Content-Type", "application/json")
	if resp.RetryAfter != "" {
		w.Header().Set("Retry-After", resp.RetryAfter)
	}
	w.WriteHeader(resp.Code)
	_, _ = io.WriteString(w, body)
}

// drop closes the connection without an answer.
func drop(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler)
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}

// applyLocked merges an answered update into the build's state.
func (f *FakeAPI) applyLocked(id int64, body map[string]any) {
	b := f.buildLocked(id)
	for k, v := range body {
		if m, ok := v.(map[string]any); ok {
			old, _ := b[k].(map[string]any)
			if old == nil {
				old = map[string]any{}
			}
			for mk, mv := range m {
				old[mk] = mv
			}
			v = old
		}
		b[k] = v
	}
}

func (f *FakeAPI) buildLocked(id int64) map[string]any {
	b := f.builds[id]
	if b == nil {
		b = map[string]any{"id": id, "status": "QUEUED"}
		f.builds[id] = b
	}
	return b
}
