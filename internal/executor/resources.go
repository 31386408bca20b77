package executor

import (
	"math"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/sdkata/queue-worker/internal/build"
	"github.com/sdkata/queue-worker/internal/config"
)

// tierRules says which annotation values a tier lookup accepts.
type tierRules struct {
	// allowMax: MAX is a tier on the Kata path only, as in the reference.
	allowMax bool
	// allowInt: a whole number of cores/GB, capped at max. The dind tiers
	// (dockerCpu/dockerRam) take names only.
	allowInt bool
}

// MAX is a CPU tier on the Kata path only; for memory it is not a tier on
// either path (→ LOW), as in the reference.
var (
	kataCPUTiers = tierRules{allowMax: true, allowInt: true}
	memoryTiers  = tierRules{allowMax: false, allowInt: true}
	hyperdTiers  = tierRules{allowMax: false, allowInt: true}
	dindCPUTiers = tierRules{allowMax: true, allowInt: false}
	dindMemTiers = tierRules{allowMax: false, allowInt: false}
)

// tier resolves a cpu/ram annotation against a tier table: a tier name
// (exact, upper-case), or (when allowed) a JSON integer capped at max;
// anything else, a numeric string included, is LOW.
func tier(b *build.Config, annotation string, t config.Tiers, r tierRules) float64 {
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
			if r.allowMax {
				return t.Max
			}
		}
	case float64:
		// Only a whole number of cores/GB counts as a custom value.
		if r.allowInt && x > 0 && x == math.Trunc(x) {
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

const mebibyte = 1 << 20

// kataLimits are the Kata path's units: CPU in millicores, memory in GiB
// (the API server prints both in canonical form, e.g. 6 and 12Gi).
func kataLimits(cores, gb float64) corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    *resource.NewMilliQuantity(int64(math.Round(cores*1000)), resource.DecimalSI),
		corev1.ResourceMemory: resource.MustParse(formatNumber(gb) + "Gi"),
	}
}

// hyperdLimits are the HyperD path's units: CPU as "<cores>", memory as
// <GB×1024>Mi (the same numbers as the --cpu/--memory args).
func hyperdLimits(cores float64, memMB int64) corev1.ResourceList {
	return corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse(formatNumber(cores)),
		corev1.ResourceMemory: *resource.NewQuantity(memMB*mebibyte, resource.BinarySI),
	}
}

// withRequests sets requests to limits scaled by the configured ratios
// (#1732). A ratio of 1 (or an unset 0) keeps requests equal to limits. CPU
// rounds to the millicore, memory to the MiB, never below 1m / 1Mi.
func withRequests(limits corev1.ResourceList, r config.RequestRatios) corev1.ResourceRequirements {
	req := corev1.ResourceList{}
	if q, ok := limits[corev1.ResourceCPU]; ok {
		if r.CPURatio <= 0 || r.CPURatio >= 1 {
			req[corev1.ResourceCPU] = q.DeepCopy()
		} else {
			m := max(1, int64(math.Round(float64(q.MilliValue())*r.CPURatio)))
			req[corev1.ResourceCPU] = *resource.NewMilliQuantity(m, resource.DecimalSI)
		}
	}
	if q, ok := limits[corev1.ResourceMemory]; ok {
		if r.MemoryRatio <= 0 || r.MemoryRatio >= 1 {
			req[corev1.ResourceMemory] = q.DeepCopy()
		} else {
			mi := max(1, int64(math.Round(float64(q.Value())*r.MemoryRatio/mebibyte)))
			req[corev1.ResourceMemory] = *resource.NewQuantity(mi*mebibyte, resource.BinarySI)
		}
	}
	return corev1.ResourceRequirements{Limits: limits, Requests: req}
}

// launcherResources are the init container's requests = limits (the
// reference gave it none). A quantity that does not parse (only possible
// for a Config built in code and not validated) is left out.
func launcherResources(l config.LauncherResources) corev1.ResourceRequirements {
	rl := corev1.ResourceList{}
	if q, err := resource.ParseQuantity(strings.TrimSpace(l.CPU)); err == nil && q.Sign() > 0 {
		rl[corev1.ResourceCPU] = q
	}
	if q, err := resource.ParseQuantity(strings.TrimSpace(l.Memory)); err == nil && q.Sign() > 0 {
		rl[corev1.ResourceMemory] = q
	}
	if len(rl) == 0 {
		return corev1.ResourceRequirements{}
	}
	return corev1.ResourceRequirements{Limits: rl, Requests: rl.DeepCopy()}
}
