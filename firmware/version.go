package firmware

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

var (
	// describeRE splits `git describe --tags` output: TAG-N-gHASH.
	describeRE = regexp.MustCompile(`^(.+)-([0-9]+)-g([0-9a-f]{4,40})$`)
	// hashRE is what `git describe --always` prints when there is no tag.
	hashRE = regexp.MustCompile(`^[0-9a-f]{7,40}$`)
	// releaseRE is a numeric release with an optional semver pre-release
	// and build metadata: 1.2.3, 0.2, 1.0.0-rc.1, 1.0.0+x.
	releaseRE = regexp.MustCompile(`^([0-9]+(?:\.[0-9]+)*)(?:-([0-9A-Za-z.-]+))?(?:\+([0-9A-Za-z.-]+))?$`)
	// unsafeRE matches what neither dpkg nor opkg allow in an upstream
	// version without a revision.
	unsafeRE = regexp.MustCompile(`[^0-9A-Za-z.+~]+`)
)

// PackageVersion turns a `git describe --tags --always --dirty` string
// (what `make cross` stamps into the binary) into a version dpkg and opkg
// accept and order sensibly. Both compare versions with dpkg's algorithm,
// where `~` sorts before anything, even the end, and `+` after the end:
//
//	v0.1.0                    0.1.0
//	v0.1.0-rc.1               0.1.0~rc.1                 (before 0.1.0)
//	v0.1.0-3-gabc1234         0.1.0+git3.gabc1234        (after 0.1.0, before 0.1.1)
//	v0.1.0-3-gabc1234-dirty   0.1.0+git3.gabc1234.dirty
//	v0.1.0-dirty              0.1.0+dirty
//	0a1b2c3                   0.0.0~git0a1b2c3           (no tag: before every release)
//	0a1b2c3-dirty             0.0.0~git0a1b2c3+dirty
//	dev                       0.0.0~dev
//
// The result never contains `-` (which both formats would read as a
// Debian revision) or `:` (an epoch).
func PackageVersion(describe string) (string, error) {
	s := strings.TrimSpace(describe)
	if s == "" {
		return "", errors.New("empty version")
	}
	var extra []string // build metadata, after +
	dirty := false
	if rest, ok := strings.CutSuffix(s, "-dirty"); ok {
		s, dirty = rest, true
	}
	if m := describeRE.FindStringSubmatch(s); m != nil {
		s = m[1]
		extra = append(extra, "git"+m[2], "g"+m[3])
	}
	var base string
	switch t := strings.TrimPrefix(s, "v"); {
	case hashRE.MatchString(s) && len(extra) == 0:
		base = "0.0.0~git" + s
	case releaseRE.MatchString(t):
		m := releaseRE.FindStringSubmatch(t)
		base = m[1]
		if m[2] != "" {
			base += "~" + strings.ReplaceAll(m[2], "-", ".")
		}
		if m[3] != "" {
			extra = append([]string{strings.ReplaceAll(m[3], "-", ".")}, extra...)
		}
	default:
		clean := strings.Trim(unsafeRE.ReplaceAllString(s, "."), ".+~")
		if clean == "" {
			return "", fmt.Errorf("version %q: nothing usable", describe)
		}
		base = "0.0.0~" + clean
	}
	if dirty {
		extra = append(extra, "dirty")
	}
	if len(extra) == 0 {
		return base, nil
	}
	return base + "+" + strings.Join(extra, "."), nil
}
