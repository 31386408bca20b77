package executor

import (
	"regexp"
	"strconv"
	"strings"
)

// Labels and annotations the executor writes. The decision is recorded on
// the pod so that stop, verify and an operator all see where a build went
// and why, without re-routing.
const (
	LabelBuild   = "sdbuild"
	LabelApp     = "app"
	LabelTier    = "tier"
	LabelRuntime = "queue-worker.screwdriver.cd/runtime"
	// LabelManaged marks objects this daemon created.
	LabelManaged = "app.kubernetes.io/managed-by"
	managedBy    = "queue-worker"

	AnnotationRule         = "queue-worker.screwdriver.cd/rule"
	AnnotationPattern      = "queue-worker.screwdriver.cd/matched-pattern"
	AnnotationBucket       = "queue-worker.screwdriver.cd/bucket"
	AnnotationWeight       = "queue-worker.screwdriver.cd/kata-basis-points"
	AnnotationRulesVersion = "queue-worker.screwdriver.cd/rules-version"
	AnnotationJobID        = "queue-worker.screwdriver.cd/job-id"
)

var (
	labelInvalidRun = regexp.MustCompile(`[^A-Za-z0-9_.-]+`)
	dnsInvalidRun   = regexp.MustCompile(`[^a-z0-9-]+`)
)

// SanitizeLabelValue makes s a valid label value the way the reference does:
// runs of invalid characters become '.', at most 63 characters, and it starts
// and ends with an alphanumeric.
func SanitizeLabelValue(s string) string {
	s = labelInvalidRun.ReplaceAllString(s, ".")
	if len(s) > 63 {
		s = s[:63]
	}
	return strings.TrimFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	})
}

// dnsLabelPart lowercases s and replaces runs of characters not allowed in a
// DNS-1123 label with '-'.
func dnsLabelPart(s string) string {
	return dnsInvalidRun.ReplaceAllString(strings.ToLower(s), "-")
}

// BuildLabel is the sdbuild label value: <prefix><buildId>, the handle stop
// and verify select on.
func BuildLabel(prefix string, buildID int64) string {
	return SanitizeLabelValue(prefix + strconv.FormatInt(buildID, 10))
}

// PodName is deterministic for a build, so a redelivered or raced start
// finds the pod that exists instead of creating a second one. attempt > 0 is
// only used for a relaunch on another runtime.
func PodName(prefix string, buildID int64, attempt int) string {
	name := strings.Trim(dnsLabelPart(prefix), "-")
	if name != "" {
		name += "-"
	}
	name += "sdbuild-" + strconv.FormatInt(buildID, 10)
	if attempt > 0 {
		name += "-r" + strconv.Itoa(attempt)
	}
	return name
}

// TokenSecretName is the per-build Secret holding the build token.
func TokenSecretName(podName string) string { return podName + "-token" }

// ParsePodName reads the build id and attempt back from a PodName.
func ParsePodName(name string) (buildID int64, attempt int, ok bool) {
	i := strings.LastIndex(name, "sdbuild-")
	if i < 0 {
		return 0, 0, false
	}
	rest := name[i+len("sdbuild-"):]
	id, r, relaunch := strings.Cut(rest, "-r")
	buildID, err := strconv.ParseInt(id, 10, 64)
	if err != nil || buildID <= 0 {
		return 0, 0, false
	}
	if relaunch {
		if attempt, err = strconv.Atoi(r); err != nil || attempt < 1 {
			return 0, 0, false
		}
	}
	return buildID, attempt, true
}
