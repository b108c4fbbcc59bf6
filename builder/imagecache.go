package builder

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/internal/iox"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// CacheRequest asks for an image cache built from the mirror.
type CacheRequest struct {
	// Images as upstream names them.
	Images []string
	// KubernetesForTalos adds that Talos version's Kubernetes images.
	KubernetesForTalos string
	// Platforms; empty is linux/amd64.
	Platforms []string
	// Layout is "oci" (default) or "flat".
	Layout string
}

// CacheResult is a built image cache: a tar of its layout or tree.
type CacheResult struct {
	ID       string
	Images   int
	Asset    storage.Asset
	CacheHit bool
}

// ErrInvalidCacheRequest marks a cache request that names nothing to cache
// or a bad layout.
var ErrInvalidCacheRequest = errors.New("invalid image cache request")

// cacheKey is the asset key of an image cache: its content address.
func cacheKey(id string) string { return "imagecache-" + id }

// ImageCache builds (or finds) the image cache req describes. Every image
// is resolved in the mirror and verified before anything is written; the
// result is content-addressed, so the same request is built once.
func (b *Builder) ImageCache(ctx context.Context, req CacheRequest, progress func(Event)) (*CacheResult, error) {
	if progress == nil {
		progress = func(Event) {}
	}

	// As in Build: nothing is sent before the plan, which is what can refuse.
	plan, opts, err := b.planCacheRequest(ctx, req)
	if err != nil {
		return nil, err
	}

	progress(Event{Phase: "resolve", Message: fmt.Sprintf("resolved %d images", len(plan.Images()))})

	a, hit, err := b.cached(ctx, cacheKey(plan.ID()), progress, func(ctx context.Context, emit func(Event)) error {
		return b.writeCache(ctx, plan, opts, emit)
	})
	if err != nil {
		return nil, err
	}

	return &CacheResult{ID: plan.ID(), Images: len(plan.Images()), Asset: a, CacheHit: hit}, nil
}

// LookupImageCache finds the image cache req describes without building
// it: storage.ErrNotFound when it is not built. Its images are resolved
// and verified as for ImageCache, since they make its ID.
func (b *Builder) LookupImageCache(ctx context.Context, req CacheRequest) (storage.Asset, error) {
	plan, _, err := b.planCacheRequest(ctx, req)
	if err != nil {
		return nil, err
	}

	return b.deps.Assets.Open(ctx, cacheKey(plan.ID()))
}

// planCacheRequest checks req and resolves its images.
func (b *Builder) planCacheRequest(ctx context.Context, req CacheRequest) (*imagecache.Plan, imagecache.Options, error) {
	opts := imagecache.DefaultOptions()
	refs := append([]string(nil), req.Images...)

	if req.KubernetesForTalos != "" {
		v, err := release.ParseVersion(req.KubernetesForTalos)
		if err != nil {
			return nil, opts, fmt.Errorf("%w: talos %v: want vMAJOR.MINOR.PATCH", ErrInvalidCacheRequest, err)
		}

		k8s, err := release.KubernetesImages(v)
		if err != nil {
			return nil, opts, fmt.Errorf("%w: %v", ErrInvalidCacheRequest, err)
		}

		refs = append(refs, k8s...)
	}

	if len(refs) == 0 {
		return nil, opts, fmt.Errorf("%w: no images: give images and/or kubernetes_for_talos", ErrInvalidCacheRequest)
	}

	opts.Logger = b.deps.Logger

	if len(req.Platforms) > 0 {
		opts.Platforms = req.Platforms
	}

	if req.Layout != "" {
		l, err := imagecache.ParseLayout(req.Layout)
		if err != nil {
			return nil, opts, fmt.Errorf("%w: %v", ErrInvalidCacheRequest, err)
		}

		opts.Layout = l
	}

	plan, err := b.planCache(ctx, refs, opts)

	return plan, opts, err
}

// OpenImageCache opens a built cache by ID.
func (b *Builder) OpenImageCache(ctx context.Context, id string) (storage.Asset, error) {
	if len(id) != 64 || strings.Trim(id, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("image cache %q: %w", id, storage.ErrNotFound)
	}

	return b.deps.Assets.Open(ctx, cacheKey(id))
}

// planCache resolves refs in the mirror and verifies every image.
func (b *Builder) planCache(ctx context.Context, refs []string, opts imagecache.Options) (*imagecache.Plan, error) {
	return imagecache.NewPlan(ctx, refs, imagecache.MirrorResolver{Source: b.deps.Artifacts.Source()},
		b.deps.Artifacts.ImageChecker(), opts)
}

// writeCacheTree writes plan into dir, a scratch directory that is read
// back at once into the asset: a sync here would write to disk what is
// thrown away (the asset is not synced either; a power loss makes it fail
// its CRC check and be built again, see storage's Commit).
func writeCacheTree(ctx context.Context, plan *imagecache.Plan, opts imagecache.Options, dir string, emit func(Event)) error {
	opts.NoSync = true
	opts.Progress = func(e imagecache.Event) {
		emit(Event{Phase: "fetch", Artifact: e.Image, Message: "image cache: " + string(e.Phase), Done: e.Done, Total: e.Total})
	}

	_, err := imagecache.Write(ctx, plan, dir, opts)

	return err
}

func (b *Builder) writeCache(ctx context.Context, plan *imagecache.Plan, opts imagecache.Options, emit func(Event)) error {
	tmp, err := b.scratch("imagecache-")
	if err != nil {
		return err
	}

	defer os.RemoveAll(tmp) //nolint:errcheck // scratch space

	dir := filepath.Join(tmp, "cache")
	if err := writeCacheTree(ctx, plan, opts, dir, emit); err != nil {
		return err
	}

	w, err := b.deps.Assets.Create(ctx, cacheKey(plan.ID()))
	if err != nil {
		return err
	}

	emit(Event{Phase: "publish", Message: "packing the image cache"})

	if err := tarTree(ctx, w, dir); err != nil {
		w.Cancel() //nolint:errcheck // already failing

		return err
	}

	return w.Commit()
}

// tarTree writes dir as a tar with sorted entries and nothing of the
// build's own (owner, umask, time): kilns that build the same cache ID
// serve the same bytes, with the same SHA-256.
func tarTree(ctx context.Context, w io.Writer, dir string) error {
	epoch := time.Unix(SourceDateEpoch, 0).UTC()

	tw := tar.NewWriter(w)

	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || path == dir {
			return err
		}

		info, err := d.Info()
		if err != nil {
			return err
		}

		rel, err := filepath.Rel(dir, path)
		if err != nil {
			return err
		}

		hdr := &tar.Header{Name: filepath.ToSlash(rel), Mode: 0o644, ModTime: epoch, Typeflag: tar.TypeReg, Size: info.Size()}

		switch {
		case d.IsDir():
			hdr.Name += "/"
			hdr.Mode, hdr.Typeflag, hdr.Size = 0o755, tar.TypeDir, 0
		case !info.Mode().IsRegular():
			return fmt.Errorf("image cache: %s is not a regular file", rel)
		}

		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}

		if d.IsDir() {
			return nil
		}

		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()

		_, err = iox.Copy(ctx, tw, f)

		return err
	})
	if err != nil {
		return err
	}

	return tw.Close()
}

// withInstaller adds the schematic's installer to the image cache of an
// ISO or disk (refs), with the resolver and checker that read it: the
// installer of the same schematic and version, published in kiln's
// registry (built first if it is not there, single-flight with its pulls),
// under the reference kiln's air-gap patch installs from. Without a
// publisher (kiln serve --no-installer-in-cache, --registry, or a builder
// outside a server), and for platforms other than metal, refs are kept.
//
// Only a build (build) builds and publishes the installer; a plan that is
// only looked up (HEAD, a URL) takes it if it is published, and is marked
// unpublished otherwise.
func (b *Builder) withInstaller(ctx context.Context, p *Plan, refs []string, build bool) ([]string, imagecache.Resolver, signing.Checker, error) {
	mirror := imagecache.MirrorResolver{Source: b.deps.Artifacts.Source()}
	check := b.deps.Artifacts.ImageChecker()

	pub := b.installers.Load()
	if pub == nil {
		return refs, mirror, check, nil
	}

	if p.Output.Platform != "metal" {
		b.deps.Logger.InfoContext(ctx, "image cache without the installer: kiln builds metal installers only",
			"schematic", p.SchematicID, "version", p.Version, "platform", p.Output.Platform)

		return refs, mirror, check, nil
	}

	inst, err := (*pub).PublishInstaller(ctx, InstallerRequest{SchematicID: p.SchematicID, Version: p.Version.String(), Platform: "metal"}, build)
	if !build && errors.Is(err, storage.ErrNotFound) {
		p.unpublished = true

		return refs, mirror, check, nil
	}

	if err != nil {
		return nil, nil, nil, fmt.Errorf("the installer (kiln serve --no-installer-in-cache leaves it out): %w", err)
	}

	// Tag and digest: the cache keeps the tag (what the node pulls) and the
	// plan reads the digest kiln's signature was checked over.
	line := inst.Public.String() + "@" + inst.Source.DigestStr()
	refs = append(slices.Clone(refs), line)

	return refs, installerResolver{MirrorResolver: mirror, line: line, inst: inst},
		installerChecker{Checker: check, repo: inst.Source.Context().Name(), inst: inst.Check}, nil
}

// installerResolver reads the installer's line from kiln's registry and
// every other line from the mirror.
type installerResolver struct {
	imagecache.MirrorResolver
	line string
	inst *PublishedInstaller
}

func (r installerResolver) Resolve(ref string) (name.Reference, []remote.Option, error) {
	if ref == r.line {
		return r.inst.Source, r.inst.Remote, nil
	}

	return r.MirrorResolver.Resolve(ref)
}

// installerChecker checks an image of the installer's repository (the
// installer index the plan reads) with the publisher's checker, kiln's
// signature, and every other image with the trust policy.
type installerChecker struct {
	signing.Checker
	repo string
	inst signing.Checker
}

func (c installerChecker) Verify(ctx context.Context, ref name.Digest) (signing.Verified, error) {
	if ref.Context().Name() == c.repo {
		return c.inst.Verify(ctx, ref)
	}

	return c.Checker.Verify(ctx, ref)
}
