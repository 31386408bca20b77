package weightage

import (
	"math/rand/v2"
	"regexp"
	"strings"
	"testing"
)

func TestLiteralOf_Classifies(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		lit     string
		kind    litKind
	}{
		{"PlainWord", "rhel6", "rhel6", litContains},
		{"UpperCaseIsFolded", "RHEL6", "rhel6", litContains},
		{"EscapedDot", `registry\.example`, "registry.example", litContains},
		{"AnchoredPrefix", `^registry\.example/i386/`, "registry.example/i386/", litPrefix},
		{"AnchoredSuffix", `:latest$`, ":latest", litSuffix},
		{"WholeImage", `^busybox$`, "busybox", litEqual},
		{"DotIsARegexp", "rhel.6", "", litNone},
		{"ClassIsARegexp", "rhel[56]", "", litNone},
		{"AlternationIsARegexp", "rhel6|centos6", "", litNone},
		{"CaseSensitiveLetterIsARegexp", "(?-i)rhel6", "", litNone},
		{"NonASCIILetterIsARegexp", "ünïcode", "", litNone},
		{"MultiLineAnchorIsARegexp", "(?m)^rhel6", "", litNone},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lit, kind := literalOf(tt.pattern)
			if lit != tt.lit || kind != tt.kind {
				t.Fatalf("literalOf(%q) = %q, %d; want %q, %d", tt.pattern, lit, kind, tt.lit, tt.kind)
			}
		})
	}
}

// The fast paths must agree with the regexp engine on every input,
// including the non-ASCII runes that (?i) folds onto ASCII letters.
func TestExclusion_FastPathAgreesWithRegexp(t *testing.T) {
	patterns := []string{
		"rhel6", "RHEL6", "k8s", "s", "centos6", `^registry\.example/i386/`, `:latest$`, `^busybox$`,
		`^a`, `z$`, "rhel[56]", "rhel6|centos", `(?-i)RHEL6`, "ks", "-", "/",
	}
	images := []string{
		"", "r", "rhel6", "RHEL6", "registry/Rhel6:1", "docker.io/centos6", "centos:6",
		"registry.example/i386/debian", "REGISTRY.EXAMPLE/I386/x", "xregistry.example/i386/",
		"node:latest", "node:LATEST", "node:latest\n", "busybox", "BusyBox", "busybox:1",
		"\u212a8s", "\u212A8S/img", "long\u017f", "rhel\u00e96", "a", "z", "Z", "ks\u212a",
	}
	rng := rand.New(rand.NewPCG(3, 4))
	alphabet := []string{"r", "h", "e", "l", "6", "R", "H", "E", "L", "k", "K", "s", "S", "\u212a", "\u017f", "/", ":", "-", "8", "a", "z"}
	for range 2000 {
		var b strings.Builder
		for range rng.IntN(12) {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		images = append(images, b.String())
	}
	for _, p := range patterns {
		e, err := compileExclusion(p)
		if err != nil {
			t.Fatal(err)
		}
		re := regexp.MustCompile("(?i)" + p)
		for _, img := range images {
			if got, want := e.match(img, isASCII(img)), re.MatchString(img); got != want {
				t.Errorf("pattern %s on %q: fast path %v, regexp %v", e, img, got, want)
			}
		}
	}
}

// A cached answer is the first matching pattern, whatever the order of
// literal and regexp patterns, and it survives many distinct images.
func TestExclusion_CacheKeepsFirstMatch(t *testing.T) {
	r := mustRules(t, RulesSpec{Exclusions: []string{"rhel[56]", "rhel6", `^registry/`}})
	for i := range 5000 {
		img := "registry/app-" + strings.Repeat("x", i%7) + string(rune('a'+i%26))
		if i%3 == 0 {
			img += "-rhel6"
		}
		want := "^registry/"
		if i%3 == 0 {
			want = "rhel[56]"
		}
		for range 2 { // miss, then hit
			if d := Route(Build{BuildID: 1, Image: img}, r); d.Pattern != want {
				t.Fatalf("%q matched %q, want %q", img, d.Pattern, want)
			}
		}
	}
}
