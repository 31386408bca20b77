package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// node is one value of the merged configuration tree. Keys keep their case
// (the reason this package does not go through viper's key store), and each
// node remembers which layer set it, so errors can name a file or env var.
type node struct {
	kind nodeKind
	// scalar is nil (YAML null), bool, int64, uint64, float64 or string.
	scalar any
	m      map[string]*node
	list   []*node
	src    string
	// raw marks an env var's string, which is converted to the target type;
	// typed YAML/JSON values must already have the target's type.
	raw bool
}

type nodeKind uint8

const (
	scalarNode nodeKind = iota
	mapNode
	listNode
)

func (n *node) isNull() bool { return n.kind == scalarNode && n.scalar == nil }

func newMap(src string) *node { return &node{kind: mapNode, m: map[string]*node{}, src: src} }

// parseYAMLTree reads a YAML document whose top level must be a mapping. An
// empty document is an empty mapping, so an all-comments overlay is fine.
func parseYAMLTree(data []byte, src string) (*node, error) {
	var doc any
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	// A second document would be silently ignored, so refuse it.
	var extra any
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		return nil, errors.New("more than one YAML document")
	}
	if doc == nil {
		return newMap(src), nil
	}
	if _, ok := doc.(map[string]any); !ok {
		if _, ok := doc.(map[any]any); !ok {
			return nil, fmt.Errorf("top level must be a mapping, not %s", describeGo(doc))
		}
	}
	return fromGo(doc, src, "")
}

// parseJSONTree parses an env var's JSON. Numbers stay exact (UseNumber) so
// an integer field can tell 5 from 5.5.
func parseJSONTree(s, src string) (*node, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("unexpected data after the JSON value")
	}
	return fromGo(v, src, "")
}

// fromGo converts what yaml.v3 or encoding/json decoded into a node tree.
func fromGo(v any, src, path string) (*node, error) {
	switch v := v.(type) {
	case map[string]any:
		n := newMap(src)
		for k, e := range v {
			c, err := fromGo(e, src, joinKey(path, k))
			if err != nil {
				return nil, err
			}
			n.m[k] = c
		}
		return n, nil
	case map[any]any:
		n := newMap(src)
		for k, e := range v {
			ks, ok := k.(string)
			if !ok {
				return nil, fmt.Errorf("key %q: mapping keys must be strings, got %s (quote it)",
					joinKey(path, fmt.Sprint(k)), describeGo(k))
			}
			c, err := fromGo(e, src, joinKey(path, ks))
			if err != nil {
				return nil, err
			}
			n.m[ks] = c
		}
		return n, nil
	case []any:
		n := &node{kind: listNode, list: make([]*node, 0, len(v)), src: src}
		for i, e := range v {
			c, err := fromGo(e, src, indexKey(path, i))
			if err != nil {
				return nil, err
			}
			n.list = append(n.list, c)
		}
		return n, nil
	case nil, bool, string, int64, uint64:
		return &node{scalar: v, src: src}, nil
	case int:
		return &node{scalar: int64(v), src: src}, nil
	case float64:
		return &node{scalar: v, src: src}, nil
	case json.Number:
		if i, err := strconv.ParseInt(string(v), 10, 64); err == nil {
			return &node{scalar: i, src: src}, nil
		}
		f, err := strconv.ParseFloat(string(v), 64)
		if err != nil || math.IsInf(f, 0) {
			return nil, fmt.Errorf("key %q: number %s is out of range", path, v)
		}
		return &node{scalar: f, src: src}, nil
	default:
		// e.g. an unquoted YAML timestamp decoded as time.Time.
		return nil, fmt.Errorf("key %q: unsupported value %v (%T); quote it", path, v, v)
	}
}

// merge lays src over dst: mappings merge key by key, anything else
// replaces. A null never replaces a mapping, because a section whose children
// are all commented out (`queue:`) means "no change", not "wipe the defaults".
// Inside free-form maps (labels, selectors) a null entry is dropped at
// decode time, which is how an overlay removes a default selector.
func merge(dst, src *node) *node {
	if dst == nil {
		return src
	}
	if src.isNull() && dst.kind == mapNode {
		return dst
	}
	if dst.kind != mapNode || src.kind != mapNode {
		return src
	}
	for k, v := range src.m {
		dst.m[k] = merge(dst.m[k], v)
	}
	dst.src = src.src
	return dst
}

// setAt replaces the value at segs, creating mappings on the way; env
// values replace wholesale (a JSON object is not merged into the default).
func setAt(root *node, segs []string, v *node) {
	n := root
	for _, s := range segs[:len(segs)-1] {
		c := n.m[s]
		if c == nil || c.kind != mapNode {
			c = newMap(v.src)
			n.m[s] = c
		}
		n = c
	}
	n.m[segs[len(segs)-1]] = v
}

// collectSources records, for every leaf, the layer that set it. Lists are
// leaves (they replace as a whole); empty mappings are leaves too.
func collectSources(n *node, path string, out map[string]string) {
	if n.kind == mapNode && len(n.m) > 0 {
		for k, c := range n.m {
			collectSources(c, joinKey(path, k), out)
		}
		return
	}
	out[path] = n.src
}

// toPlain turns a subtree into ordinary Go values (for map[string]any fields).
func toPlain(n *node) any {
	switch n.kind {
	case mapNode:
		m := make(map[string]any, len(n.m))
		for k, c := range n.m {
			m[k] = toPlain(c)
		}
		return m
	case listNode:
		l := make([]any, len(n.list))
		for i, c := range n.list {
			l[i] = toPlain(c)
		}
		return l
	default:
		return n.scalar
	}
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// joinKey appends one key to a dotted path. Keys that would make the path
// ambiguous (label keys such as kubernetes.io/arch) are bracketed.
func joinKey(path, key string) string {
	if key == "" || strings.ContainsAny(key, ".[]'\" \t\n") {
		r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
		return path + "['" + r.Replace(key) + "']"
	}
	if path == "" {
		return key
	}
	return path + "." + key
}

func indexKey(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// describeGo names a decoded value's type and value for error messages.
func describeGo(v any) string {
	switch v := v.(type) {
	case nil:
		return "null"
	case string:
		return fmt.Sprintf("string %q", v)
	case bool:
		return fmt.Sprintf("boolean %t", v)
	case int, int64, uint64:
		return fmt.Sprintf("integer %d", v)
	case float64:
		return "number " + strconv.FormatFloat(v, 'g', -1, 64)
	case map[string]any, map[any]any:
		return "a mapping"
	case []any:
		return "a list"
	default:
		return fmt.Sprintf("%v (%T)", v, v)
	}
}

func describeNode(n *node) string {
	switch n.kind {
	case mapNode:
		return "a mapping"
	case listNode:
		return "a list"
	}
	if n.raw {
		return fmt.Sprintf("%q", n.scalar)
	}
	return describeGo(n.scalar)
}
