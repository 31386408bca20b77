package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Lifecycle converts lifecycleHooks to the build container's lifecycle; nil
// when none is configured. The reference pasted the map into the pod as is,
// so a typo only surfaced as a refused pod on every build; Validate calls
// this at load, so a Config from Load never fails here.
func (k *KataKubernetes) Lifecycle() (*corev1.Lifecycle, error) {
	lc, errs := lifecycleFromHooks(k.LifecycleHooks)
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return lc, nil
}

// hookError names the hook (postStart or preStop) at fault, or "" for the
// whole map.
type hookError struct {
	hook string
	err  error
}

func (e *hookError) Error() string {
	if e.hook == "" {
		return e.err.Error()
	}
	return e.hook + ": " + e.err.Error()
}

func lifecycleFromHooks(m map[string]any) (*corev1.Lifecycle, []error) {
	if len(m) == 0 {
		return nil, nil
	}
	var errs []error
	lc := &corev1.Lifecycle{}
	for _, name := range sortedKeys(m) {
		var slot **corev1.LifecycleHandler
		switch name {
		case "postStart":
			slot = &lc.PostStart
		case "preStop":
			slot = &lc.PreStop
		default:
			errs = append(errs, &hookError{name, errors.New("unknown hook; want postStart or preStop")})
			continue
		}
		h, err := lifecycleHandler(m[name])
		if err != nil {
			errs = append(errs, &hookError{name, err})
			continue
		}
		*slot = h
	}
	if len(errs) > 0 {
		return nil, errs
	}
	return lc, nil
}

// lifecycleHandler decodes one handler strictly (unknown fields refused) and
// checks that it names exactly one usable action.
func lifecycleHandler(v any) (*corev1.LifecycleHandler, error) {
	if _, ok := v.(map[string]any); !ok {
		return nil, fmt.Errorf("expected a mapping with one of exec, httpGet, tcpSocket, sleep, got %s", describeGo(v))
	}
	raw, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	var h corev1.LifecycleHandler
	if err := dec.Decode(&h); err != nil {
		return nil, fmt.Errorf("not a lifecycle handler: %v", strings.TrimPrefix(err.Error(), "json: "))
	}
	var actions []string
	if h.Exec != nil {
		actions = append(actions, "exec")
		if len(h.Exec.Command) == 0 || h.Exec.Command[0] == "" {
			return nil, errors.New("exec.command must not be empty")
		}
	}
	if h.HTTPGet != nil {
		actions = append(actions, "httpGet")
		if err := checkPort(h.HTTPGet.Port); err != nil {
			return nil, fmt.Errorf("httpGet.port: %w", err)
		}
		switch h.HTTPGet.Scheme {
		case "", corev1.URISchemeHTTP, corev1.URISchemeHTTPS:
		default:
			return nil, fmt.Errorf("httpGet.scheme %q is not HTTP or HTTPS", h.HTTPGet.Scheme)
		}
	}
	if h.TCPSocket != nil {
		actions = append(actions, "tcpSocket")
		if err := checkPort(h.TCPSocket.Port); err != nil {
			return nil, fmt.Errorf("tcpSocket.port: %w", err)
		}
	}
	if h.Sleep != nil {
		actions = append(actions, "sleep")
		if h.Sleep.Seconds < 0 {
			return nil, fmt.Errorf("sleep.seconds must not be negative, got %d", h.Sleep.Seconds)
		}
	}
	switch len(actions) {
	case 0:
		return nil, errors.New("needs one of exec, httpGet, tcpSocket, sleep")
	case 1:
		return &h, nil
	default:
		return nil, fmt.Errorf("has %s; exactly one action is allowed", strings.Join(actions, " and "))
	}
}

func checkPort(p intstr.IntOrString) error {
	if p.Type == intstr.String {
		if p.StrVal == "" {
			return errors.New("must be a port number or name")
		}
		return nil
	}
	if p.IntVal < 1 || p.IntVal > 65535 {
		return fmt.Errorf("%d is out of range 1..65535", p.IntVal)
	}
	return nil
}
