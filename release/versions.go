package release

import (
	"fmt"
	"slices"
	"strings"

	"github.com/blang/semver/v4"
)

// minVersion is the oldest Talos release offered, the public factory's
// default build.minTalosVersion. A constant in all but name: semver has no
// constant constructor.
var minVersion = semver.Version{Major: 1, Minor: 2}

// Versions turns imager tags into the offered Talos versions, as the public
// factory does: semver tags at or above 1.2.0, minus broken ones, with
// pre-releases only of the highest major.minor and only alpha.N, beta.N or
// rc.N. The result is sorted ascending and spelled with a leading "v".
func Versions(tags []string, broken []string) []string {
	isBroken := map[string]bool{}
	for _, b := range broken {
		isBroken["v"+strings.TrimPrefix(b, "v")] = true
	}

	var (
		vs      []semver.Version
		highest semver.Version
	)

	for _, tag := range tags {
		if !strings.HasPrefix(tag, "v") || isBroken[tag] {
			continue
		}

		v, err := semver.Parse(tag[1:])
		if err != nil || v.LT(minVersion) || len(v.Build) > 0 {
			continue
		}

		vs = append(vs, v)

		if v.Major > highest.Major || (v.Major == highest.Major && v.Minor > highest.Minor) {
			highest = semver.Version{Major: v.Major, Minor: v.Minor}
		}
	}

	vs = slices.DeleteFunc(vs, func(v semver.Version) bool {
		if len(v.Pre) == 0 {
			return false
		}

		return v.Major != highest.Major || v.Minor != highest.Minor || !allowedPre(v.Pre)
	})

	slices.SortFunc(vs, func(a, b semver.Version) int { return a.Compare(b) })

	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = "v" + v.String()
	}

	return out
}

func allowedPre(pre []semver.PRVersion) bool {
	if len(pre) != 2 || pre[0].IsNum || !pre[1].IsNum {
		return false
	}

	switch pre[0].VersionStr {
	case "alpha", "beta", "rc":
		return true
	}

	return false
}

// parseSemver parses "v1.13.0" or "1.13.0".
func parseSemver(s string) (semver.Version, error) {
	v, err := semver.Parse(strings.TrimPrefix(s, "v"))
	if err != nil {
		return semver.Version{}, fmt.Errorf("talos version %q: %w", s, err)
	}

	return v, nil
}

// ParseVersion checks a Talos version from a URL or request ("1.13.0" or
// "v1.13.0") and returns it with its "v".
func ParseVersion(s string) (string, error) {
	v, err := semver.Parse(strings.TrimPrefix(s, "v"))
	if err != nil {
		return "", fmt.Errorf("version %q: %w", s, err)
	}

	return "v" + v.String(), nil
}
