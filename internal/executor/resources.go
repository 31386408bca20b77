package executor

import (
	"math"
	"strconv"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
)

// tier resolves a cpu/ram annotation against a tier table: a tier name
// (exact, upper-case), or an integer capped at max; anything else is LOW.
// allowMax: the MAX tier exists on the Kata path only, as in the reference.
func tier(b *build.Config, annotation string, t config.Tiers, allowMax bool) float64 {
	v, ok := b.Annotation(annotation)
	if !ok {
		return t.Low
	}
	switch x := v.(type) {
	case string:
		switch x {
		case "MICRO":
			return t.Micro
		case "LOW":
			return t.Low
		case "HIGH":
			return t.High
		case "TURBO":
			return t.Turbo
		case "MAX":
			if allowMax {
				return t.Max
			}
		}
	case float64:
		// Only a whole number of cores/GB counts as a custom value.
		if x > 0 && x == math.Trunc(x) {
			return math.Min(x, t.Max)
		}
	}
	return t.Low
}

// formatNumber prints 0.5 as "0.5" and 6 as "6" (label and arg form).
func formatNumber(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

// diskTier is the screwdriver.cd/disk annotation as a label value.
func diskTier(b *build.Config) string {
	switch v := b.AnnotationString("disk"); v {
	case "MICRO", "LOW", "HIGH", "TURBO":
		return v
	}
	return "LOW"
}
