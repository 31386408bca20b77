package ciapi

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"

	"go.uber.org/zap"
)

// KindStep labels the step calls of the timeout checker.
const KindStep = "step"

// stepBody is the body of PUT /v4/builds/<id>/steps/<name>.
type stepBody struct {
	EndTime string `json:"endTime"`
	Code    int    `json:"code"`
}

// ActiveStep returns the name of the build's active step, "" if none:
// GET <apiURI>/v4/builds/<id>/steps?status=active (the first one listed).
// One attempt through the breaker: the timeout checker calls it once a
// minute at most and tries again on its next pass.
func (c *Client) ActiveStep(ctx context.Context, apiURI string, buildID int64, token string) (string, error) {
	u, err := c.stepURL(apiURI, buildID, "")
	if err != nil {
		return "", err
	}
	u.RawQuery = url.Values{"status": {"active"}}.Encode()
	raw, err := c.exchange(ctx, http.MethodGet, u.String(), token, nil)
	if err != nil {
		return "", fmt.Errorf("reading the active step of build %d: %w", buildID, err)
	}
	var steps []struct {
		Name string `json:"name"`
	}
	if err := json.Unmarshal(raw, &steps); err != nil {
		return "", fmt.Errorf("reading the active step of build %d: decoding %d bytes: %w", buildID, len(raw), err)
	}
	if len(steps) == 0 {
		return "", nil
	}
	return steps[0].Name, nil
}

// StopStep ends a step with an exit code, as queue-service's timeout checker
// does (code 3 for a timeout): PUT <apiURI>/v4/builds/<id>/steps/<name>
// {"endTime": <ISO time>, "code": code}.
func (c *Client) StopStep(ctx context.Context, apiURI string, buildID int64, token, step string, code int, end time.Time) error {
	u, err := c.stepURL(apiURI, buildID, step)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(stepBody{EndTime: end.UTC().Format(imagePullTimestamp), Code: code})
	if _, err := c.exchange(ctx, http.MethodPut, u.String(), token, body); err != nil {
		return fmt.Errorf("ending step %q of build %d: %w", step, buildID, err)
	}
	return nil
}

func (c *Client) stepURL(apiURI string, buildID int64, step string) (*url.URL, error) {
	if c.defaultAPI != "" && !c.trusted[origin(apiURI)] {
		c.log.Warn("build apiUri is not a trusted CI API; calling ecosystem.api instead",
			zap.Int64("build_id", buildID), zap.String("kind", KindStep), zap.String("api_uri", redactURL(apiURI)))
		c.m.Untrusted.Inc()
		apiURI = c.defaultAPI
	}
	u, err := buildURL(apiURI, buildID)
	if err != nil {
		return nil, fmt.Errorf("build %d steps: %w", buildID, err)
	}
	u = u.JoinPath("steps")
	if step != "" {
		u = u.JoinPath(step)
	}
	return u, nil
}

// exchange does one call through the breaker and returns a 2xx answer's body.
func (c *Client) exchange(ctx context.Context, method, target, token string, body []byte) ([]byte, error) {
	if token == "" {
		return nil, &inputError{"no build token"}
	}
	var out []byte
	err := c.breaker.Execute(ctx, func() error {
		ctx, cancel := context.WithTimeout(ctx, c.timeout)
		defer cancel()
		start := time.Now()
		req, err := http.NewRequestWithContext(ctx, method, target, bytes.NewReader(body))
		if err != nil {
			return &inputError{fmt.Sprintf("building request: %v", err)}
		}
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Accept", "application/json")
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := c.hc.Do(req)
		c.m.Duration.WithLabelValues(KindStep).Observe(time.Since(start).Seconds())
		if err != nil {
			c.m.Requests.WithLabelValues(KindStep, codeClass(0)).Inc()
			if ctx.Err() != nil {
				return &callerGone{err}
			}
			return fmt.Errorf("sending request: %w", err)
		}
		defer resp.Body.Close()
		c.m.Requests.WithLabelValues(KindStep, codeClass(resp.StatusCode)).Inc()
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxResponseRead))
		if resp.StatusCode < 200 || resp.StatusCode >= 300 {
			return &StatusError{Code: resp.StatusCode, Body: cleanBody(raw, token)}
		}
		out = raw
		return nil
	})
	return out, err
}
