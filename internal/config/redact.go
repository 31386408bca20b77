package config

import (
	"bytes"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Redacted replaces secret values in RedactedYAML.
const Redacted = "<redacted>"

// RedactedYAML renders the effective configuration as YAML with the yaml
// tags, in struct order, map keys in their original case, durations as
// strings ("2s"), unset optional numbers omitted, and the Kubernetes token
// and the Redis passwords (data nodes, sentinels) replaced by Redacted when
// set. With nothing redacted the output loads back (as an overlay) to the
// same Config.
func (c *Config) RedactedYAML() ([]byte, error) {
	cp := *c // the secrets are plain strings in value structs, so a shallow copy suffices
	redact := func(s *string) {
		if *s != "" {
			*s = Redacted
		}
	}
	redact(&cp.Executor.K8s.Options.Kubernetes.Token)
	redact(&cp.Queue.RedisConnection.Options.Password)
	redact(&cp.Queue.RedisClusterConnection.SentinelPassword)

	doc, err := yamlNode(reflect.ValueOf(cp))
	if err != nil {
		return nil, fmt.Errorf("config: rendering YAML: %w", err)
	}
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(doc); err != nil {
		return nil, fmt.Errorf("config: rendering YAML: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("config: rendering YAML: %w", err)
	}
	return buf.Bytes(), nil
}

// yamlNode builds the YAML tree by hand: yaml.v3 would write a
// time.Duration as nanoseconds and sort struct fields it meets via maps.
// It returns nil for values to omit (nil pointers).
func yamlNode(v reflect.Value) (*yaml.Node, error) {
	if v.Type() == durationType {
		return scalarYAML(time.Duration(v.Int()).String())
	}
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if v.IsNil() {
			if v.Kind() == reflect.Pointer {
				return nil, nil
			}
			return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}, nil
		}
		return yamlNode(v.Elem())
	case reflect.Struct:
		n := &yaml.Node{Kind: yaml.MappingNode}
		if err := appendFields(n, v); err != nil {
			return nil, err
		}
		return n, nil
	case reflect.Map:
		n := &yaml.Node{Kind: yaml.MappingNode}
		if v.Len() == 0 {
			n.Style = yaml.FlowStyle
		}
		keys := make([]string, 0, v.Len())
		for _, k := range v.MapKeys() {
			keys = append(keys, k.String())
		}
		slices.Sort(keys)
		for _, k := range keys {
			val, err := yamlNode(v.MapIndex(reflect.ValueOf(k).Convert(v.Type().Key())))
			if err != nil {
				return nil, err
			}
			if val == nil {
				continue
			}
			kn, _ := scalarYAML(k)
			n.Content = append(n.Content, kn, val)
		}
		return n, nil
	case reflect.Slice:
		n := &yaml.Node{Kind: yaml.SequenceNode}
		if v.Len() == 0 {
			n.Style = yaml.FlowStyle
		}
		for i := range v.Len() {
			e, err := yamlNode(v.Index(i))
			if err != nil {
				return nil, err
			}
			if e == nil {
				e = &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}
			}
			n.Content = append(n.Content, e)
		}
		return n, nil
	default:
		return scalarYAML(v.Interface())
	}
}

func appendFields(n *yaml.Node, v reflect.Value) error {
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" {
			continue
		}
		if opts == "inline" && f.Type.Kind() == reflect.Struct {
			if err := appendFields(n, v.Field(i)); err != nil {
				return err
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		val, err := yamlNode(v.Field(i))
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		if val == nil {
			continue
		}
		kn, _ := scalarYAML(name)
		n.Content = append(n.Content, kn, val)
	}
	return nil
}

// scalarYAML lets yaml.v3 pick the tag and quoting, so "true" or "" as a
// string stays a string when read back.
func scalarYAML(v any) (*yaml.Node, error) {
	var n yaml.Node
	if err := n.Encode(v); err != nil {
		return nil, err
	}
	return &n, nil
}
