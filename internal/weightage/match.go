package weightage

import (
	"fmt"
	"hash/maphash"
	"regexp"
	"regexp/syntax"
	"strings"
	"sync/atomic"
)

// Exclusion is one compiled image pattern. Matching is Go regexp semantics,
// case-insensitive and unanchored, exactly as regexp.MustCompile("(?i)"+Pattern).
//
// Most operators' patterns are plain words ("rhel6", "centos6") or anchored
// literals; the regexp engine cannot use its literal-prefix speed-up under
// (?i), so a literal is matched here by an ASCII case-folding scan instead.
type Exclusion struct {
	Pattern string
	re      *regexp.Regexp
	// lit is the lower-cased literal when the pattern is one; kind says
	// where it must occur. litNone means "use re".
	lit  string
	kind litKind
}

type litKind uint8

const (
	litNone     litKind = iota
	litContains         // rhel6
	litPrefix           // ^registry\.example/
	litSuffix           // :latest$
	litEqual            // ^busybox$
)

func compileExclusion(p string) (Exclusion, error) {
	re, err := regexp.Compile("(?i)" + p)
	if err != nil {
		return Exclusion{}, err
	}
	e := Exclusion{Pattern: p, re: re}
	e.lit, e.kind = literalOf(p)
	return e, nil
}

// literalOf recognises a case-folded ASCII literal, optionally anchored at
// the start and/or end of the text. Anything else (classes, alternations,
// non-ASCII letters, (?-i), multi-line anchors) is left to the regexp.
func literalOf(p string) (string, litKind) {
	re, err := syntax.Parse(p, syntax.Perl|syntax.FoldCase)
	if err != nil {
		return "", litNone
	}
	re = re.Simplify()
	subs := []*syntax.Regexp{re}
	if re.Op == syntax.OpConcat {
		subs = re.Sub
	}
	begin, end := false, false
	if len(subs) > 0 && subs[0].Op == syntax.OpBeginText {
		begin, subs = true, subs[1:]
	}
	if len(subs) > 0 && subs[len(subs)-1].Op == syntax.OpEndText {
		end, subs = true, subs[:len(subs)-1]
	}
	if len(subs) != 1 {
		return "", litNone
	}
	l := subs[0]
	if l.Op != syntax.OpLiteral || len(l.Rune) == 0 {
		return "", litNone
	}
	// Letters must fold; a literal without FoldCase came from (?-i).
	b := make([]byte, len(l.Rune))
	for i, r := range l.Rune {
		if r >= 0x80 {
			return "", litNone
		}
		c := lower(byte(r))
		if c != byte(r) || upper(c) != c { // a letter
			if l.Flags&syntax.FoldCase == 0 {
				return "", litNone
			}
		}
		b[i] = c
	}
	switch {
	case begin && end:
		return string(b), litEqual
	case begin:
		return string(b), litPrefix
	case end:
		return string(b), litSuffix
	}
	return string(b), litContains
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + ('a' - 'A')
	}
	return c
}

func upper(c byte) byte {
	if 'a' <= c && c <= 'z' {
		return c - ('a' - 'A')
	}
	return c
}

// match reports whether the image matches. asciiImage says the image has no
// byte ≥ 0x80: only then is ASCII folding exact, since under (?i) 'k' also
// matches U+212A (Kelvin) and 's' matches U+017F (long s).
func (e *Exclusion) match(image string, asciiImage bool) bool {
	if e.kind == litNone || !asciiImage {
		return e.re.MatchString(image)
	}
	n := len(e.lit)
	if n > len(image) {
		return false
	}
	switch e.kind {
	case litPrefix:
		return foldEq(image[:n], e.lit)
	case litSuffix:
		return foldEq(image[len(image)-n:], e.lit)
	case litEqual:
		return n == len(image) && foldEq(image, e.lit)
	}
	// Jump between candidate first bytes with IndexByte (vectorised),
	// then compare the rest.
	first, firstUp := e.lit[0], upper(e.lit[0])
	for i := 0; i+n <= len(image); i++ {
		j := indexEither(image[i:len(image)-n+1], first, firstUp)
		if j < 0 {
			return false
		}
		i += j
		if foldEq(image[i+1:i+n], e.lit[1:]) {
			return true
		}
	}
	return false
}

// indexEither is the first index of a or b in s, or -1.
func indexEither(s string, a, b byte) int {
	i := strings.IndexByte(s, a)
	if a == b {
		return i
	}
	if i >= 0 {
		s = s[:i] // b only matters before a
	}
	if j := strings.IndexByte(s, b); j >= 0 {
		return j
	}
	return i
}

// foldEq compares an ASCII s to the lower-case ASCII lit, ignoring case.
func foldEq(s, lit string) bool {
	for i := 0; i < len(lit); i++ {
		if lower(s[i]) != lit[i] {
			return false
		}
	}
	return true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// exclusionCache remembers, per image, which exclusion matched first, so that
// the real regexps run once per distinct image: a fleet builds from a few
// hundred images over and over. It is direct-mapped (a colliding image
// replaces the older one) and lock-free: each slot is an atomic pointer to
// an immutable entry, so a hit costs a hash and a string compare, and the
// only allocation is the entry stored on a miss.
type exclusionCache struct {
	seed  maphash.Seed
	slots [cacheSlots]atomic.Pointer[cacheEntry]
}

// cacheSlots bounds the memory: at most this many images are remembered.
const cacheSlots = 1024

type cacheEntry struct {
	image string
	index int // first matching exclusion, -1 for none
}

func newExclusionCache() *exclusionCache { return &exclusionCache{seed: maphash.MakeSeed()} }

func (c *exclusionCache) slot(image string) *atomic.Pointer[cacheEntry] {
	return &c.slots[maphash.String(c.seed, image)%cacheSlots]
}

// excludedBy returns the index of the first exclusion the image matches, or -1.
func (r *Rules) excludedBy(image string) int {
	if len(r.Exclusions) == 0 {
		return -1
	}
	if r.cache == nil { // only literals: scanning is as cheap as a lookup
		return r.scan(image)
	}
	s := r.cache.slot(image)
	if e := s.Load(); e != nil && e.image == image {
		return e.index
	}
	i := r.scan(image)
	s.Store(&cacheEntry{image: image, index: i})
	return i
}

func (r *Rules) scan(image string) int {
	ascii := isASCII(image)
	for i := range r.Exclusions {
		if r.Exclusions[i].match(image, ascii) {
			return i
		}
	}
	return -1
}

// String describes how the pattern is matched, for logs and tests.
func (e Exclusion) String() string {
	switch e.kind {
	case litContains:
		return fmt.Sprintf("%q (literal)", e.Pattern)
	case litPrefix:
		return fmt.Sprintf("%q (literal prefix)", e.Pattern)
	case litSuffix:
		return fmt.Sprintf("%q (literal suffix)", e.Pattern)
	case litEqual:
		return fmt.Sprintf("%q (literal, whole image)", e.Pattern)
	}
	return fmt.Sprintf("%q (regexp)", e.Pattern)
}
