package demo

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/release"
)

// DefaultKernelVersion is the kernel version the synthetic kernel-module
// extension is built for when Options.KernelVersion is empty. It is not the
// version of any real Talos kernel.
const DefaultKernelVersion = "6.18.0-talos"

// Options describe one synthetic release and where to push it.
type Options struct {
	// Version is the Talos version, "v1.13.0". The release has that
	// version's shape: installer-base from 1.10 (the full installer
	// before), talosctl-all from 1.11. Pushing several versions to one
	// registry makes a multi-version mirror; images that do not depend on
	// the version (intel-ucode, the overlay, Kubernetes images two versions
	// share) are shared.
	Version string
	// KubernetesImages are the upstream cluster images to push;
	// release.KubernetesImages(Version) when nil, which must know Version.
	KubernetesImages []string
	// Registry receives the release. Required.
	Registry name.Registry
	// Namespace is an optional path prefix inside Registry ("demo").
	Namespace string
	// Remote carries transport and auth. Push adds remote.WithContext itself.
	Remote []remote.Option
	// Sign, when set, is called once for every manifest pushed (each
	// platform image, then its index), with the mirror repository and the
	// digest, after the index is written, and the upstream repository the
	// image stands for ("ghcr.io/siderolabs/imager"): the name a real
	// release's signature carries, which kiln checks for release images
	// (signing.WithSignedIdentity). An error stops Push.
	Sign func(ctx context.Context, ref name.Digest, upstream name.Repository) error
	// Assets, when set, supplies real boot assets for usr/install/<arch>/
	// (file is one of release.KernelAsset, InitramfsAsset, SDBootAsset,
	// SDStubAsset). Returning an error matching fs.ErrNotExist keeps the
	// placeholder for that file; any other error stops Push.
	Assets func(arch, file string) ([]byte, error)
	// Installer, when set, supplies installer-base's (before 1.10 the
	// installer's) usr/bin/installer for an arch, e.g. the fixture that
	// testfixture.BuildInstaller compiles. Returning an error matching
	// fs.ErrNotExist keeps the placeholder; any other error stops Push.
	Installer func(arch string) ([]byte, error)
	// Grub, when set, supplies the imager's GRUB platform directories,
	// usr/lib/grub/<platform> for each of release.GrubPlatforms (GrubFrom
	// reads a /usr/lib/grub). A platform it answers fs.ErrNotExist for
	// gets the default: a synthetic, unbootable i386-pc tree that
	// builder/grub accepts, and no EFI platform; any other error stops
	// Push.
	Grub func(platform string) (fs.FS, error)
	// KernelVersion names usr/lib/modules/<kver> in the kernel-module
	// extension; DefaultKernelVersion when empty. Set it to the version of a
	// real kernel passed through Assets.
	KernelVersion string
	// Modules, when set, replaces the synthetic modules of the
	// kernel-module extension (siderolabs/drbd): paths relative to
	// usr/lib/modules/<kver>/ and their content, e.g. a real module of the
	// kernel passed through Assets.
	Modules map[string][]byte

	// ver is Version, parsed by validate.
	ver release.Version
}

// The SELinux labels the synthetic gvisor extension carries on
// usr/local/bin/runsc and etc/cri/conf.d/gvisor.part (as PAX records).
const (
	GvisorBinaryLabel = "system_u:object_r:kiln_synthetic_exec_t:s0"
	GvisorConfigLabel = "system_u:object_r:kiln_synthetic_conf_t:s0"
)

// Release is what Push wrote. Every name.Digest is on the target registry
// (including Namespace) and, except in Manifests, names an OCI index.
type Release struct {
	Version           string
	KernelVersion     string
	KubernetesVersion string // "1.36.0", from the kubelet image's tag

	// InstallerBase is set from 1.10, Installer (the full installer)
	// before it, TalosctlAll from 1.11.
	Imager, InstallerBase, Installer, Extensions, Overlays, TalosctlAll name.Digest

	// ExtensionImages maps "siderolabs/gvisor" to the mirrored index.
	ExtensionImages map[string]name.Digest
	// ExtensionRefs maps "siderolabs/gvisor" to its image-digests line,
	// "ghcr.io/siderolabs/gvisor:<tag>@sha256:...".
	ExtensionRefs map[string]string
	// OverlayImages maps "siderolabs/sbc-raspberrypi" to the mirrored index.
	OverlayImages map[string]name.Digest
	// KubernetesImages are the mirrored Kubernetes images, in
	// Options.KubernetesImages (release.KubernetesImages) order.
	KubernetesImages []name.Digest

	// Manifests lists every manifest pushed, children before their index,
	// in push order: exactly the references Sign was called with.
	Manifests []name.Digest
}

// Push generates the release described by opts and pushes it. The same
// opts always produce the same digests.
func Push(ctx context.Context, opts Options) (*Release, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}

	if opts.KernelVersion == "" {
		opts.KernelVersion = DefaultKernelVersion
	}

	if opts.KubernetesImages == nil {
		refs, err := release.KubernetesImages(opts.ver)
		if err != nil {
			return nil, fmt.Errorf("test release: %w", err)
		}

		opts.KubernetesImages = refs
	}

	p := &pusher{
		opts: &opts, mirror: release.Mirror{Registry: opts.Registry, Namespace: opts.Namespace},
		remote: append(append([]remote.Option(nil), opts.Remote...), remote.WithContext(ctx)),
	}
	rel := &Release{
		Version:         opts.Version,
		KernelVersion:   opts.KernelVersion,
		ExtensionImages: map[string]name.Digest{},
		ExtensionRefs:   map[string]string{},
		OverlayImages:   map[string]name.Digest{},
	}

	// Each step pushes images before the catalog naming them; the order of
	// the steps only fixes the order of Manifests (and of Sign calls).
	steps := []func(context.Context, *pusher, *Release) error{
		pushImager, pushExtensions, pushOverlays, pushTalosctl, pushKubernetes,
	}
	for _, step := range steps {
		if err := step(ctx, p, rel); err != nil {
			return nil, fmt.Errorf("test release %s: %w", opts.Version, err)
		}
	}

	rel.Manifests = p.pushed

	return rel, nil
}

func (o *Options) validate() error {
	if o.Version == "" {
		return errors.New("test release: version is required")
	}

	if !strings.HasPrefix(o.Version, "v") {
		return fmt.Errorf("test release: version %q: must start with \"v\"", o.Version)
	}

	v, err := release.ParseVersion(o.Version)
	if err != nil {
		return fmt.Errorf("test release: %w", err)
	}

	o.ver = v

	// The zero name.Registry means Docker Hub; a synthetic release never
	// belongs there, so treat it as "not set".
	if o.Registry.RegistryStr() == name.DefaultRegistry {
		return fmt.Errorf("test release %s: registry is required", o.Version)
	}

	// Check the namespace here rather than fail halfway through the push.
	if _, err := (release.Mirror{Registry: o.Registry, Namespace: o.Namespace}).Repo(release.ImagerRepo); err != nil {
		return fmt.Errorf("test release %s: namespace %q: %w", o.Version, o.Namespace, err)
	}

	return nil
}

// pusher writes indexes and records (and signs) what it wrote.
type pusher struct {
	opts   *Options
	mirror release.Mirror
	remote []remote.Option
	pushed []name.Digest
}

// push writes idx as mirrorPath:tag (children first, by remote.WriteIndex)
// and signs each child, then the index.
func (p *pusher) push(ctx context.Context, mirrorPath, tag string, idx v1.ImageIndex) (name.Digest, error) {
	repo, err := p.mirror.Repo(mirrorPath)
	if err != nil {
		return name.Digest{}, err
	}

	upstream, err := release.UpstreamRepo(mirrorPath)
	if err != nil {
		return name.Digest{}, err
	}

	ref := repo.Tag(tag)
	if err := remote.WriteIndex(ref, idx, p.remote...); err != nil {
		return name.Digest{}, fmt.Errorf("push %s: %w", ref, err)
	}

	im, err := idx.IndexManifest()
	if err != nil {
		return name.Digest{}, fmt.Errorf("index manifest %s: %w", ref, err)
	}

	digest, err := idx.Digest()
	if err != nil {
		return name.Digest{}, fmt.Errorf("index digest %s: %w", ref, err)
	}

	refs := make([]name.Digest, 0, len(im.Manifests)+1)
	for _, m := range im.Manifests {
		refs = append(refs, repo.Digest(m.Digest.String()))
	}

	refs = append(refs, repo.Digest(digest.String()))

	for _, d := range refs {
		if p.opts.Sign != nil {
			if err := p.opts.Sign(ctx, d, upstream); err != nil {
				return name.Digest{}, fmt.Errorf("sign %s: %w", d, err)
			}
		}

		p.pushed = append(p.pushed, d)
	}

	return refs[len(refs)-1], nil
}

// pushFiles builds a one-layer image per arch from files and pushes their
// index as mirrorPath:tag.
func (p *pusher) pushFiles(ctx context.Context, mirrorPath, tag, createdBy string, cfg v1.Config,
	files func(arch string) ([]entry, error),
) (name.Digest, error) {
	idx, err := platformImages(release.Arches, func(arch string) (v1.Image, error) {
		entries, err := files(arch)
		if err != nil {
			return nil, err
		}

		layer, err := layerOf(entries)
		if err != nil {
			return nil, fmt.Errorf("%s linux/%s: %w", mirrorPath, arch, err)
		}

		return imageOf(arch, []v1.Layer{layer}, []string{createdBy}, cfg)
	})
	if err != nil {
		return name.Digest{}, err
	}

	return p.push(ctx, mirrorPath, tag, idx)
}

// pushImager pushes installer-base (before 1.10: the installer) and the
// imager. The imager reuses installer-base's layer, as upstream builds it
// FROM installer-base, and carries every arch's boot assets, each in its
// own layer shared by both platform images.
func pushImager(ctx context.Context, p *pusher, rel *Release) error {
	version := p.opts.Version
	baseRepo := release.BaseInstallerRepo(p.opts.ver)

	baseLayers := map[string]v1.Layer{}
	for _, arch := range release.Arches {
		bin, err := p.opts.installer(arch)
		if err != nil {
			return err
		}

		l, err := layerOf(installerBaseFiles(version, arch, bin))
		if err != nil {
			return fmt.Errorf("installer-base linux/%s: %w", arch, err)
		}

		baseLayers[arch] = l
	}

	baseCfg := baseConfig(version)
	baseCfg.Entrypoint = []string{"/usr/bin/installer"}

	idx, err := platformImages(release.Arches, func(arch string) (v1.Image, error) {
		return imageOf(arch, []v1.Layer{baseLayers[arch]}, []string{"kiln testrelease: installer-base"}, baseCfg)
	})
	if err != nil {
		return err
	}

	base, err := p.push(ctx, baseRepo, version, idx)
	if err != nil {
		return err
	}

	if baseRepo == release.InstallerBaseRepo {
		rel.InstallerBase = base
	} else {
		rel.Installer = base
	}

	// Layers after installer-base are the same in both platform images, so
	// the registry stores each blob once.
	extra, err := layerOf(imagerExtraFiles())
	if err != nil {
		return fmt.Errorf("imager: %w", err)
	}

	grubFiles, err := grubLayer(p.opts)
	if err != nil {
		return fmt.Errorf("imager: %w", err)
	}

	grubTrees, err := layerOf(grubFiles)
	if err != nil {
		return fmt.Errorf("imager GRUB: %w", err)
	}

	shared := []v1.Layer{extra, grubTrees}
	createdBy := []string{"kiln testrelease: installer-base", "kiln testrelease: imager tools", "kiln testrelease: " + release.GrubDir}

	for _, arch := range release.Arches {
		files, err := bootAssets(p.opts, arch)
		if err != nil {
			return fmt.Errorf("imager: %w", err)
		}

		l, err := layerOf(files)
		if err != nil {
			return fmt.Errorf("imager %s assets: %w", arch, err)
		}

		shared = append(shared, l)
		createdBy = append(createdBy, "kiln testrelease: usr/install/"+arch)
	}

	imagerCfg := baseConfig(version)
	imagerCfg.Entrypoint = []string{"/usr/bin/imager"}

	idx, err = platformImages(release.Arches, func(arch string) (v1.Image, error) {
		return imageOf(arch, append([]v1.Layer{baseLayers[arch]}, shared...), createdBy, imagerCfg)
	})
	if err != nil {
		return err
	}

	rel.Imager, err = p.push(ctx, release.ImagerRepo, version, idx)

	return err
}

// pushExtensions pushes every extension, then the catalog naming them.
func pushExtensions(ctx context.Context, p *pusher, rel *Release) error {
	descriptions := map[string]catalogDescription{}

	var lines []string

	for _, ext := range extensionSet(p.opts.Version, p.opts.KernelVersion, p.opts.Modules) {
		repoPath := "siderolabs/" + ext.name

		d, err := p.pushFiles(ctx, repoPath, ext.tag, "kiln testrelease: extension "+ext.name, v1.Config{},
			func(arch string) ([]entry, error) { return extensionLayerFiles(ext, arch) })
		if err != nil {
			return fmt.Errorf("extension %s: %w", ext.name, err)
		}

		line := release.UpstreamPath(repoPath) + ":" + ext.tag + "@" + d.DigestStr()
		lines = append(lines, line)
		descriptions[line] = catalogDescription{Author: extensionAuthor, Description: ext.description}
		rel.ExtensionImages[repoPath] = d
		rel.ExtensionRefs[repoPath] = line
	}

	sort.Strings(lines)

	descYAML, err := yaml.Marshal(descriptions)
	if err != nil {
		return fmt.Errorf("extensions catalog: %w", err)
	}

	catalog := []entry{
		file(release.ImageDigestsFile, []byte(strings.Join(lines, "\n")+"\n")),
		file(release.DescriptionsFile, descYAML),
	}

	rel.Extensions, err = p.pushFiles(ctx, release.ExtensionsRepo, p.opts.Version, "kiln testrelease: extensions catalog",
		v1.Config{}, func(string) ([]entry, error) { return catalog, nil })
	if err != nil {
		return fmt.Errorf("extensions catalog: %w", err)
	}

	return nil
}

// pushOverlays pushes every overlay, then overlays.yaml naming them.
func pushOverlays(ctx context.Context, p *pusher, rel *Release) error {
	var catalog overlaysCatalog

	for _, ov := range overlaySet() {
		repoPath := "siderolabs/" + ov.image

		d, err := p.pushFiles(ctx, repoPath, ov.tag, "kiln testrelease: overlay "+ov.image, v1.Config{},
			func(arch string) ([]entry, error) { return ov.files(arch), nil })
		if err != nil {
			return fmt.Errorf("overlay %s: %w", ov.image, err)
		}

		rel.OverlayImages[repoPath] = d

		for _, n := range ov.names {
			catalog.Overlays = append(catalog.Overlays, overlayEntry{
				Name:   n,
				Image:  release.UpstreamPath(repoPath) + ":" + ov.tag,
				Digest: d.DigestStr(),
			})
		}
	}

	data, err := yaml.Marshal(catalog)
	if err != nil {
		return fmt.Errorf("overlays catalog: %w", err)
	}

	files := []entry{file(release.OverlaysFile, data)}

	rel.Overlays, err = p.pushFiles(ctx, release.OverlaysRepo, p.opts.Version, "kiln testrelease: overlays catalog",
		v1.Config{}, func(string) ([]entry, error) { return files, nil })
	if err != nil {
		return fmt.Errorf("overlays catalog: %w", err)
	}

	return nil
}

// pushTalosctl pushes talosctl-all, which releases publish from 1.11.
func pushTalosctl(ctx context.Context, p *pusher, rel *Release) error {
	if !release.HasTalosctlAll(p.opts.ver) {
		return nil
	}

	files := talosctlFiles(p.opts.Version)

	var err error

	rel.TalosctlAll, err = p.pushFiles(ctx, release.TalosctlAllRepo, p.opts.Version, "kiln testrelease: talosctl-all",
		v1.Config{}, func(string) ([]entry, error) { return files, nil })
	if err != nil {
		return fmt.Errorf("talosctl-all: %w", err)
	}

	return nil
}

// pushKubernetes pushes the Kubernetes bundle under release.MirrorPath names.
func pushKubernetes(ctx context.Context, p *pusher, rel *Release) error {
	for _, upstream := range p.opts.KubernetesImages {
		tag, err := name.NewTag(upstream, name.StrictValidation)
		if err != nil {
			return fmt.Errorf("kubernetes image %s: %w", upstream, err)
		}

		repo := tag.Context()
		bin := repo.RepositoryStr()[strings.LastIndex(repo.RepositoryStr(), "/")+1:]
		cfg := v1.Config{Entrypoint: []string{"/usr/local/bin/" + bin}}

		d, err := p.pushFiles(ctx, release.MirrorPath(repo), tag.TagStr(), "kiln testrelease: "+bin, cfg,
			func(arch string) ([]entry, error) { return kubernetesFiles(bin, tag.TagStr(), arch), nil })
		if err != nil {
			return fmt.Errorf("kubernetes image %s: %w", upstream, err)
		}

		rel.KubernetesImages = append(rel.KubernetesImages, d)

		if repo.Name() == "ghcr.io/siderolabs/kubelet" {
			rel.KubernetesVersion = strings.TrimPrefix(tag.TagStr(), "v")
		}
	}

	return nil
}
