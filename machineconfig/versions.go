package machineconfig

import (
	"fmt"

	"github.com/kiln-dev/kiln/release"
)

// Feature is a part of the machine config that not every Talos version has.
type Feature string

// The features a patch uses, each with the first Talos version whose
// machinery has it (Since). The versions are read from the machinery module
// of every version the Go module proxy serves: a pre-release the proxy did
// not serve (v1.14.0-alpha.3, say) may have a feature before the version
// given here.
const (
	// RegistryDocuments are the RegistryMirrorConfig and RegistryTLSConfig
	// documents (absent from v1.12.0-alpha.2, present in beta.0).
	RegistryDocuments Feature = "registry-documents"
	// RegistryTLSDocumentWithoutClient is a RegistryTLSConfig document without
	// a clientIdentity that Talos can read: before v1.12.2 (and in
	// v1.13.0-alpha.0) its ClientIdentity() dereferences the missing
	// identity, which the node's RegistriesConfigController calls for every
	// TLS config; there the TLS settings go to machine.registries.config.
	RegistryTLSDocumentWithoutClient Feature = "registry-tls-document-without-client"
	// ImageVerification is the ImageVerificationConfig document (from
	// v1.13.0-beta.0).
	ImageVerification Feature = "image-verification"
	// ImageCacheDocument is the ImageCacheConfig document (from
	// v1.14.0-alpha.1), which replaces machine.features.imageCache.
	ImageCacheDocument Feature = "image-cache-document"
	// UnattendedInstall is the UnattendedInstallConfig document: from 1.14.0
	// `talosctl gen config` writes it instead of machine.install (absent
	// from v1.14.0-alpha.2, present in v1.14.1; v1.14.0 itself is not on the
	// proxy), and a config with both is refused.
	UnattendedInstall Feature = "unattended-install"
)

var since = map[Feature]string{
	RegistryDocuments:                "1.12.0-beta.0",
	RegistryTLSDocumentWithoutClient: "1.12.2",
	ImageVerification:                "1.13.0-beta.0",
	ImageCacheDocument:               "1.14.0-alpha.1",
	UnattendedInstall:                "1.14.0",
}

// MinVersion is the oldest Talos version kiln writes patches for: the oldest
// whose machinery the patches are validated with.
const MinVersion = "v1.10.0"

// Version is a Talos version a patch is written for.
type Version struct{ v release.Version }

// ParseVersion parses "v1.13.0" or "1.13.0"; versions before MinVersion
// (their pre-releases included) are refused.
func ParseVersion(s string) (Version, error) {
	v, err := release.ParseVersion(s)
	if err != nil || v.WithoutBuild() != v {
		return Version{}, invalidf("Talos version %q: want vMAJOR.MINOR.PATCH", s)
	}

	if sv := v.Semver(); sv.Major != 1 || sv.Minor < 10 {
		return Version{}, invalidf("Talos version %s: machine-config patches are written for Talos %s and later", v, MinVersion)
	}

	return Version{v}, nil
}

// String is the version with its "v".
func (v Version) String() string { return v.v.String() }

// Has reports whether the version's machine config has f.
func (v Version) Has(f Feature) bool {
	first, ok := since[f]
	if !ok {
		panic(fmt.Sprintf("machineconfig: unknown feature %q", f))
	}

	if sv := v.v.Semver(); f == RegistryTLSDocumentWithoutClient && sv.Major == 1 && sv.Minor == 13 && sv.Patch == 0 &&
		len(sv.Pre) == 2 && sv.Pre[0].VersionStr == "alpha" && sv.Pre[1].VersionNum == 0 {
		// v1.13.0-alpha.0 branched before the fix of v1.12.2.
		return false
	}

	return v.v.Compare(release.MustParseVersion(first)) >= 0
}

// DefaultForm is the form a version gets when none is asked for: the
// documents once it has them (Talos deprecates machine.registries there).
func (v Version) DefaultForm() Form {
	if v.Has(RegistryDocuments) {
		return FormDocuments
	}

	return FormLegacy
}
