package build

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Annotation prefixes: Screwdriver accepts beta.screwdriver.cd/<x> as an alias
// of screwdriver.cd/<x>.
const (
	annotationPrefix     = "screwdriver.cd/"
	betaAnnotationPrefix = "beta.screwdriver.cd/"
)

// Config is a buildConfig: the inline args[0] of a start/stop job, or the
// value of the buildConfigs hash. Unknown fields are tolerated, as the API
// adds fields over time. Ids are int64: JSON numbers beyond 2^53 do not occur
// (the producer is JavaScript), but a float64 would silently round them.
type Config struct {
	BuildID       int64           `json:"buildId"`
	JobID         int64           `json:"jobId,omitempty"`
	EventID       int64           `json:"eventId,omitempty"`
	PipelineID    int64           `json:"pipelineId,omitempty"`
	JobName       string          `json:"jobName,omitempty"`
	Container     string          `json:"container,omitempty"`
	APIURI        string          `json:"apiUri,omitempty"`
	Token         string          `json:"token,omitempty"`
	Annotations   map[string]any  `json:"annotations,omitempty"`
	Pipeline      *Pipeline       `json:"pipeline,omitempty"`
	Template      *Template       `json:"template,omitempty"`
	IsPR          bool            `json:"isPR,omitempty"`
	PRNum         int64           `json:"prNum,omitempty"`
	PRParentJobID int64           `json:"prParentJobId,omitempty"`
	BlockedBy     json.RawMessage `json:"blockedBy,omitempty"`
	// Started is set on stop jobs; absent counts as true (queue-service).
	Started *bool `json:"started,omitempty"`
	// VirtualJob marks a start that must not launch a pod.
	VirtualJob bool `json:"virtualJob,omitempty"`
}

// Pipeline is buildConfig.pipeline.
type Pipeline struct {
	ID         int64  `json:"id"`
	Name       string `json:"name,omitempty"`
	SCMContext string `json:"scmContext,omitempty"`
}

// Template is buildConfig.template.
type Template struct {
	FullName string `json:"fullName,omitempty"`
	Version  string `json:"version,omitempty"`
}

// ErrInvalid marks a payload that can never succeed, whatever the retry.
var ErrInvalid = errors.New("invalid build config")

// Decode parses one buildConfig object. It fails on anything that is not a
// JSON object or whose known fields have the wrong type.
func Decode(raw []byte) (*Config, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || raw[0] != '{' {
		return nil, fmt.Errorf("%w: expected a JSON object, got %s", ErrInvalid, preview(raw))
	}
	var c Config
	if err := json.Unmarshal(raw, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return &c, nil
}

// IDsOnly reports whether the config is queue-service's ids-only form, whose
// full config lives in the buildConfigs hash. The inline form carries the
// image and the token.
func (c *Config) IDsOnly() bool { return c.Container == "" && c.Token == "" }

// MergeIDs fills ids the hash copy lacks from the queued ids-only args.
func (c *Config) MergeIDs(args *Config) {
	if c.BuildID == 0 {
		c.BuildID = args.BuildID
	}
	if c.JobID == 0 {
		c.JobID = args.JobID
	}
	if args.Started != nil {
		c.Started = args.Started
	}
	if args.VirtualJob {
		c.VirtualJob = true
	}
	// queue-service stores blockedBy as an array and queues it as a
	// comma-joined string; either names the same jobs.
	if len(c.BlockedBy) == 0 {
		c.BlockedBy = args.BlockedBy
	}
}

// ValidateStart checks what a start needs to launch a pod.
func (c *Config) ValidateStart() error {
	var errs []string
	if c.BuildID <= 0 {
		errs = append(errs, "buildId must be a positive integer")
	}
	if strings.TrimSpace(c.Container) == "" {
		errs = append(errs, "container (the build image) is required")
	}
	if c.Token == "" {
		errs = append(errs, "token is required")
	}
	if c.APIURI == "" {
		errs = append(errs, "apiUri is required")
	}
	if len(errs) > 0 {
		return fmt.Errorf("%w for start: %s", ErrInvalid, strings.Join(errs, "; "))
	}
	return nil
}

// ValidateStop checks what a stop needs: the build id.
func (c *Config) ValidateStop() error {
	if c.BuildID <= 0 {
		return fmt.Errorf("%w for stop: buildId must be a positive integer", ErrInvalid)
	}
	return nil
}

// StickyPipelineID is pipeline.id, or the top-level pipelineId.
func (c *Config) StickyPipelineID() int64 {
	if c.Pipeline != nil && c.Pipeline.ID != 0 {
		return c.Pipeline.ID
	}
	return c.PipelineID
}

// Annotation returns screwdriver.cd/<name>, or its beta. alias.
func (c *Config) Annotation(name string) (any, bool) {
	if v, ok := c.Annotations[annotationPrefix+name]; ok {
		return v, true
	}
	v, ok := c.Annotations[betaAnnotationPrefix+name]
	return v, ok
}

// AnnotationString returns an annotation rendered as a string ("" if absent).
// Numbers keep their JSON form: 60 → "60".
func (c *Config) AnnotationString(name string) string {
	v, ok := c.Annotation(name)
	if !ok || v == nil {
		return ""
	}
	switch t := v.(type) {
	case string:
		return t
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(t)
	default:
		b, _ := json.Marshal(t)
		return string(b)
	}
}

func preview(b []byte) string {
	const limit = 64
	if len(b) > limit {
		return strconv.Quote(string(b[:limit])) + "..."
	}
	return strconv.Quote(string(b))
}
