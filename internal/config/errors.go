package config

import (
	"errors"
	"fmt"
	"strings"
)

// ErrUnknownKey is matched (errors.Is) by every FieldError about a key that
// the Config struct does not have.
var ErrUnknownKey = errors.New("unknown key")

// sourceUnset marks a key that no file or env var set, so an error about its
// zero value says so instead of pointing at a file that never mentioned it.
const sourceUnset = "\x00unset"

// FieldError is one problem with one configuration key. Load and Validate
// return several of them joined with errors.Join, so that an operator fixes
// a broken ConfigMap in one round rather than one error per restart.
type FieldError struct {
	// Key is the dotted path, e.g. "executor.k8s.exclusion[1]". Free-form map
	// keys that contain dots are bracketed: nodeSelectors['kubernetes.io/arch'].
	Key string
	// Source says where the value came from: "file PATH", "env VAR", or
	// empty when unknown (a Config built in code).
	Source string
	Err    error
}

func (e *FieldError) Error() string {
	var b strings.Builder
	b.WriteString("config: ")
	var unknown *unknownKeyError
	isUnknown := errors.As(e.Err, &unknown)
	if isUnknown {
		fmt.Fprintf(&b, "unknown key %q", e.Key)
	} else {
		fmt.Fprintf(&b, "key %q", e.Key)
	}
	switch e.Source {
	case "":
	case sourceUnset:
		b.WriteString(" (not set)")
	default:
		fmt.Fprintf(&b, " (from %s)", e.Source)
	}
	if isUnknown {
		if unknown.suggest != "" {
			fmt.Fprintf(&b, "; did you mean %q?", unknown.suggest)
		}
	} else if e.Err != nil {
		b.WriteString(": ")
		b.WriteString(e.Err.Error())
	}
	return b.String()
}

func (e *FieldError) Unwrap() error { return e.Err }

type unknownKeyError struct {
	// suggest is a known key that differs only in case; keys are
	// case-sensitive, and "launchimage" is the commonest slip.
	suggest string
}

func (e *unknownKeyError) Error() string {
	if e.suggest != "" {
		return fmt.Sprintf("unknown key (did you mean %q?)", e.suggest)
	}
	return "unknown key"
}

func (e *unknownKeyError) Is(target error) bool { return target == ErrUnknownKey }

// fieldErrors collects FieldErrors in the order they were found.
type fieldErrors []error

func (fe *fieldErrors) add(key, source string, err error) {
	*fe = append(*fe, &FieldError{Key: key, Source: source, Err: err})
}

func (fe *fieldErrors) addf(key, source, format string, args ...any) {
	fe.add(key, source, fmt.Errorf(format, args...))
}

func (fe fieldErrors) err() error { return errors.Join(fe...) }
