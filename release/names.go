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
func BaseInstallerRepo(v Version) string {
	if v.Before(1, 10) {
		return InstallerRepo
	}

	return InstallerBaseRepo
}

// HasTalosctlAll reports whether a Talos version publishes talosctl-all
// (from 1.11 on).
func HasTalosctlAll(v Version) bool { return v.AtLeast(1, 11) }

// HasOverlays reports whether a Talos version has an overlays catalog
// (from 1.7 on).
func HasOverlays(v Version) bool { return v.AtLeast(1, 7) }

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
	// GrubDir holds GRUB's platform directories in the imager:
	// usr/lib/grub/<platform>/ (GrubPlatforms).
	GrubDir = "usr/lib/grub"
)

// GRUB platform directories of the imager: i386-pc for BIOS (core.img,
// boot.img, El Torito), x86_64-efi and arm64-efi for GRUB's EFI images.
const (
	GrubPC    = "i386-pc"
	GrubAMD64 = "x86_64-efi"
	GrubARM64 = "arm64-efi"
)

// GrubPlatforms are the GRUB platform directories a release's imager
// carries (both architectures', as upstream's imager does).
var GrubPlatforms = []string{GrubPC, GrubAMD64, GrubARM64}

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

// UpstreamRepo is the upstream repository of a mirror path (UpstreamPath),
// the name its signature carries.
func UpstreamRepo(path string) (name.Repository, error) {
	repo, err := name.NewRepository(UpstreamPath(path))
	if err != nil {
		return name.Repository{}, fmt.Errorf("upstream repository of %q: %w", path, err)
	}

	return repo, nil
}

// Mirror is where releases are mirrored: a registry, and an optional
// namespace (a Harbor project, a proxy path) that every mirror path lives
// below, <Registry>/<Namespace>/<mirror path>. It is the one place that
// joins a namespace and a mirror path, and takes them apart again.
type Mirror struct {
	Registry name.Registry
	// Namespace is an optional path prefix ("proxy-ghcr", "kiln/talos");
	// slashes around it do not count.
	Namespace string
}

// namespace is the namespace without surrounding slashes.
func (m Mirror) namespace() string { return strings.Trim(m.Namespace, "/") }

// String is "<registry>/<namespace>", or the registry alone.
func (m Mirror) String() string {
	if ns := m.namespace(); ns != "" {
		return m.Registry.Name() + "/" + ns
	}

	return m.Registry.Name()
}

// Join is the repository path, inside the registry, of a mirror path:
// "proxy-ghcr/siderolabs/imager" for "siderolabs/imager".
func (m Mirror) Join(path string) string {
	path = strings.Trim(path, "/")
	if ns := m.namespace(); ns != "" {
		return ns + "/" + path
	}

	return path
}

// Repo is the repository of a mirror path, on Registry (insecure if it
// is).
func (m Mirror) Repo(path string) (name.Repository, error) {
	full := m.Join(path)

	if _, err := name.NewRepository(m.Registry.RegistryStr() + "/" + full); err != nil {
		return name.Repository{}, fmt.Errorf("repository %q: %w", path, err)
	}

	return m.Registry.Repo(full), nil
}

// Path is the mirror path of a repository of the mirror, the inverse of
// Repo: "siderolabs/imager" for <registry>/<namespace>/siderolabs/imager.
func (m Mirror) Path(repo name.Repository) (string, error) {
	prefix := ""
	if ns := m.namespace(); ns != "" {
		prefix = ns + "/"
	}

	path, ok := strings.CutPrefix(repo.RepositoryStr(), prefix)
	if repo.RegistryStr() != m.Registry.RegistryStr() || !ok || path == "" {
		return "", fmt.Errorf("%s is not a repository of the mirror %s/%s", repo, m.Registry.RegistryStr(), m.namespace())
	}

	return path, nil
}

// Upstream is the upstream repository a repository of the mirror stands
// for: ghcr.io/siderolabs/imager for <registry>/<namespace>/siderolabs/imager.
func (m Mirror) Upstream(repo name.Repository) (name.Repository, error) {
	path, err := m.Path(repo)
	if err != nil {
		return name.Repository{}, err
	}

	return UpstreamRepo(path)
}

// Ref rewrites an upstream reference ("ghcr.io/siderolabs/x:tag@sha256:...")
// onto the mirror. A reference that has both a tag and a digest keeps the
// digest only: the digest is what was signed and what is verified.
func (m Mirror) Ref(upstream string) (name.Reference, error) {
	ref, err := name.ParseReference(upstream)
	if err != nil {
		return nil, fmt.Errorf("reference %q: %w", upstream, err)
	}

	repo, err := m.Repo(MirrorPath(ref.Context()))
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
