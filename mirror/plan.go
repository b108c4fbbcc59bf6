package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

// All selects every extension or overlay of the catalogs.
const All = "all"

// Selection is what to mirror.
type Selection struct {
	// Versions are Talos versions: for each, siderolabs/imager,
	// installer-base (before 1.10: installer) and the extensions and
	// overlays catalogs, as image-factory's hack/copy-artifacts.sh copies.
	Versions []release.Version
	// Arches keeps, of every multi-platform index, the children for these
	// architectures ("amd64", "arm64"). Empty keeps every child, including
	// attestation manifests. The index itself is always copied unchanged
	// (its digest is what is signed), so on the destination it still lists
	// the other platforms, which are not pullable there (see README.md).
	Arches []string
	// Extensions are extension names from the extensions catalog
	// ("siderolabs/gvisor" or "gvisor"), or All.
	Extensions []string
	// Overlays are overlay names ("rpi_generic") or overlay images
	// ("siderolabs/sbc-raspberrypi", "sbc-raspberrypi"), or All.
	Overlays []string
	// Talosctl adds siderolabs/talosctl-all of the versions that publish
	// it (from 1.11; older ones get a Plan.Notes line instead).
	Talosctl bool
	// Kubernetes adds the Kubernetes images of each version.
	Kubernetes bool
	// KubernetesImages lists the Kubernetes images of a Talos version as
	// upstream references; release.KubernetesImages when nil, which knows
	// every Talos patch version from 1.10 on (see its doc).
	KubernetesImages func(release.Version) ([]string, error)
	// TalosDefaults are Talos versions whose cluster images (the list
	// `talosctl images default` prints, KubernetesImages) are copied
	// without the release itself.
	TalosDefaults []release.Version
	// Images are more upstream references to copy
	// ("docker.io/library/busybox:1.37", NormalizeImage), each under its
	// mirror path with its signatures.
	Images []string
}

// Kind is what an Item is for.
type Kind string

// Kinds of plan items.
const (
	KindTalos      Kind = "talos"      // imager, installer-base, catalogs, talosctl-all
	KindExtension  Kind = "extension"  // an extension image from the catalog
	KindOverlay    Kind = "overlay"    // an overlay image from the catalog
	KindKubernetes Kind = "kubernetes" // an image of the Kubernetes bundle
	KindImage      Kind = "image"      // an image from Selection.Images
	KindSignature  Kind = "signature"  // a cosign signature, attestation or OCI referrer
)

// Item is one root manifest to copy with everything it references.
type Item struct {
	Kind Kind
	// Repo is the mirror path ("siderolabs/imager").
	Repo string
	// Tags to set on the destination; none for an image copied by digest
	// only or for a referrer.
	Tags      []string
	Digest    v1.Hash
	MediaType types.MediaType
	// Subject is, for a signature, the digest it is attached to.
	Subject *v1.Hash
	// Platforms are the platforms kept from an index ("linux/amd64").
	Platforms []string
	// Partial: children of the index were left out by Selection.Arches.
	Partial bool
	// Blobs are the configs and layers to copy, once each.
	Blobs []v1.Descriptor
	// Size is the bytes of the manifests and blobs.
	Size int64

	// manifests are the kept children (depth first) then the root, last.
	manifests []manifestData
}

// Verify reports whether the item's digest must be verified: every image,
// not its signatures.
func (it *Item) Verify() bool { return it.Kind != KindSignature }

// verifyContext asks the verifier, for the images of a Talos release
// (imager, installer, catalogs, talosctl-all, extensions, overlays), for a
// signature made for the upstream repository the item is copied from and
// to: a signature of another repository's image, copied along with it,
// does not pass (signing.WithSignedIdentity). Kubernetes images and
// images listed by hand are not held to it: Kubernetes' own signatures
// name other registries than the one they are pulled from (promo-tools
// #935), and an image listed by hand may be signed under any name.
func (it *Item) verifyContext(ctx context.Context) (context.Context, error) {
	switch it.Kind {
	case KindTalos, KindExtension, KindOverlay:
	default:
		return ctx, nil
	}

	repo, err := release.UpstreamRepo(it.Repo)
	if err != nil {
		return nil, err
	}

	return signing.WithSignedIdentity(ctx, repo), nil
}

// String is "<repo>:<tag>@<digest>".
func (it *Item) String() string {
	s := it.Repo
	if len(it.Tags) > 0 {
		s += ":" + it.Tags[0]
	}

	return s + "@" + it.Digest.String()
}

func (it *Item) root() manifestData { return it.manifests[len(it.manifests)-1] }

// Plan is everything one mirror run copies, resolved to digests.
type Plan struct {
	Source    Endpoint
	Selection Selection
	// Items, each after anything it depends on (a signature after its subject).
	Items []*Item
	// Notes say what the selection asked for that a version does not have
	// ("v1.10.0: no siderolabs/talosctl-all before Talos 1.11").
	Notes []string
}

// Size is the total size of the plan; blobs shared by several items of the
// same repository count once.
func (p *Plan) Size() int64 {
	var n int64

	seen := map[string]bool{}

	for _, it := range p.Items {
		for _, m := range it.manifests {
			n += int64(len(m.Raw))
		}

		for _, b := range it.Blobs {
			if k := it.Repo + "@" + b.Digest.String(); !seen[k] {
				seen[k] = true
				n += b.Size
			}
		}
	}

	return n
}

// NewPlan resolves sel against src: every tag to a digest, every catalog to
// its images, every image to its signatures. Nothing is written.
func NewPlan(ctx context.Context, src Endpoint, sel Selection) (*Plan, error) {
	s, err := src.openSource(ctx)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	p := &planner{src: s, sel: sel, byKey: map[string]*Item{}}

	for _, v := range sel.Versions {
		if err := p.version(ctx, v); err != nil {
			return nil, fmt.Errorf("talos %s: %w", v, err)
		}
	}

	for _, v := range sel.TalosDefaults {
		if err := p.kubernetes(ctx, v); err != nil {
			return nil, fmt.Errorf("talos %s default images: %w", v, err)
		}
	}

	for _, ref := range sel.Images {
		if err := p.upstream(ctx, KindImage, ref); err != nil {
			return nil, err
		}
	}

	return &Plan{Source: src, Selection: sel, Items: p.items, Notes: p.notes}, nil
}

type planner struct {
	src   source
	sel   Selection
	items []*Item
	byKey map[string]*Item // repo@digest
	notes []string
}

func (p *planner) version(ctx context.Context, ver release.Version) error {
	v := ver.String() // the tag of each of the release's images

	repos := []string{release.ImagerRepo, release.BaseInstallerRepo(ver), release.ExtensionsRepo, release.OverlaysRepo}

	if p.sel.Talosctl {
		if release.HasTalosctlAll(ver) {
			repos = append(repos, release.TalosctlAllRepo)
		} else {
			p.notes = append(p.notes, fmt.Sprintf("%s: no %s before Talos 1.11, not copied", v, release.TalosctlAllRepo))
		}
	}

	catalogs := map[string]*Item{}

	for _, repo := range repos {
		it, err := p.add(ctx, KindTalos, repo, v, v, nil)
		if err != nil {
			return err
		}

		catalogs[repo] = it
	}

	if len(p.sel.Extensions) > 0 {
		img, err := p.image(ctx, catalogs[release.ExtensionsRepo])
		if err != nil {
			return err
		}

		exts, err := release.ExtensionsFromImage(img)
		if err != nil {
			return fmt.Errorf("%s:%s: %w", release.ExtensionsRepo, v, err)
		}

		for _, want := range p.sel.Extensions {
			matched := exts

			if want != All {
				e, ok := findExtension(exts, want)
				if !ok {
					return fmt.Errorf("extension %q: not in the catalog %s:%s", want, release.ExtensionsRepo, v)
				}

				matched = []release.Extension{e}
			}

			for _, e := range matched {
				if _, err := p.add(ctx, KindExtension, release.MirrorPath(e.Ref.Context()), e.Digest, e.Ref.TagStr(), nil); err != nil {
					return fmt.Errorf("extension %s: %w", e.Line, err)
				}
			}
		}
	}

	if len(p.sel.Overlays) > 0 {
		img, err := p.image(ctx, catalogs[release.OverlaysRepo])
		if err != nil {
			return err
		}

		ovs, err := release.OverlaysFromImage(img)
		if err != nil {
			return fmt.Errorf("%s:%s: %w", release.OverlaysRepo, v, err)
		}

		for _, want := range p.sel.Overlays {
			found := false

			for _, o := range ovs {
				if want != All && want != o.Name && want != o.Image() && want != path.Base(o.Image()) {
					continue
				}

				found = true

				if _, err := p.add(ctx, KindOverlay, release.MirrorPath(o.Ref.Context()), o.Digest, o.Ref.TagStr(), nil); err != nil {
					return fmt.Errorf("overlay %s: %w", o.Name, err)
				}
			}

			if !found && want != All {
				return fmt.Errorf("overlay %q: not in the catalog %s:%s", want, release.OverlaysRepo, v)
			}
		}
	}

	if p.sel.Kubernetes {
		if err := p.kubernetes(ctx, ver); err != nil {
			return fmt.Errorf("%w (or leave the Kubernetes images out: kiln mirror --kubernetes=false)", err)
		}
	}

	return nil
}

// findExtension finds an extension by its catalog name, an old name the
// public factory still accepts in schematics (release.FindExtension), or
// the last element of its name ("gvisor").
func findExtension(exts []release.Extension, want string) (release.Extension, bool) {
	if e, ok := release.FindExtension(exts, want); ok {
		return e, true
	}

	for _, e := range exts {
		if want == path.Base(e.Name()) {
			return e, true
		}
	}

	return release.Extension{}, false
}

// kubernetes adds the cluster images of a Talos version.
func (p *planner) kubernetes(ctx context.Context, ver release.Version) error {
	list := p.sel.KubernetesImages
	if list == nil {
		list = release.KubernetesImages
	}

	refs, err := list(ver)
	if err != nil {
		return err
	}

	for _, ref := range refs {
		if err := p.upstream(ctx, KindKubernetes, ref); err != nil {
			return err
		}
	}

	return nil
}

// upstream adds an upstream reference ("registry.k8s.io/etcd:v3.6.9",
// "ghcr.io/x/y:t@sha256:...").
func (p *planner) upstream(ctx context.Context, kind Kind, s string) error {
	tagged, digest, _ := strings.Cut(s, "@")

	ref, err := name.ParseReference(tagged)
	if err != nil {
		return fmt.Errorf("image %q: %w", s, err)
	}

	repo := release.MirrorPath(ref.Context())
	tag := ""

	// A tag is kept when written, or when there is no digest ("latest").
	if t, ok := ref.(name.Tag); ok && (digest == "" || strings.Contains(tagged[strings.LastIndex(tagged, "/")+1:], ":")) {
		tag = t.TagStr()
	}

	r := digest
	if r == "" {
		r = tag
	}

	if _, err := p.add(ctx, kind, repo, r, tag, nil); err != nil {
		return fmt.Errorf("image %s: %w", s, err)
	}

	return nil
}

// add resolves repo:ref and adds it (with its signatures unless it is one);
// an already planned repo@digest only gains the tag.
func (p *planner) add(ctx context.Context, kind Kind, repo, ref, tag string, subject *v1.Hash) (*Item, error) {
	m, err := p.src.manifest(ctx, repo, ref)
	if err != nil {
		return nil, err
	}

	if strings.HasPrefix(ref, "sha256:") && m.Digest.String() != ref {
		return nil, fmt.Errorf("%s@%s: source returned %s", repo, ref, m.Digest)
	}

	key := repo + "@" + m.Digest.String()
	if it, ok := p.byKey[key]; ok {
		if tag != "" && !slices.Contains(it.Tags, tag) {
			it.Tags = append(it.Tags, tag)
		}

		return it, nil
	}

	it := &Item{Kind: kind, Repo: repo, Digest: m.Digest, MediaType: m.MediaType, Subject: subject}
	if tag != "" {
		it.Tags = []string{tag}
	}

	if err := p.collect(ctx, it, m, map[string]bool{}); err != nil {
		return nil, fmt.Errorf("%s: %w", it, err)
	}

	p.byKey[key] = it
	p.items = append(p.items, it)

	if kind != KindSignature {
		if err := p.signatures(ctx, it); err != nil {
			return nil, err
		}
	}

	return it, nil
}

func isIndex(mt types.MediaType) bool {
	return mt == types.OCIImageIndex || mt == types.DockerManifestList
}

func isManifest(mt types.MediaType) bool {
	return isIndex(mt) || mt == types.OCIManifestSchema1 || mt == types.DockerManifestSchema2
}

// collect adds m's kept children, blobs and m itself to it.
func (p *planner) collect(ctx context.Context, it *Item, m manifestData, blobs map[string]bool) error {
	if isIndex(m.MediaType) {
		im, err := v1.ParseIndexManifest(strings.NewReader(string(m.Raw)))
		if err != nil {
			return fmt.Errorf("index %s: %w", m.Digest, err)
		}

		for _, c := range im.Manifests {
			if !isManifest(c.MediaType) {
				continue
			}

			if !p.keep(c.Platform) {
				it.Partial = true
				continue
			}

			cm, err := p.src.manifest(ctx, it.Repo, c.Digest.String())
			if err != nil {
				return fmt.Errorf("child %s: %w", c.Digest, err)
			}

			if cm.Digest != c.Digest {
				return fmt.Errorf("child %s: source returned %s", c.Digest, cm.Digest)
			}

			cm.MediaType = c.MediaType

			if c.Platform != nil {
				it.Platforms = append(it.Platforms, c.Platform.String())
			}

			if err := p.collect(ctx, it, cm, blobs); err != nil {
				return err
			}
		}
	} else {
		mf, err := v1.ParseManifest(strings.NewReader(string(m.Raw)))
		if err != nil {
			return fmt.Errorf("manifest %s: %w", m.Digest, err)
		}

		for _, b := range append([]v1.Descriptor{mf.Config}, mf.Layers...) {
			if b.Digest.Hex == "" || blobs[b.Digest.String()] || len(b.URLs) > 0 {
				continue // foreign layers stay where they are
			}

			blobs[b.Digest.String()] = true
			it.Blobs = append(it.Blobs, v1.Descriptor{MediaType: b.MediaType, Digest: b.Digest, Size: b.Size})
			it.Size += b.Size
		}
	}

	it.manifests = append(it.manifests, m)
	it.Size += int64(len(m.Raw))

	return nil
}

// keep reports whether an index child is for a selected architecture.
func (p *planner) keep(pl *v1.Platform) bool {
	if len(p.sel.Arches) == 0 {
		return true
	}

	return pl != nil && pl.OS != "unknown" && slices.Contains(p.sel.Arches, pl.Architecture)
}

// signatures adds the cosign signature and attestation tags and the OCI
// referrers of it.
func (p *planner) signatures(ctx context.Context, it *Item) error {
	d := it.Digest

	for _, suffix := range []string{".sig", ".att"} {
		tag := "sha256-" + d.Hex + suffix
		if _, err := p.add(ctx, KindSignature, it.Repo, tag, tag, &d); err != nil && !errors.Is(err, ErrNotFound) {
			return fmt.Errorf("%s: %w", it, err)
		}
	}

	refs, err := p.src.referrers(ctx, it.Repo, d)
	if err != nil {
		return fmt.Errorf("%s: %w", it, err)
	}

	for _, r := range refs {
		if _, err := p.add(ctx, KindSignature, it.Repo, r.Digest.String(), "", &d); err != nil {
			return fmt.Errorf("%s: referrer %s: %w", it, r.Digest, err)
		}
	}

	return nil
}

// image is a planned item as a v1.Image read from the source (for the
// catalogs): the item itself, or the first linux image its index lists
// among the kept children (not an attestation, whose platform is
// unknown/unknown, nor another architecture's image listed after it).
func (p *planner) image(ctx context.Context, it *Item) (v1.Image, error) {
	root := it.root()

	m, ok := root, !isIndex(root.MediaType)
	if !ok {
		im, err := v1.ParseIndexManifest(strings.NewReader(string(root.Raw)))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", it, err)
		}

		for _, c := range im.Manifests {
			if c.Platform == nil || c.Platform.OS != "linux" || isIndex(c.MediaType) || !isManifest(c.MediaType) {
				continue
			}

			if i := slices.IndexFunc(it.manifests, func(k manifestData) bool { return k.Digest == c.Digest }); i >= 0 {
				m, ok = it.manifests[i], true

				break
			}
		}
	}

	if !ok {
		return nil, fmt.Errorf("%s: no linux image for the selected architectures", it)
	}

	img, err := partial.CompressedToImage(&srcImage{ctx: ctx, src: p.src, repo: it.Repo, m: m})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", it, err)
	}

	return img, nil
}

// srcImage is a partial.CompressedImageCore over a source.
type srcImage struct {
	ctx  context.Context
	src  source
	repo string
	m    manifestData
}

func (s *srcImage) RawManifest() ([]byte, error)        { return s.m.Raw, nil }
func (s *srcImage) MediaType() (types.MediaType, error) { return s.m.MediaType, nil }

func (s *srcImage) RawConfigFile() ([]byte, error) {
	mf, err := v1.ParseManifest(strings.NewReader(string(s.m.Raw)))
	if err != nil {
		return nil, err
	}

	rc, err := s.src.blob(s.ctx, s.repo, mf.Config.Digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()

	return io.ReadAll(io.LimitReader(rc, maxManifestSize))
}

func (s *srcImage) LayerByDigest(h v1.Hash) (partial.CompressedLayer, error) {
	mf, err := v1.ParseManifest(strings.NewReader(string(s.m.Raw)))
	if err != nil {
		return nil, err
	}

	for _, l := range append([]v1.Descriptor{mf.Config}, mf.Layers...) {
		if l.Digest == h {
			return &srcLayer{s: s, desc: l}, nil
		}
	}

	return nil, fmt.Errorf("layer %s: %w", h, ErrNotFound)
}

type srcLayer struct {
	s    *srcImage
	desc v1.Descriptor
}

func (l *srcLayer) Digest() (v1.Hash, error)            { return l.desc.Digest, nil }
func (l *srcLayer) Size() (int64, error)                { return l.desc.Size, nil }
func (l *srcLayer) MediaType() (types.MediaType, error) { return l.desc.MediaType, nil }
func (l *srcLayer) Compressed() (io.ReadCloser, error) {
	return l.s.src.blob(l.s.ctx, l.s.repo, l.desc.Digest)
}

// ReleaseDigests maps each Talos version of the plan (a tag of the imager)
// to the digests of its tagged release images (imager, installer-base or
// installer, the catalogs, talosctl-all) by mirror path: what a release
// lock of the copy records.
func (p *Plan) ReleaseDigests() map[string]map[string]string {
	out := map[string]map[string]string{}

	for _, it := range p.Items {
		if it.Repo != release.ImagerRepo {
			continue
		}

		for _, tag := range it.Tags {
			if _, err := release.ParseVersion(tag); err == nil {
				out[tag] = map[string]string{}
			}
		}
	}

	for _, it := range p.Items {
		switch it.Repo {
		case release.ImagerRepo, release.InstallerBaseRepo, release.InstallerRepo, release.ExtensionsRepo, release.OverlaysRepo, release.TalosctlAllRepo:
		default:
			continue
		}

		for _, tag := range it.Tags {
			if images, ok := out[tag]; ok {
				images[it.Repo] = it.Digest.String()
			}
		}
	}

	return out
}
