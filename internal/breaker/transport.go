package breaker

import (
	"context"
	"errors"
	"net/http"
)

// errServerStatus marks a response that counts against the dependency; the
// caller still gets the response itself.
var errServerStatus = errors.New("server error status")

// HTTPFailure is the failure rule for HTTP dependencies: transport errors,
// timeouts, 5xx and 429 count; a request its caller cancelled does not.
func HTTPFailure(err error) bool {
	return err != nil && !errors.Is(err, context.Canceled)
}

// RoundTripper sends every request of an HTTP client through b, so one
// breaker guards a whole dependency (all of client-go's calls, informers
// included). While b is open, requests fail at once with an error wrapping
// ErrOpen. b should use HTTPFailure (or a stricter rule) as IsFailure.
func RoundTripper(b *Breaker, next http.RoundTripper) http.RoundTripper {
	return roundTripper{b: b, next: next}
}

type roundTripper struct {
	b    *Breaker
	next http.RoundTripper
}

func (t roundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	var resp *http.Response
	err := t.b.Execute(req.Context(), func() error {
		var err error
		resp, err = t.next.RoundTrip(req)
		if err != nil {
			return err
		}
		if resp.StatusCode >= 500 || resp.StatusCode == http.StatusTooManyRequests {
			return errServerStatus
		}
		return nil
	})
	if errors.Is(err, errServerStatus) {
		return resp, nil
	}
	return resp, err
}
