package config

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
)

var durationType = reflect.TypeFor[time.Duration]()

// structFields maps each key a struct accepts (its mapstructure tag) to the
// field type, with ",squash" embedded structs flattened into the parent as
// mapstructure does.
func structFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("mapstructure")
		if tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if opts == "squash" && f.Type.Kind() == reflect.Struct {
			for k, v := range structFields(f.Type) {
				out[k] = v
			}
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

// unknownKey builds the error for a key the struct lacks, suggesting the
// real key when only the case differs.
func unknownKey(fields map[string]reflect.Type, key string) error {
	for name := range fields {
		if strings.EqualFold(name, key) {
			return &unknownKeyError{suggest: name}
		}
	}
	return &unknownKeyError{}
}

// decodeTree checks the merged tree against Config with full key paths and
// sources, converts every leaf to its field's exact Go type, and only then
// hands the result to mapstructure. mapstructure alone would lower-case-match
// keys, accept "1"/"T" as booleans under weak typing, and report paths
// without saying which file or env var was at fault.
func decodeTree(root *node) (*Config, fieldErrors) {
	d := &decoder{}
	plain, _ := d.value(root, reflect.TypeFor[Config](), "")
	if len(d.errs) > 0 {
		return nil, d.errs
	}
	var cfg Config
	md, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{
		Result:      &cfg,
		TagName:     "mapstructure",
		ErrorUnused: true,
		// The pre-pass already matched keys exactly; keep mapstructure from
		// folding case behind its back.
		MatchName: func(mapKey, fieldName string) bool { return mapKey == fieldName },
	})
	if err == nil {
		err = md.Decode(plain)
	}
	if err != nil {
		// Unreachable unless the pre-pass and mapstructure disagree.
		return nil, fieldErrors{fmt.Errorf("config: decoding: %w", err)}
	}
	return &cfg, nil
}

type decoder struct {
	errs fieldErrors
}

func (d *decoder) typeErr(n *node, t reflect.Type, path string) {
	msg := fmt.Sprintf("expected %s, got %s", typeName(t), describeNode(n))
	switch k := t.Kind(); {
	case n.raw && (k == reflect.Struct || k == reflect.Map || k == reflect.Slice):
		msg += "; map this key with {__name: VAR, __format: json}"
	case k == reflect.String && n.kind == scalarNode && !n.raw:
		// YAML's true/80 are not strings; Kubernetes label and annotation
		// values must be, and silently stringifying hides typos.
		msg += "; quote it to make it a string"
	}
	d.errs.add(path, n.src, errors.New(msg))
}

// value returns n converted for a field of type t, and false when the key
// should stay at its zero value (absent, null, or in error).
func (d *decoder) value(n *node, t reflect.Type, path string) (any, bool) {
	if n == nil || n.isNull() {
		return nil, false
	}
	if t == durationType {
		return d.duration(n, t, path)
	}
	switch t.Kind() {
	case reflect.Pointer:
		return d.value(n, t.Elem(), path)
	case reflect.Struct:
		return d.structValue(n, t, path)
	case reflect.Map:
		return d.mapValue(n, t, path)
	case reflect.Slice:
		return d.sliceValue(n, t, path)
	case reflect.Interface:
		return toPlain(n), true
	case reflect.String, reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.Float32, reflect.Float64:
		if n.kind != scalarNode {
			d.typeErr(n, t, path)
			return nil, false
		}
		v, err := convertScalar(n, t)
		if err != nil {
			d.errs.add(path, n.src, err)
			return nil, false
		}
		return v, true
	default:
		d.errs.addf(path, n.src, "unsupported field type %s", t)
		return nil, false
	}
}

func (d *decoder) structValue(n *node, t reflect.Type, path string) (any, bool) {
	if n.kind != mapNode {
		d.typeErr(n, t, path)
		return nil, false
	}
	fields := structFields(t)
	out := make(map[string]any, len(n.m))
	for _, k := range sortedKeys(n.m) {
		c := n.m[k]
		p := joinKey(path, k)
		ft, ok := fields[k]
		if !ok {
			d.errs.add(p, c.src, unknownKey(fields, k))
			continue
		}
		if v, ok := d.value(c, ft, p); ok {
			out[k] = v
		}
	}
	return out, true
}

func (d *decoder) mapValue(n *node, t reflect.Type, path string) (any, bool) {
	if t.Key().Kind() != reflect.String {
		d.errs.addf(path, n.src, "unsupported map key type %s", t.Key())
		return nil, false
	}
	if n.kind != mapNode {
		d.typeErr(n, t, path)
		return nil, false
	}
	out := make(map[string]any, len(n.m))
	for _, k := range sortedKeys(n.m) {
		// A null entry is dropped: that is how a later layer removes a
		// default label or selector.
		if v, ok := d.value(n.m[k], t.Elem(), joinKey(path, k)); ok {
			out[k] = v
		}
	}
	return out, true
}

func (d *decoder) sliceValue(n *node, t reflect.Type, path string) (any, bool) {
	if n.kind != listNode {
		d.typeErr(n, t, path)
		return nil, false
	}
	out := make([]any, 0, len(n.list))
	for i, c := range n.list {
		p := indexKey(path, i)
		if c.isNull() {
			d.errs.addf(p, c.src, "expected %s, got null", typeName(t.Elem()))
			continue
		}
		if v, ok := d.value(c, t.Elem(), p); ok {
			out = append(out, v)
		}
	}
	return out, true
}

func (d *decoder) duration(n *node, t reflect.Type, path string) (any, bool) {
	s, ok := n.scalar.(string)
	if n.kind != scalarNode || !ok {
		// A bare number is ambiguous (seconds? nanoseconds?), so refuse it.
		d.typeErr(n, t, path)
		return nil, false
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		d.errs.addf(path, n.src, "cannot parse %q as a duration (such as \"30s\" or \"1m30s\")", s)
		return nil, false
	}
	return v, true
}

// convertScalar converts a scalar node to t's kind. Env strings are parsed
// strictly; typed YAML/JSON values must already be of a matching kind.
func convertScalar(n *node, t reflect.Type) (any, error) {
	if n.raw {
		return parseEnvString(n.scalar.(string), t)
	}
	mismatch := func() error {
		msg := fmt.Sprintf("expected %s, got %s", typeName(t), describeGo(n.scalar))
		if t.Kind() == reflect.String {
			msg += "; quote it to make it a string"
		}
		return errors.New(msg)
	}
	switch t.Kind() {
	case reflect.String:
		s, ok := n.scalar.(string)
		if !ok {
			return nil, mismatch()
		}
		return reflect.ValueOf(s).Convert(t).Interface(), nil
	case reflect.Bool:
		b, ok := n.scalar.(bool)
		if !ok {
			return nil, mismatch()
		}
		return b, nil
	case reflect.Float32, reflect.Float64:
		var f float64
		switch v := n.scalar.(type) {
		case int64:
			f = float64(v)
		case uint64:
			f = float64(v)
		case float64:
			f = v
		default:
			return nil, mismatch()
		}
		if math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("expected a finite number, got %s", describeGo(n.scalar))
		}
		return reflect.ValueOf(f).Convert(t).Interface(), nil
	default: // integer kinds
		out := reflect.New(t).Elem()
		switch v := n.scalar.(type) {
		case int64:
			if intOverflows(out, v) {
				return nil, fmt.Errorf("integer %d is out of range", v)
			}
			setInt(out, v)
		case uint64:
			if v > math.MaxInt64 || intOverflows(out, int64(v)) {
				return nil, fmt.Errorf("integer %d is out of range", v)
			}
			setInt(out, int64(v))
		case float64:
			// JSON and YAML may spell an integer as 90.0; a fraction is a mistake.
			if v != math.Trunc(v) || math.IsInf(v, 0) || v < math.MinInt64 || v >= math.MaxInt64 {
				return nil, fmt.Errorf("expected integer, got %s", describeGo(v))
			}
			if intOverflows(out, int64(v)) {
				return nil, fmt.Errorf("integer %s is out of range", describeGo(v))
			}
			setInt(out, int64(v))
		default:
			return nil, mismatch()
		}
		return out.Interface(), nil
	}
}

// parseEnvString converts an env var's string. Booleans take only
// true/false (any case): the reference's truthiness turned "false" into on.
func parseEnvString(s string, t reflect.Type) (any, error) {
	switch t.Kind() {
	case reflect.String:
		return reflect.ValueOf(s).Convert(t).Interface(), nil
	case reflect.Bool:
		switch {
		case strings.EqualFold(s, "true"):
			return true, nil
		case strings.EqualFold(s, "false"):
			return false, nil
		}
		return nil, fmt.Errorf("cannot parse %q as a boolean (want true or false)", s)
	case reflect.Float32, reflect.Float64:
		f, err := strconv.ParseFloat(s, t.Bits())
		if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			return nil, fmt.Errorf("cannot parse %q as a finite number", s)
		}
		return reflect.ValueOf(f).Convert(t).Interface(), nil
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		i, err := strconv.ParseInt(s, 10, 64)
		out := reflect.New(t).Elem()
		if err == nil && intOverflows(out, i) {
			err = strconv.ErrRange
		}
		if err != nil {
			msg := fmt.Sprintf("cannot parse %q as an integer", s)
			if errors.Is(err, strconv.ErrRange) {
				msg = fmt.Sprintf("integer %s is out of range", s)
			}
			if strings.HasPrefix(s, "tcp://") || strings.HasPrefix(s, "udp://") {
				// Kubernetes service links inject <SERVICE>_PORT=tcp://ip:port,
				// so a Service named "redis" clobbers REDIS_PORT.
				msg += "; this looks like a Kubernetes service-link variable: set enableServiceLinks: false on the pod"
			}
			return nil, errors.New(msg)
		}
		setInt(out, i)
		return out.Interface(), nil
	default:
		return nil, fmt.Errorf("expected %s, got %q; map this key with {__name: VAR, __format: json}", typeName(t), s)
	}
}

func intOverflows(v reflect.Value, i int64) bool {
	if v.CanUint() {
		return i < 0 || v.OverflowUint(uint64(i))
	}
	return v.OverflowInt(i)
}

func setInt(v reflect.Value, i int64) {
	if v.CanUint() {
		v.SetUint(uint64(i))
		return
	}
	v.SetInt(i)
}

func typeName(t reflect.Type) string {
	if t == durationType {
		return `duration (such as "30s")`
	}
	switch t.Kind() {
	case reflect.Pointer:
		return typeName(t.Elem())
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean (true or false)"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "integer"
	case reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Struct, reflect.Map:
		return "mapping"
	case reflect.Slice:
		return "list of " + typeName(t.Elem())
	default:
		return t.String()
	}
}
