package ciapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"

	"github.com/sdkata/queue-worker/internal/breaker"
)

// maxErrorBody bounds the response body kept in a StatusError.
const maxErrorBody = 512

// StatusError is a non-2xx answer from the CI API.
type StatusError struct {
	Code int
	// Body is the start of the response body, truncated to a few hundred
	// bytes, with the build token (if the server echoed it) redacted.
	Body string
}

func (e *StatusError) Error() string {
	return fmt.Sprintf("ci api answered %d %s: %s", e.Code, http.StatusText(e.Code), e.Body)
}

// Retryable reports whether the same request may succeed later: 5xx and 429.
func (e *StatusError) Retryable() bool {
	return e.Code >= 500 || e.Code == http.StatusTooManyRequests
}

// Rejected reports whether the API refused this build or token outright
// (401, 403, 404). Retrying cannot help and the build cannot be updated with
// this token; the caller must surface it, not acknowledge and forget.
func (e *StatusError) Rejected() bool {
	switch e.Code {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusNotFound:
		return true
	}
	return false
}

// Class names the kind of answer: "rejected" (401/403/404), "retryable"
// (5xx/429), or "invalid" (any other 4xx: the request itself was refused).
func (e *StatusError) Class() string {
	switch {
	case e.Rejected():
		return "rejected"
	case e.Retryable():
		return "retryable"
	}
	return "invalid"
}

// rejectedLabel is the bounded code label of ciapi_rejected_total.
func (e *StatusError) rejectedLabel() string {
	if e.Rejected() {
		return strconv.Itoa(e.Code)
	}
	return "other"
}

// IsRejected reports whether err carries a 401, 403 or 404 from the API.
func IsRejected(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Rejected()
}

// IsUnavailable reports whether err means the API could not be reached or
// was failing (breaker open, transport errors, timeouts, 5xx, 429 once the
// attempts ran out): the work should be delayed and retried later, not
// failed. It is false for 4xx answers, bad input, and a cancelled caller.
func IsUnavailable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, breaker.ErrOpen) {
		return true
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.Retryable()
	}
	var ie *inputError
	return !errors.As(err, &ie)
}

// inputError is a request the client refused to send (bad URI, no token).
type inputError struct{ msg string }

func (e *inputError) Error() string { return e.msg }
