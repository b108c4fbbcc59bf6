package release

import (
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// Repositories of a Talos release, relative to a mirror (see the package doc).
const (
	ImagerRepo        = "siderolabs/imager"
	InstallerBaseRepo = "siderolabs/installer-base"
	// InstallerRepo is the full installer, which releases before 1.10
	// (without installer-base) are built from.
	InstallerRepo   = "siderolabs/installer"
	ExtensionsRepo  = "siderolabs/extensions"
	OverlaysRepo    = "siderolabs/overlays"
	TalosctlAllRepo = "siderolabs/talosctl-all"
)

// BaseInstallerRepo is the repository a factory builds a Talos version's
// installers from: installer-base from 1.10, the full installer before
// (image-factory hack/copy-artifacts.sh).
func BaseInstallerRepo(version string) (string, error) {
	v, err := parseSemver(version)
	if err != nil {
		return "", err
	}

	if v.Major == 1 && v.Minor < 10 {
		return InstallerRepo, nil
	}

	return InstallerBaseRepo, nil
}

// HasTalosctlAll reports whether a Talos version publishes talosctl-all
// (from 1.11 on).
func HasTalosctlAll(version string) (bool, error) {
	v, err := parseSemver(version)
	if err != nil {
		return false, err
	}

	return v.Major > 1 || v.Minor >= 11, nil
}

// Files inside the catalog images and the imager.
const (
	// ImageDigestsFile lists extension images, one "ghcr.io/siderolabs/x:tag@sha256:..." per line.
	ImageDigestsFile = "image-digests"
	// DescriptionsFile maps each image-digests line to {author, description}.
	DescriptionsFile = "descriptions.yaml"
	// OverlaysFile is {overlays: [{name, image, digest}]}.
	OverlaysFile = "overlays.yaml"
	// InstallDir holds the boot assets in the imager: usr/install/<arch>/...
	InstallDir = "usr/install"
)

// Boot asset file names under usr/install/<arch>/ in the imager.
const (
	KernelAsset    = "vmlinuz"
	InitramfsAsset = "initramfs.xz"
	SDBootAsset    = "systemd-boot.efi"
	SDStubAsset    = "systemd-stub.efi"
)

// Arches kiln builds for.
var Arches = []string{"amd64", "arm64"}

// defaultRegistry is the host whose references map onto a mirror without it.
const defaultRegistry = "ghcr.io"

// MirrorPath is the repository path, inside a mirror, of an upstream
// repository such as "ghcr.io/siderolabs/gvisor" or
// "registry.k8s.io/kube-apiserver".
func MirrorPath(repo name.Repository) string {
	host := repo.RegistryStr()
	if host == defaultRegistry {
		return repo.RepositoryStr()
	}

	if host == name.DefaultRegistry {
		host = "docker.io"
	}

	return host + "/" + repo.RepositoryStr()
}

// UpstreamPath inverts MirrorPath: the upstream repository, without a
// scheme, of a mirror path. A path whose first element is a host
// ("registry.k8s.io/etcd", "localhost:5000/x") keeps it; any other lives on
// ghcr.io ("siderolabs/imager" is "ghcr.io/siderolabs/imager").
func UpstreamPath(path string) string {
	path = strings.Trim(path, "/")

	first, _, _ := strings.Cut(path, "/")
	if strings.ContainsAny(first, ".:") || first == "localhost" {
		return path
	}

	return defaultRegistry + "/" + path
}

// MirrorReference rewrites an upstream reference ("ghcr.io/siderolabs/x:tag@sha256:...")
// onto a mirror registry with an optional namespace prefix ("harbor.local", "proxy-ghcr").
// A reference that has both a tag and a digest keeps the digest only: the
// digest is what was signed and what is verified.
func MirrorReference(upstream string, mirror name.Registry, namespace string, opts ...name.Option) (name.Reference, error) {
	ref, err := name.ParseReference(upstream)
	if err != nil {
		return nil, fmt.Errorf("reference %q: %w", upstream, err)
	}

	path := MirrorPath(ref.Context())
	if namespace != "" {
		path = strings.Trim(namespace, "/") + "/" + path
	}

	repo, err := name.NewRepository(mirror.Name()+"/"+path, opts...)
	if err != nil {
		return nil, fmt.Errorf("mirror repository for %q: %w", upstream, err)
	}

	if d, ok := ref.(name.Digest); ok {
		return repo.Digest(d.DigestStr()), nil
	}

	if at := strings.LastIndex(upstream, "@"); at >= 0 {
		return repo.Digest(upstream[at+1:]), nil
	}

	return repo.Tag(ref.Identifier()), nil
}
