package gate_test

import (
	"encoding/json"
	"testing"

	"github.com/sdkata/queue-worker/internal/gate"
)

// Any blockedBy value either names positive job ids or is refused; it never
// silently yields a zero or negative id (which would block nothing).
func FuzzParseBlockedBy(f *testing.F) {
	for _, s := range []string{`"678,679"`, `[678,"679"]`, `678`, `null`, `""`, `",,"`, `[0]`, `"-1"`, `{"a":1}`, `[1.5]`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		ids, err := gate.ParseBlockedBy(json.RawMessage(raw))
		if err != nil {
			return
		}
		for _, id := range ids {
			if id <= 0 {
				t.Fatalf("ParseBlockedBy(%s) = %v", raw, ids)
			}
		}
	})
}
