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
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/internal/regerr"
	"github.com/kiln-dev/kiln/signing"
)

// Resolver says where to fetch an upstream reference from: kiln's mirror
// (MirrorResolver) or the reference itself (DirectResolver). NewPlan calls
// it from several goroutines.
type Resolver interface {
	// Resolve maps an input line such as "registry.k8s.io/pause:3.10" to the
	// reference to fetch and the remote options to fetch it with.
	Resolve(ref string) (name.Reference, []remote.Option, error)
}

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

// planner carries the state of one NewPlan call that its tasks share:
// every fetch and verification is done once, whichever task asks first.
type planner struct {
	ctx  context.Context
	r    Resolver
	v    signing.Checker
	opts Options

	mu       sync.Mutex
	pullers  map[string]*remote.Puller
	gets     map[string]*result[*remote.Descriptor]
	configs  map[v1.Hash]*result[[]byte]
	verified map[string]*result[struct{}]
}

// result is a value computed once and shared.
type result[T any] struct {
	once sync.Once
	v    T
	err  error
}

// once runs f the first time key is asked for in m, and returns its result
// to every caller.
func once[K comparable, T any](mu *sync.Mutex, m map[K]*result[T], key K, f func() (T, error)) (T, error) {
	mu.Lock()

	r, ok := m[key]
	if !ok {
		r = &result[T]{}
		m[key] = r
	}

	mu.Unlock()

	r.once.Do(func() { r.v, r.err = f() })

	return r.v, r.err
}

// task plans one input line for one platform. Tasks run in parallel; each
// records what it adds to the plan, and the records are applied in input
// order, so that the plan is the one planning line by line would give.
type task struct {
	*planner
	rec *record
}

// record is what a task adds to the plan, in order.
type record struct{ steps []step }

// step is one addition: a manifest file, a blob, a cached signature, or
// the signatures of one image (applied once per source digest, from the
// first task in input order that records them).
type step struct {
	path   string
	data   []byte
	blob   *blobSource
	sig    *Image
	sigKey string
	sigs   *record
}

func (r *record) manifest(path string, data []byte) {
	r.steps = append(r.steps, step{path: path, data: data})
}

// apply adds r to p: a later manifest file replaces an earlier one, the
// first source of a blob is kept.
func (p *Plan) apply(r *record, sigsDone map[string]bool) {
	for _, s := range r.steps {
		switch {
		case s.sigs != nil:
			if !sigsDone[s.sigKey] {
				sigsDone[s.sigKey] = true
				p.apply(s.sigs, sigsDone)
			}
		case s.blob != nil:
			if _, ok := p.blobs[s.blob.digest]; !ok {
				p.blobs[s.blob.digest] = s.blob
			}
		case s.sig != nil:
			p.sigs = append(p.sigs, *s.sig)
		default:
			p.manifests[s.path] = s.data
		}
	}
}

// NewPlan resolves refs (input lines as talosctl reads them) for
// opts.Platforms, fetches every manifest (and the configs of single-platform
// images, to check their platform), verifies every image with v, and
// collects the blobs to fetch. A nil v verifies nothing and logs a warning.
// All failures are joined; each names its image (and platform) and matches
// ErrNotFound, ErrInvalid or the verifier's error. Nothing is written.
// Up to opts.Jobs images are resolved at once; the plan does not depend on
// the order the answers come in. opts.Progress receives a PhaseResolve
// event per image (and platform) as it is resolved and verified.
// v is called from several goroutines, once per image, with the image as
// fetched (repository@digest).
func NewPlan(ctx context.Context, refs []string, r Resolver, v signing.Checker, opts Options) (*Plan, error) {
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
		pullers:  map[string]*remote.Puller{},
		gets:     map[string]*result[*remote.Descriptor]{},
		configs:  map[v1.Hash]*result[[]byte]{},
		verified: map[string]*result[struct{}]{},
	}

	p := &Plan{
		manifests: map[string][]byte{},
		blobs:     map[v1.Hash]*blobSource{},
		inline:    map[v1.Hash][]byte{},
		layout:    opts.Layout,
		outer:     opts.outerPlatform(),
		sigsOn:    opts.Signatures,
	}

	if all {
		p.platforms = []string{AllPlatforms}
	} else {
		for _, pf := range platforms {
			p.platforms = append(p.platforms, pf.String())
		}
	}

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

	// Like talosctl: platforms outside, images inside, so that when two
	// lines write the same file the later one wins in the same way.
	type planned struct {
		src string
		pf  *v1.Platform
		rec record
		img *Image
		err error
	}

	var tasks []*planned

	if all {
		for _, src := range lines {
			tasks = append(tasks, &planned{src: src})
		}
	} else {
		for i := range platforms {
			for _, src := range lines {
				tasks = append(tasks, &planned{src: src, pf: &platforms[i]})
			}
		}
	}

	// Planning is round trips, not bytes: overlap them.
	var g errgroup.Group
	g.SetLimit(opts.jobs())

	var progress sync.Mutex

	for _, t := range tasks {
		g.Go(func() error {
			t.img, t.err = (&task{planner: pl, rec: &t.rec}).image(t.src, t.pf, all)

			if t.err == nil && opts.Progress != nil {
				progress.Lock()
				opts.Progress(Event{Phase: PhaseResolve, Image: t.src, Digest: t.img.Digest})
				progress.Unlock()
			}

			return nil
		})
	}

	g.Wait() //nolint:errcheck // tasks keep their own errors

	var errs []error

	failed := map[string]bool{}
	images := map[string]*Image{}
	sigsDone := map[string]bool{}

	for _, t := range tasks {
		switch {
		case failed[t.src]:
			// One error per line, from its first platform that failed.
		case t.err != nil:
			failed[t.src] = true
			errs = append(errs, t.err)
		default:
			p.apply(&t.rec, sigsDone)

			if prev, ok := images[t.src]; ok {
				prev.Platform += "," + t.img.Platform
			} else {
				images[t.src] = t.img
			}
		}
	}

	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	for _, src := range lines {
		p.images = append(p.images, *images[src])
	}

	for d, c := range pl.configs {
		if c.err == nil {
			p.inline[d] = c.v
		}
	}

	p.id = p.computeID()

	return p, nil
}

// image plans one input line for one platform (pf nil: all platforms).
func (t *task) image(src string, pf *v1.Platform, all bool) (*Image, error) {
	upstream, err := name.ParseReference(src)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w: %w", src, ErrInvalid, err)
	}

	fetch, ropts, err := t.r.Resolve(src)
	if err != nil {
		return nil, fmt.Errorf("image %q: resolve: %w", src, err)
	}

	puller, err := t.puller(fetch.Context(), ropts)
	if err != nil {
		return nil, fmt.Errorf("image %q: %w", src, err)
	}

	desc, err := t.get(puller, fetch)
	if err != nil {
		return nil, fmt.Errorf("image %q (from %s): %w", src, fetch, classify(err))
	}

	source := fetch.Context().Digest(desc.Digest.String())

	if t.v != nil {
		_, err := once(&t.mu, t.verified, source.String(), func() (struct{}, error) {
			_, err := t.v.Verify(t.ctx, source)

			return struct{}{}, err
		})
		if err != nil {
			return nil, fmt.Errorf("image %q (%s): %w", src, source, err)
		}
	}

	img := &Image{Ref: src, Source: source.String(), Digest: desc.Digest.String()}
	dir := repoDir(upstream.Context(), src)

	// The tag file: the tag of the reference, or for "repo[:tag]@sha256:..."
	// the part before "@" re-read as a tag (which is "latest" when it has
	// none: talosctl does the same).
	tag := ""
	if tg, ok := upstream.(name.Tag); ok {
		tag = tg.TagStr()
	} else if base, _, ok := strings.Cut(src, "@"); ok {
		if tg, err := name.NewTag(base); err == nil {
			tag = tg.TagStr()
		}
	}

	// The signatures are fetched while the image's manifests are.
	var sigs chan error

	top := func() {
		if tag != "" {
			t.rec.manifest(referencePath(dir, tag), desc.Manifest)
		}

		t.rec.manifest(digestPath(dir, desc.Digest), desc.Manifest)

		if t.opts.Signatures {
			st := t.signatureTask(fetch.Context(), desc.Digest)
			sigs = make(chan error, 1)

			go func() { sigs <- st.signatures(src, upstream.Context(), fetch.Context(), puller, desc.Digest) }()
		}
	}

	img, err = t.manifests(src, pf, all, img, desc, dir, fetch.Context(), puller, top)

	if sigs != nil {
		if serr := <-sigs; serr != nil {
			return nil, fmt.Errorf("image %q: %w", src, serr)
		}
	}

	return img, err
}

// manifests plans the manifests below desc, the top manifest of an input
// line; top records desc itself, and is called before the first child.
func (t *task) manifests(src string, pf *v1.Platform, all bool, img *Image, desc *remote.Descriptor, dir string, repo name.Repository, puller *remote.Puller, top func()) (*Image, error) {

	isIndex := desc.MediaType == types.OCIImageIndex || desc.MediaType == types.DockerManifestList

	switch {
	case all && !isIndex:
		img.Platform = AllPlatforms
		top()

		return img, t.manifest(src, dir, repo, puller, desc.Digest, desc.Manifest, nil)

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
					top()

					first = false
				}

				pick, ok := pickChild(idx, *child.Platform)
				if !ok {
					return nil, fmt.Errorf("image %q: platform %s: %w", src, child.Platform, ErrNotFound)
				}

				child = pick
			}

			if err := t.child(src, dir, repo, puller, child); err != nil {
				return nil, err
			}
		}

		return img, nil

	case isIndex:
		img.Platform = pf.String()
		top()

		idx, err := v1.ParseIndexManifest(strings.NewReader(string(desc.Manifest)))
		if err != nil {
			return nil, fmt.Errorf("image %q: index: %w", src, err)
		}

		child, ok := pickChild(idx, *pf)
		if !ok {
			return nil, fmt.Errorf("image %q: platform %s: %w", src, pf, ErrNotFound)
		}

		return img, t.child(src, dir, repo, puller, child)

	default:
		img.Platform = pf.String()
		top()

		return img, t.manifest(src, dir, repo, puller, desc.Digest, desc.Manifest, pf)
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
func (t *task) child(src, dir string, repo name.Repository, puller *remote.Puller, d v1.Descriptor) error {
	if d.MediaType == types.OCIImageIndex || d.MediaType == types.DockerManifestList {
		return fmt.Errorf("image %q: child %s is an index: %w", src, d.Digest, ErrInvalid)
	}

	got, err := t.get(puller, repo.Digest(d.Digest.String()))
	if err != nil {
		return fmt.Errorf("image %q: child %s: %w", src, d.Digest, classify(err))
	}

	return t.manifest(src, dir, repo, puller, d.Digest, got.Manifest, nil)
}

// manifest plans an image manifest: its digest file, its config and layers.
// With want set (a single-platform image asked for one platform), the
// config's platform must match it when the config names one.
func (t *task) manifest(src, dir string, repo name.Repository, puller *remote.Puller, dgst v1.Hash, raw []byte, want *v1.Platform) error {
	m, err := v1.ParseManifest(strings.NewReader(string(raw)))
	if err != nil {
		return fmt.Errorf("image %q: manifest %s: %w: %w", src, dgst, ErrInvalid, err)
	}

	if m.SchemaVersion != 2 {
		return fmt.Errorf("image %q: manifest %s: schema %d unsupported: %w", src, dgst, m.SchemaVersion, ErrInvalid)
	}

	// talosctl names the file by the hash of the bytes.
	sum := sha256.Sum256(raw)
	t.rec.manifest(digestPath(dir, v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}), raw)

	if want != nil {
		cfg, err := t.fetchSmall(repo, puller, m.Config)
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

	t.addBlob(repo, puller, m.Config)

	for _, l := range m.Layers {
		t.addBlob(repo, puller, l)
	}

	return nil
}

func (t *task) addBlob(repo name.Repository, puller *remote.Puller, d v1.Descriptor) {
	b := &blobSource{digest: d.Digest, size: d.Size, repo: repo, puller: puller}
	if lb, ok := t.r.(LocalBlobs); ok {
		b.local = lb.Blobs()
	}

	t.rec.steps = append(t.rec.steps, step{blob: b})
}

// fetchSmall reads a small blob (a config) and keeps it for Write.
func (pl *planner) fetchSmall(repo name.Repository, puller *remote.Puller, d v1.Descriptor) ([]byte, error) {
	return once(&pl.mu, pl.configs, d.Digest, func() ([]byte, error) {
		return pl.fetchConfig(repo, puller, d)
	})
}

func (pl *planner) fetchConfig(repo name.Repository, puller *remote.Puller, d v1.Descriptor) ([]byte, error) {
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

	return []byte(sb.String()), nil
}

// get fetches the manifest ref names, once per NewPlan.
func (pl *planner) get(puller *remote.Puller, ref name.Reference) (*remote.Descriptor, error) {
	return once(&pl.mu, pl.gets, ref.String(), func() (*remote.Descriptor, error) {
		return puller.Get(pl.ctx, ref)
	})
}

// signatureTask records, at this point of t's record, the signatures of
// image repo@d, to be planned by the task it returns (on its own
// goroutine). Recorded apart: the signatures of a source image are cached
// once, by the first line (in input order) that names it.
func (t *task) signatureTask(repo name.Repository, d v1.Hash) *task {
	sigs := &record{}
	t.rec.steps = append(t.rec.steps, step{sigKey: repo.String() + "@" + d.String(), sigs: sigs})

	return &task{planner: t.planner, rec: sigs}
}

// signatures caches the cosign signature of digest d: the tag
// sha256-<hex>.sig, else sha256-<hex> (the referrers tag), as talosctl
// does: written under the upstream repository, fetched from the source's.
func (t *task) signatures(src string, upstream, repo name.Repository, puller *remote.Puller, d v1.Hash) error {
	dir := repoDir(upstream, src)
	base := d.Algorithm + "-" + d.Hex

	for _, tag := range []string{base + ".sig", base} {
		desc, err := t.get(puller, repo.Tag(tag))
		if regerr.IsNotFound(err) {
			continue
		}

		if err != nil {
			return fmt.Errorf("signature %s: %w", repo.Tag(tag), classify(err))
		}

		t.rec.manifest(referencePath(dir, tag), desc.Manifest)
		t.rec.manifest(digestPath(dir, desc.Digest), desc.Manifest)
		t.rec.steps = append(t.rec.steps, step{sig: &Image{Ref: upstream.Tag(tag).String(), Source: repo.Digest(desc.Digest.String()).String(), Digest: desc.Digest.String()}})

		if desc.MediaType == types.OCIImageIndex || desc.MediaType == types.DockerManifestList {
			idx, err := v1.ParseIndexManifest(strings.NewReader(string(desc.Manifest)))
			if err != nil {
				return fmt.Errorf("signature %s: %w", repo.Tag(tag), err)
			}

			for _, c := range idx.Manifests {
				if err := t.child(src, dir, repo, puller, c); err != nil {
					return fmt.Errorf("signature %s: %w", repo.Tag(tag), err)
				}
			}

			return nil
		}

		return t.manifest(src, dir, repo, puller, desc.Digest, desc.Manifest, nil)
	}

	return nil
}

// puller returns one puller per source repository, so that the ping and
// token of a registry are reused.
func (pl *planner) puller(repo name.Repository, ropts []remote.Option) (*remote.Puller, error) {
	pl.mu.Lock()
	defer pl.mu.Unlock()

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
