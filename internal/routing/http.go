package routing

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
)

// Handler serves GET /debug/route?image=…&build_id=…&job_id=…&pipeline_id=…
// &annotation=key=value (repeatable): the JSON explanation of where that
// build would go, decided as a start would be (live rules, learned
// exclusions and budgets, as far as d has them). It only reads; it starts
// nothing.
func Handler(d *Decider) http.Handler {
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
		dec, err := d.Decide(r.Context(), b)
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(dec.Explanation)
	})
}
