package imagecache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/internal/regerr"
)

// Resolver says where to fetch an upstream reference from: kiln's mirror
// (MirrorResolver) or the reference itself (DirectResolver).
type Resolver interface {
	// Resolve maps an input line such as "registry.k8s.io/pause:3.10" to the
	// reference to fetch and the remote options to fetch it with.
	Resolve(ref string) (name.Reference, []remote.Option, error)
}

// Verifier checks an image against the trust policy.
type Verifier interface {
	// Verify returns nil if the image at ref (as fetched, repository@digest)
	// is trusted; a refusal should match signing.ErrUntrusted.
	Verify(ctx context.Context, ref name.Digest) error
}

// VerifierFunc adapts a function, e.g. around signing.Verifier.Verify.
type VerifierFunc func(ctx context.Context, ref name.Digest) error

// Verify calls f.
func (f VerifierFunc) Verify(ctx context.Context, ref name.Digest) error { return f(ctx, ref) }

// Image is one resolved input line.
type Image struct {
	Ref      string // input line
	Source   string // where it was fetched, repository@digest
	Digest   string // digest of the manifest or index the reference names
	Platform string // "all" or the comma-separated platforms cached
}

// Plan is everything a cache will hold, resolved and verified: manifests
// (held in memory, they are small) and blobs by digest with where to fetch
// them. Create it with Plan; it is read-only afterwards.
type Plan struct {
	images    []Image
	sigs      []Image                 // signature manifests cached, Ref = tag
	manifests map[string][]byte       // tree path → raw manifest
	blobs     map[v1.Hash]*blobSource // digest → source
	inline    map[v1.Hash][]byte      // blobs already fetched while planning
	layout    Layout
	outer     v1.Platform
	platforms []string
	sigsOn    bool
	id        string
}

type blobSource struct {
	digest v1.Hash
	size   int64
	repo   name.Repository
	puller *remote.Puller
	local  artifacts.BlobOpener // nil: only the registry
}

// Images lists the resolved input lines, in input order.
func (p *Plan) Images() []Image { return slices.Clone(p.images) }

// ID is the content address of the cache: a sha256 over the sorted (ref,
// digest, platform) set of images and cached signatures, the platforms,
// the layout and whether signatures are cached. Two plans with the same ID
// write the same bytes (for OCI, given the same Options.Created).
func (p *Plan) ID() string { return p.id }

// Size is the number of bytes of the flat tree (manifests and blobs).
func (p *Plan) Size() int64 {
	var n int64
	for _, m := range p.manifests {
		n += int64(len(m))
	}

	for _, b := range p.blobs {
		n += b.size
	}

	return n
}

// planner carries the state of one Plan call.
type planner struct {
	ctx      context.Context
	r        Resolver
	v        Verifier
	opts     Options
	p        *Plan
	pullers  map[string]*remote.Puller
	verified map[string]bool
	sigsDone map[string]bool
}

// NewPlan resolves refs (input lines as talosctl reads them) for
// opts.Platforms, fetches every manifest (and the configs of single-platform
// images, to check their platform), verifies every image with v, and
// collects the blobs to fetch. A nil v verifies nothing and logs a warning.
// All failures are joined; each names its image (and platform) and matches
// ErrNotFound, ErrInvalid or the verifier's error. Nothing is written.
func NewPlan(ctx context.Context, refs []string, r Resolver, v Verifier, opts Options) (*Plan, error) {
	platforms, all, err := opts.platforms()
	if err != nil {
		return nil, err
	}

	if opts.Layout != OCI && opts.Layout != Flat {
		return nil, fmt.Errorf("layout %v: %w", opts.Layout, ErrInvalid)
	}

	if len(refs) == 0 {
		return nil, fmt.Errorf("no images: %w", ErrInvalid)
	}

	if v == nil {
		opts.logger().Warn("image cache: signature verification is DISABLED, images are not checked against the trust policy")
	}

	pl := &planner{
		ctx: ctx, r: r, v: v, opts: opts,
		p: &Plan{
			manifests: map[string][]byte{},
			blobs:     map[v1.Hash]*blobSource{},
			inline:    map[v1.Hash][]byte{},
			layout:    opts.Layout,
			outer:     opts.outerPlatform(),
			sigsOn:    opts.Signatures,
		},
		pullers:  map[string]*remote.Puller{},
		verified: map[string]bool{},
		sigsDone: map[string]bool{},
	}

	if all {
		pl.p.platforms = []string{AllPlatforms}
	} else {
		for _, pf := range platforms {
			pl.p.platforms = append(pl.p.platforms, pf.String())
		}
	}

	// Like talosctl: platforms outside, images inside, so that when two
	// lines write the same file the later one wins in the same way.
	var errs []error

	seen := map[string]bool{}
	lines := make([]string, 0, len(refs))

	for _, ref := range refs {
		ref = strings.TrimSpace(ref)
		if ref == "" || seen[ref] {
			continue
		}

		seen[ref] = true
		lines = append(lines, ref)
	}

	failed := map[string]bool{}
	images := map[string]*Image{}

	run := func(pf *v1.Platform) {
		for _, src := range lines {
			if failed[src] {
				continue
			}

			img, err := pl.image(src, pf, all)
			if err != nil {
				failed[src] = true
				errs = append(errs, err)

				continue
			}

			if prev, ok := images[src]; ok {
				prev.Platform += "," + img.Platform
			} else {
				images[src] = img
			}
		}
	}

	if all {
		run(nil)
	} else {
		for i := range platforms {
			run(&platforms[i])
		}
	}

	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	for _, src := range lines {
		pl.p.images = append(pl.p.images, *images[src])
	}

	pl.p.id = pl.p.computeID()

	return pl.p, nil
}

// image plans one input line for one platform (pf nil: all platforms).
func (pl *planner) image(src string, pf *v1.Platform, all bool) (*Image, error) {
	upstream, err := name.ParseReference(src)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w: %w", src, ErrInvalid, err)
	}

	fetch, ropts, err := pl.r.Resolve(src)
	if err != nil {
		return nil, fmt.Errorf("image %q: resolve: %w", src, err)
	}

	puller, err := pl.puller(fetch.Context(), ropts)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", src, err)
	}

	desc, err := puller.Get(pl.ctx, fetch)
	if err != nil {
		return nil, fmt.Errorf("image %q (from %s): %w", src, fetch, classify(err))
	}

	source := fetch.Context().Digest(desc.Digest.String())

	if !pl.verified[source.String()] {
		if pl.v != nil {
			if err := pl.v.Verify(pl.ctx, source); err != nil {
				return nil, fmt.Errorf("image %q (%s): %w", src, source, err)
			}
		}

		pl.verified[source.String()] = true
	}

	img := &Image{Ref: src, Source: source.String(), Digest: desc.Digest.String()}
	dir := repoDir(upstream.Context(), src)

	// The tag file: the tag of the reference, or for "repo[:tag]@sha256:..."
	// the part before "@" re-read as a tag (which is "latest" when it has
	// none: talosctl does the same).
	tag := ""
	if t, ok := upstream.(name.Tag); ok {
		tag = t.TagStr()
	} else if base, _, ok := strings.Cut(src, "@"); ok {
		if t, err := name.NewTag(base); err == nil {
			tag = t.TagStr()
		}
	}

	top := func() error {
		if tag != "" {
			pl.p.manifests[referencePath(dir, tag)] = desc.Manifest
		}

		pl.p.manifests[digestPath(dir, desc.Digest)] = desc.Manifest

		if pl.opts.Signatures {
			return pl.signatures(src, upstream.Context(), fetch.Context(), puller, desc.Digest)
		}

		return nil
	}

	isIndex := desc.MediaType == types.OCIImageIndex || desc.MediaType == types.DockerManifestList

	switch {
	case all && !isIndex:
		img.Platform = AllPlatforms
		if err := top(); err != nil {
			return nil, fmt.Errorf("image %q: %w", src, err)
		}

		return img, pl.manifest(src, dir, fetch.Context(), puller, desc.Digest, desc.Manifest, nil)

	case all:
		img.Platform = AllPlatforms

		idx, err := v1.ParseIndexManifest(strings.NewReader(string(desc.Manifest)))
		if err != nil {
			return nil, fmt.Errorf("image %q: index: %w", src, err)
		}

		first := true

		for _, child := range idx.Manifests {
			if child.Platform != nil && child.Platform.OS != "unknown" {
				// talosctl caches the index and signatures with the first
				// platform child, then the child picked by its platform.
				if first {
					if err := top(); err != nil {
						return nil, fmt.Errorf("image %q: %w", src, err)
					}

					first = false
				}

				pick, ok := pickChild(idx, *child.Platform)
				if !ok {
					return nil, fmt.Errorf("image %q: platform %s: %w", src, child.Platform, ErrNotFound)
				}

				child = pick
			}

			if err := pl.child(src, dir, fetch.Context(), puller, child); err != nil {
				return nil, err
			}
		}

		return img, nil

	case isIndex:
		img.Platform = pf.String()
		if err := top(); err != nil {
			return nil, fmt.Errorf("image %q: %w", src, err)
		}

		idx, err := v1.ParseIndexManifest(strings.NewReader(string(desc.Manifest)))
		if err != nil {
			return nil, fmt.Errorf("image %q: index: %w", src, err)
		}

		child, ok := pickChild(idx, *pf)
		if !ok {
			return nil, fmt.Errorf("image %q: platform %s: %w", src, pf, ErrNotFound)
		}

		return img, pl.child(src, dir, fetch.Context(), puller, child)

	default:
		img.Platform = pf.String()
		if err := top(); err != nil {
			return nil, fmt.Errorf("image %q: %w", src, err)
		}

		return img, pl.manifest(src, dir, fetch.Context(), puller, desc.Digest, desc.Manifest, pf)
	}
}

// pickChild is the first child of idx whose platform (linux/amd64 when it
// has none) matches want, as go-containerregistry's remote.WithPlatform
// picks it for talosctl: same OS and architecture, same variant and OS
// version when want has them, and want's features among the child's.
func pickChild(idx *v1.IndexManifest, want v1.Platform) (v1.Descriptor, bool) {
	for _, d := range idx.Manifests {
		have := v1.Platform{OS: "linux", Architecture: "amd64"}
		if d.Platform != nil {
			have = *d.Platform
		}

		if have.OS == want.OS && have.Architecture == want.Architecture && have.Satisfies(want) {
			return d, true
		}
	}

	return v1.Descriptor{}, false
}

// child fetches a child manifest of an index and plans it.
func (pl *planner) child(src, dir string, repo name.Repository, puller *remote.Puller, d v1.Descriptor) error {
	if d.MediaType == types.OCIImageIndex || d.MediaType == types.DockerManifestList {
		return fmt.Errorf("image %q: child %s is an index: %w", src, d.Digest, ErrInvalid)
	}

	got, err := puller.Get(pl.ctx, repo.Digest(d.Digest.String()))
	if err != nil {
		return fmt.Errorf("image %q: child %s: %w", src, d.Digest, classify(err))
	}

	return pl.manifest(src, dir, repo, puller, d.Digest, got.Manifest, nil)
}

// manifest plans an image manifest: its digest file, its config and layers.
// With want set (a single-platform image asked for one platform), the
// config's platform must match it when the config names one.
func (pl *planner) manifest(src, dir string, repo name.Repository, puller *remote.Puller, dgst v1.Hash, raw []byte, want *v1.Platform) error {
	m, err := v1.ParseManifest(strings.NewReader(string(raw)))
	if err != nil {
		return fmt.Errorf("image %q: manifest %s: %w: %w", src, dgst, ErrInvalid, err)
	}

	if m.SchemaVersion != 2 {
		return fmt.Errorf("image %q: manifest %s: schema %d unsupported: %w", src, dgst, m.SchemaVersion, ErrInvalid)
	}

	// talosctl names the file by the hash of the bytes.
	sum := sha256.Sum256(raw)
	pl.p.manifests[digestPath(dir, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])})] = raw

	if want != nil {
		cfg, err := pl.fetchSmall(repo, puller, m.Config)
		if err != nil {
			return fmt.Errorf("image %q: config %s: %w", src, m.Config.Digest, err)
		}

		var c struct {
			OS           string `json:"os"`
			Architecture string `json:"architecture"`
			Variant      string `json:"variant"`
		}

		if err := json.Unmarshal(cfg, &c); err == nil && c.OS != "" && c.Architecture != "" {
			have := v1.Platform{OS: c.OS, Architecture: c.Architecture, Variant: c.Variant}
			if have.OS != want.OS || have.Architecture != want.Architecture || (want.Variant != "" && have.Variant != want.Variant) {
				return fmt.Errorf("image %q: platform %s: %w (the image is %s only)", src, want, ErrNotFound, have)
			}
		}
	}

	pl.addBlob(repo, puller, m.Config)

	for _, l := range m.Layers {
		pl.addBlob(repo, puller, l)
	}

	return nil
}

func (pl *planner) addBlob(repo name.Repository, puller *remote.Puller, d v1.Descriptor) {
	if _, ok := pl.p.blobs[d.Digest]; ok {
		return
	}

	b := &blobSource{digest: d.Digest, size: d.Size, repo: repo, puller: puller}
	if lb, ok := pl.r.(LocalBlobs); ok {
		b.local = lb.Blobs()
	}

	pl.p.blobs[d.Digest] = b
}

// fetchSmall reads a small blob (a config) and keeps it for Write.
func (pl *planner) fetchSmall(repo name.Repository, puller *remote.Puller, d v1.Descriptor) ([]byte, error) {
	if b, ok := pl.p.inline[d.Digest]; ok {
		return b, nil
	}

	const maxConfig = 16 << 20
	if d.Size > maxConfig {
		return nil, fmt.Errorf("config of %d bytes: %w", d.Size, ErrInvalid)
	}

	l, err := puller.Layer(pl.ctx, repo.Digest(d.Digest.String()))
	if err != nil {
		return nil, classify(err)
	}

	rc, err := l.Compressed()
	if err != nil {
		return nil, classify(err)
	}
	defer rc.Close()

	var sb strings.Builder
	if _, err := copyVerified(&sb, rc, d.Digest, d.Size, make([]byte, 64<<10)); err != nil {
		return nil, classify(err)
	}

	b := []byte(sb.String())
	pl.p.inline[d.Digest] = b

	return b, nil
}

// signatures caches the cosign signature of digest d: the tag
// sha256-<hex>.sig, else sha256-<hex> (the referrers tag), as talosctl
// does: written under the upstream repository, fetched from the source's.
func (pl *planner) signatures(src string, upstream, repo name.Repository, puller *remote.Puller, d v1.Hash) error {
	key := repo.String() + "@" + d.String()
	if pl.sigsDone[key] {
		return nil
	}

	pl.sigsDone[key] = true
	dir := repoDir(upstream, src)
	base := d.Algorithm + "-" + d.Hex

	for _, tag := range []string{base + ".sig", base} {
		desc, err := puller.Get(pl.ctx, repo.Tag(tag))
		if regerr.IsNotFound(err) {
			continue
		}

		if err != nil {
			return fmt.Errorf("signature %s: %w", repo.Tag(tag), classify(err))
		}

		pl.p.manifests[referencePath(dir, tag)] = desc.Manifest
		pl.p.manifests[digestPath(dir, desc.Digest)] = desc.Manifest
		pl.p.sigs = append(pl.p.sigs, Image{Ref: upstream.Tag(tag).String(), Source: repo.Digest(desc.Digest.String()).String(), Digest: desc.Digest.String()})

		if desc.MediaType == types.OCIImageIndex || desc.MediaType == types.DockerManifestList {
			idx, err := v1.ParseIndexManifest(strings.NewReader(string(desc.Manifest)))
			if err != nil {
				return fmt.Errorf("signature %s: %w", repo.Tag(tag), err)
			}

			for _, c := range idx.Manifests {
				if err := pl.child(src, dir, repo, puller, c); err != nil {
					return fmt.Errorf("signature %s: %w", repo.Tag(tag), err)
				}
			}

			return nil
		}

		return pl.manifest(src, dir, repo, puller, desc.Digest, desc.Manifest, nil)
	}

	return nil
}

// puller returns one puller per source repository, so that the ping and
// token of a registry are reused.
func (pl *planner) puller(repo name.Repository, ropts []remote.Option) (*remote.Puller, error) {
	if p, ok := pl.pullers[repo.String()]; ok {
		return p, nil
	}

	p, err := remote.NewPuller(ropts...)
	if err != nil {
		return nil, fmt.Errorf("remote options: %w", err)
	}

	pl.pullers[repo.String()] = p

	return p, nil
}

func (p *Plan) computeID() string {
	type entry struct {
		Ref, Digest, Platform string
	}

	var entries []entry
	for _, i := range p.images {
		entries = append(entries, entry{i.Ref, i.Digest, i.Platform})
	}

	for _, s := range p.sigs {
		entries = append(entries, entry{s.Ref, s.Digest, ""})
	}

	sort.Slice(entries, func(i, j int) bool {
		a, b := entries[i], entries[j]
		if a.Ref != b.Ref {
			return a.Ref < b.Ref
		}

		if a.Digest != b.Digest {
			return a.Digest < b.Digest
		}

		return a.Platform < b.Platform
	})

	entries = slices.Compact(entries)

	doc := struct {
		Version    int      `json:"v"`
		Layout     string   `json:"layout"`
		Platforms  []string `json:"platforms"`
		Signatures bool     `json:"signatures"`
		Images     []entry  `json:"images"`
	}{1, p.layout.String(), p.platforms, p.sigsOn, entries}

	b, _ := json.Marshal(doc) //nolint:errchkjson // plain strings only

	sum := sha256.Sum256(b)

	return hex.EncodeToString(sum[:])
}

// classify adds ErrNotFound to a registry's not-found error.
func classify(err error) error {
	if regerr.IsNotFound(err) {
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	}

	return err
}
