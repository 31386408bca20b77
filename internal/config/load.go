package config

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"reflect"
	"strings"
)

// LoadOptions names the layers Load merges, lowest precedence first.
type LoadOptions struct {
	// DefaultsFile is the shipped defaults (config/default.yaml). Required.
	DefaultsFile string
	// EnvMapFile maps keys to env var names with node-config semantics
	// (config/custom-environment-variables.yaml). Empty = no env layer.
	EnvMapFile string
	// OverlayFile is the operator's --config (e.g. a mounted ConfigMap),
	// merged last. Empty = none; when set, the file must exist.
	OverlayFile string
	// Getenv looks up env vars; nil means os.Getenv. Tests pass a map.
	Getenv func(string) string
}

// Load builds the configuration from defaults, then env vars, then the
// overlay file, decodes it strictly and validates it. On failure the error
// joins one *FieldError per problem (see errors.Join); the Config is nil.
//
// Differences from node-config, on purpose: env values are converted
// strictly to the field's type instead of being left as strings; a JSON env
// value replaces the key wholesale rather than being deep-merged (so
// K8S_NODE_SELECTORS='{}' clears the default selectors); the overlay file
// wins over env vars, because it is the operator's most specific input.
func Load(opts LoadOptions) (*Config, error) {
	if opts.DefaultsFile == "" {
		return nil, errors.New("config: no defaults file given")
	}
	getenv := opts.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}

	root, err := readTree(opts.DefaultsFile)
	if err != nil {
		return nil, err
	}

	var errs fieldErrors
	if opts.EnvMapFile != "" {
		mapping, err := readTree(opts.EnvMapFile)
		if err != nil {
			return nil, err
		}
		a := &envApplier{root: root, src: fileSource(opts.EnvMapFile), getenv: getenv, errs: &errs}
		a.walk(mapping, reflect.TypeFor[Config](), nil, "")
	}

	if opts.OverlayFile != "" {
		overlay, err := readTree(opts.OverlayFile)
		if err != nil {
			return nil, err
		}
		root = merge(root, overlay)
	}

	cfg, decodeErrs := decodeTree(root)
	errs = append(errs, decodeErrs...)
	if len(errs) > 0 {
		// Range checks on a half-decoded config would only add noise.
		return nil, errs.err()
	}
	cfg.sources = map[string]string{}
	collectSources(root, "", cfg.sources)
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return cfg, nil
}

// Sources maps every leaf key of the merged tree (dotted, as in errors) to
// where its value came from: "file PATH" or "env VAR". Lists count as one
// leaf. Nil for a Config that Load did not build.
func (c *Config) Sources() map[string]string {
	if c.sources == nil {
		return nil
	}
	return maps.Clone(c.sources)
}

// Source returns where key's value came from, or "" if no layer set it.
// For an element such as "executor.k8s.exclusion[1]" it answers for the list.
func (c *Config) Source(key string) string {
	for key != "" {
		if s, ok := c.sources[key]; ok {
			return s
		}
		// Walk up: "a.b[1]" -> "a.b", "a.b" -> "a".
		i := strings.LastIndexAny(key, ".[")
		if i < 0 {
			break
		}
		key = key[:i]
	}
	return ""
}

func fileSource(path string) string { return "file " + path }

func readTree(path string) (*node, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: reading config file: %w", err)
	}
	n, err := parseYAMLTree(data, fileSource(path))
	if err != nil {
		return nil, fmt.Errorf("config: parsing %s: %w", path, err)
	}
	return n, nil
}

// envApplier walks the env mapping file alongside the Config type, so a
// mis-typed key in the mapping is refused even when its env var is unset.
type envApplier struct {
	root   *node
	src    string // the mapping file, for errors in the mapping itself
	getenv func(string) string
	errs   *fieldErrors
}

func (a *envApplier) walk(m *node, t reflect.Type, segs []string, path string) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch m.kind {
	case scalarNode:
		name, ok := m.scalar.(string)
		if !ok || name == "" {
			a.errs.addf(path, a.src, "must name an env var or be {__name: VAR, __format: json}, got %s", describeNode(m))
			return
		}
		if v := a.getenv(name); v != "" {
			setAt(a.root, segs, &node{scalar: v, raw: true, src: "env " + name})
		}
		return
	case listNode:
		a.errs.addf(path, a.src, "must name an env var or be {__name: VAR, __format: json}, got a list")
		return
	}

	for k := range m.m {
		if strings.HasPrefix(k, "__") {
			if len(segs) == 0 {
				a.errs.addf(k, a.src, "__name/__format must sit under a key, not at the top level")
				return
			}
			a.special(m, segs, path)
			return
		}
	}
	var fields map[string]reflect.Type
	switch t.Kind() {
	case reflect.Struct:
		fields = structFields(t)
	case reflect.Map, reflect.Interface:
	default:
		a.errs.addf(path, a.src, "the key holds a %s, so map it to one env var instead of sub-keys", typeName(t))
		return
	}
	for _, k := range sortedKeys(m.m) {
		p := joinKey(path, k)
		var ft reflect.Type
		switch t.Kind() {
		case reflect.Struct:
			var ok bool
			if ft, ok = fields[k]; !ok {
				a.errs.add(p, a.src, unknownKey(fields, k))
				continue
			}
		case reflect.Map:
			ft = t.Elem()
		default:
			ft = t
		}
		a.walk(m.m[k], ft, append(segs[:len(segs):len(segs)], k), p)
	}
}

// special handles {__name: VAR, __format: json}. Anything else with a
// "__" key is refused: node-config would silently treat it as a subtree
// (the reference's {__name, __value: json} never parsed its JSON).
func (a *envApplier) special(m *node, segs []string, path string) {
	bad := false
	for _, k := range sortedKeys(m.m) {
		if k != "__name" && k != "__format" {
			a.errs.addf(path, a.src, "unexpected key %q next to __name (only __name and __format: json are allowed)", k)
			bad = true
		}
	}
	var name, format string
	if n := m.m["__name"]; n != nil {
		name, _ = n.scalar.(string)
	}
	if n := m.m["__format"]; n != nil {
		format, _ = n.scalar.(string)
	}
	switch {
	case name == "":
		a.errs.addf(path, a.src, "__name must name an env var")
		bad = true
	case m.m["__format"] == nil:
		a.errs.addf(path, a.src, "{__name: %s} needs __format: json", name)
		bad = true
	case format != "json":
		a.errs.addf(path, a.src, "__format %s is not supported (only json)", describeNode(m.m["__format"]))
		bad = true
	}
	if bad {
		return
	}
	v := a.getenv(name)
	if v == "" {
		return
	}
	src := "env " + name
	n, err := parseJSONTree(v, src)
	if err != nil {
		a.errs.add(path, src, fmt.Errorf("invalid JSON in %s: %w", name, err))
		return
	}
	setAt(a.root, segs, n)
}
