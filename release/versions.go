package release

import (
	"fmt"
	"slices"
	"strings"

	"github.com/blang/semver/v4"
)

// Version is a Talos version, parsed once where it enters kiln (a URL, a
// request, a flag, a tag) and passed as a value from there on, so that no
// other code parses or compares version strings. The zero Version is no
// version; every Version from ParseVersion is valid. Versions compare with
// == (the same version, build metadata included) and Compare (semver
// order). It marshals as its String, "v1.13.0", in JSON (build plans,
// release locks) and text.
type Version struct {
	major, minor, patch uint64
	// pre and build are the dot-separated identifiers after "-" and "+".
	pre, build string
	ok         bool
}

// ParseVersion parses a Talos version, "v1.13.0" or "1.13.0" (pre-releases
// such as "v1.14.0-beta.1" included).
func ParseVersion(s string) (Version, error) {
	sv, err := semver.Parse(strings.TrimPrefix(s, "v"))
	if err != nil {
		return Version{}, fmt.Errorf("version %q: %w", s, err)
	}

	v := Version{major: sv.Major, minor: sv.Minor, patch: sv.Patch, build: strings.Join(sv.Build, "."), ok: true}

	pre := make([]string, len(sv.Pre))
	for i, p := range sv.Pre {
		pre[i] = p.String()
	}

	v.pre = strings.Join(pre, ".")

	return v, nil
}

// MustParseVersion is ParseVersion for versions written in kiln's own
// source (tables, tests); it panics on a malformed one.
func MustParseVersion(s string) Version {
	v, err := ParseVersion(s)
	if err != nil {
		panic(err)
	}

	return v
}

// String is the version with its "v", as Talos tags it: "v1.13.0"; "" for
// the zero Version.
func (v Version) String() string {
	if !v.ok {
		return ""
	}

	return "v" + v.Semver().String()
}

// IsZero reports whether v is no version.
func (v Version) IsZero() bool { return !v.ok }

// Compare orders versions as semver does (a pre-release before its
// release, build metadata ignored): -1, 0 or +1.
func (v Version) Compare(w Version) int { return v.Semver().Compare(w.Semver()) }

// Before reports whether v belongs to a minor before major.minor. Only the
// minor counts: a pre-release of 1.10.0 is a 1.10, as Talos's own checks
// of a feature's first minor treat it.
func (v Version) Before(major, minor uint64) bool {
	return v.major < major || (v.major == major && v.minor < minor)
}

// AtLeast reports whether v belongs to major.minor or a later minor.
func (v Version) AtLeast(major, minor uint64) bool { return !v.Before(major, minor) }

// Semver is v as a semver.Version, for checking it against the semver
// ranges that release artifacts carry (an extension's compatibility).
func (v Version) Semver() semver.Version {
	sv := semver.Version{Major: v.major, Minor: v.minor, Patch: v.patch}

	if v.pre != "" {
		for p := range strings.SplitSeq(v.pre, ".") {
			pr, _ := semver.NewPRVersion(p) //nolint:errcheck // checked by ParseVersion
			sv.Pre = append(sv.Pre, pr)
		}
	}

	if v.build != "" {
		sv.Build = strings.Split(v.build, ".")
	}

	return sv
}

// Prerelease reports whether v is a pre-release ("v1.14.0-beta.1").
func (v Version) Prerelease() bool { return v.pre != "" }

// WithoutBuild is v without build metadata ("v1.13.9+dirty" is v1.13.9).
func (v Version) WithoutBuild() Version {
	v.build = ""

	return v
}

// MarshalText implements encoding.TextMarshaler.
func (v Version) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; an empty text is the
// zero Version.
func (v *Version) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*v = Version{}

		return nil
	}

	p, err := ParseVersion(string(b))
	if err != nil {
		return err
	}

	*v = p

	return nil
}

// minMajor.minMinor is the oldest Talos minor offered, the public
// factory's default build.minTalosVersion.
const minMajor, minMinor = 1, 2

// Versions turns imager tags into the offered Talos versions, as the public
// factory does: semver tags at or above 1.2.0, minus broken ones, with
// pre-releases only of the highest major.minor and only alpha.N, beta.N or
// rc.N. The result is sorted ascending.
func Versions(tags []string, broken []string) []Version {
	isBroken := map[string]bool{}
	for _, b := range broken {
		isBroken["v"+strings.TrimPrefix(b, "v")] = true
	}

	var (
		vs      []Version
		highest Version
	)

	for _, tag := range tags {
		if !strings.HasPrefix(tag, "v") || isBroken[tag] {
			continue
		}

		v, err := ParseVersion(tag)
		if err != nil || v.Before(minMajor, minMinor) || v.build != "" {
			continue
		}

		vs = append(vs, v)

		if highest.IsZero() || highest.Before(v.major, v.minor) {
			highest = v
		}
	}

	vs = slices.DeleteFunc(vs, func(v Version) bool {
		if v.pre == "" {
			return false
		}

		return v.major != highest.major || v.minor != highest.minor || !allowedPre(v.Semver().Pre)
	})

	slices.SortFunc(vs, Version.Compare)

	return vs
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
