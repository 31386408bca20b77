package build

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// FuzzDecode: a build config from Redis (queue-service's hash or an
// inline job) is untrusted input. Decode never panics; what it accepts
// re-encodes to a config that decodes to the same value; what it refuses
// is ErrInvalid with a reason. The accessors the worker calls on a decoded
// config never panic either.
func FuzzDecode(f *testing.F) {
	for _, seed := range []string{
		`{"buildId":1,"jobId":2,"container":"node:18","apiUri":"https://api","token":"t","annotations":{"screwdriver.cd/executor":"k8s-vm"}}`,
		`{"buildId":1,"jobId":2,"blockedBy":"2","blockedBySameJob":true,"virtualJob":false}`,
		`{"buildId":9007199254740993}`,
		`{"buildId":1e999}`,
		`{"buildId":-0,"pipeline":{"id":42,"name":"org/repo"},"template":{"fullName":"a/b","version":"1"}}`,
		`{"annotations":{"screwdriver.cd/cpu":{"nested":[[[[1]]]]},"beta.screwdriver.cd/ram":"HIGH"}}`,
		`{"container":"\ud800","token":"\u0000"}`,
		`{"started":false,"isPR":true,"prNum":3}`,
		`{"buildId":"12"}`,
		`[]`, ``, `   {`, `{"a":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		c, err := Decode(raw)
		if err != nil {
			if !errors.Is(err, ErrInvalid) || err.Error() == "" {
				t.Fatalf("refusal without ErrInvalid and a reason: %v", err)
			}
			return
		}
		_ = c.IDsOnly()
		_ = c.ValidateStart()
		_ = c.ValidateStop()
		_ = c.StickyPipelineID()
		for _, name := range []string{"executor", "cpu", "ram", "disk", "timeout", "collapseBuilds"} {
			_, _ = c.Annotation(name)
			_ = c.AnnotationString(name)
		}
		again, err := json.Marshal(c)
		if err != nil {
			t.Fatalf("an accepted config does not re-encode: %v", err)
		}
		c2, err := Decode(again)
		if err != nil {
			t.Fatalf("re-encoded config %s refused: %v", again, err)
		}
		// Empty and absent fields are the same to the worker: compare the
		// encodings, which omit both.
		if again2, _ := json.Marshal(c2); !bytes.Equal(again, again2) {
			t.Fatalf("decode(encode(c)) differs:\n%s\n%s", again, again2)
		}
	})
}
