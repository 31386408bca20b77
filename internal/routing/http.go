package routing

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"

	"github.com/sdkata/queue-worker/internal/weightage"
)

// RulesSource returns the rules in force (a *weightage.Holder).
type RulesSource interface {
	Current() *weightage.Rules
}

// Learned tells whether an image is a learned exclusion (failed on Kata).
type Learned interface {
	Excluded(ctx context.Context, image string) (bool, error)
}

// Handler serves GET /debug/route?image=…&build_id=…&job_id=…&pipeline_id=…
// &annotation=key=value (repeatable): the JSON explanation of where that
// build would go under the live rules and, if learned is not nil, the live
// learned exclusions. It only reads; it starts nothing.
func Handler(src RulesSource, learned Learned) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		q := r.URL.Query()
		var ids [3]int64
		for i, name := range []string{"build_id", "job_id", "pipeline_id"} {
			v := q.Get(name)
			if v == "" {
				continue
			}
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 {
				http.Error(w, fmt.Sprintf("%s %q is not a non-negative integer", name, v), http.StatusBadRequest)
				return
			}
			ids[i] = n
		}
		b, err := BuildFromFields(ids[0], ids[1], ids[2], q.Get("image"), q["annotation"])
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		in := Input(b)
		if learned != nil && in.Image != "" {
			if in.LearnedExcluded, err = learned.Excluded(r.Context(), in.Image); err != nil {
				http.Error(w, "looking up learned exclusions: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(Explain(in, src.Current()))
	})
}
