package builder

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/internal/echo"
	"github.com/kiln-dev/kiln/internal/flight"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/storage"
)

// Config tunes a Builder.
type Config struct {
	// DataDir holds the builds' scratch space, <DataDir>/tmp.
	DataDir string
	// MaxConcurrency caps builds running at once; the rest queue.
	MaxConcurrency int
	// MaxQueue bounds the builds waiting for a slot: a new build beyond it
	// is refused with a BusyError. 0 is DefaultMaxQueue.
	MaxQueue int
	// BuildTimeout bounds one build.
	BuildTimeout time.Duration
	// FactoryURL is kiln's external URL: the schematic extension's author
	// says "Image Factory (<url>)", as Talos and Omni expect.
	FactoryURL string
}

// Deps are what a Builder reads and writes.
type Deps struct {
	Schematics storage.Schematics
	// Artifacts hands out the verified pieces of releases builds read.
	Artifacts *artifacts.Manager
	Assets    storage.Assets
	Logger    *slog.Logger
}

// DefaultMaxQueue is the default bound of builds waiting for a slot.
const DefaultMaxQueue = 32

// ErrBusy marks a build refused because every slot is taken and the queue
// is full; the server answers it with 503 and Retry-After.
var ErrBusy = errors.New("build queue is full")

// BusyError is a build refused for load; RetryAfter is a hint for clients.
type BusyError struct {
	Running, Queued int
	RetryAfter      time.Duration
}

func (e *BusyError) Error() string {
	return fmt.Sprintf("kiln is busy: %d builds running and %d waiting for a slot (the most it queues); retry in %s",
		e.Running, e.Queued, e.RetryAfter)
}

// Is makes every BusyError match ErrBusy.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }

// busyRetryAfter is what a refused client is told to wait: about one short
// build, so a burst is spread rather than retried at once.
const busyRetryAfter = 10 * time.Second

// Builder builds boot assets.
type Builder struct {
	cfg  Config
	deps Deps
	// flights runs each build once for every request that waits for it,
	// in one of MaxConcurrency slots.
	flights *flight.Group[Event]

	// builds counts assemblies run, for tests and metrics.
	builds atomic.Int64
	// sums are the PE checksum shares of release boot files (bootpieces.go).
	sums checksums
	// installers, when set, puts installers into kiln's registry, so that
	// an image cache can carry the schematic's own (SetInstallerPublisher).
	installers atomic.Pointer[InstallerPublisher]
}

// New returns a builder whose builds end at the latest when life does. It
// removes what builds a crash interrupted left behind (scratch directories
// under <DataDir>/tmp): the caller owns the data directory, so no other
// build can be using them.
func New(life context.Context, cfg Config, deps Deps) *Builder {
	cleanScratch(cfg.DataDir, deps.Logger)

	if cfg.MaxConcurrency <= 0 {
		cfg.MaxConcurrency = 2
	}

	if cfg.BuildTimeout <= 0 {
		cfg.BuildTimeout = 20 * time.Minute
	}

	if cfg.MaxQueue <= 0 {
		cfg.MaxQueue = DefaultMaxQueue
	}

	return &Builder{
		cfg: cfg, deps: deps,
		flights: flight.New[Event](flight.Config{
			What: "build", MaxRunning: cfg.MaxConcurrency, MaxQueue: cfg.MaxQueue,
			Timeout: cfg.BuildTimeout, Life: life, Logger: deps.Logger,
		}),
	}
}

// legacyArtifactsDir is where kilns before the asset store kept extracted
// imagers, unbounded; they are now entries of the asset store.
const legacyArtifactsDir = "artifacts"

// cleanScratch removes <dataDir>/tmp's contents and <dataDir>/artifacts.
func cleanScratch(dataDir string, logger *slog.Logger) {
	if dataDir == "" {
		return
	}

	if _, err := os.Stat(filepath.Join(dataDir, legacyArtifactsDir)); err == nil {
		if err := os.RemoveAll(filepath.Join(dataDir, legacyArtifactsDir)); err != nil {
			logger.Warn("could not remove the imager files an older kiln extracted", "path", filepath.Join(dataDir, legacyArtifactsDir), "error", err)
		} else {
			logger.Info("removed the imager files an older kiln extracted: boot assets are now kept in the asset cache, within its bound",
				"path", filepath.Join(dataDir, legacyArtifactsDir))
		}
	}

	var leftovers []string

	if entries, err := os.ReadDir(filepath.Join(dataDir, scratchDir)); err == nil {
		for _, e := range entries {
			leftovers = append(leftovers, filepath.Join(dataDir, scratchDir, e.Name()))
		}
	}

	for _, path := range leftovers {
		if err := os.RemoveAll(path); err != nil {
			logger.Warn("could not remove a scratch directory left by an interrupted build", "path", path, "error", err)

			continue
		}

		logger.Info("removed a scratch directory left by an interrupted build", "path", path)
	}
}

// Request names an asset.
type Request struct {
	SchematicID string
	Version     string
	Path        string
	// build: the plan is Build's, which may build and publish the
	// installer an embedded image cache carries; Plan only finds it.
	build bool
}

// Event is progress of a build.
type Event struct {
	Phase    string
	Artifact string
	Message  string
	Done     int64
	Total    int64
	CacheHit bool
}

// SchematicNotFoundError is the public factory's 404 for an unknown schematic.
type SchematicNotFoundError struct{ ID string }

func (e *SchematicNotFoundError) Error() string {
	return fmt.Sprintf("schematic ID %q not found", echo.Clip(e.ID))
}

// Is lets the error classifier treat it as any other missing content.
func (e *SchematicNotFoundError) Is(target error) bool { return target == storage.ErrNotFound }

// Plan resolves a request to a plan: the schematic, the version, the path,
// and every input image by digest, each verified.
func (b *Builder) Plan(ctx context.Context, req Request) (*Plan, error) {
	out, err := ParsePath(req.Path)
	if err != nil {
		return nil, err
	}

	return b.plan(ctx, req, out, out.Supported)
}

// plan resolves a request whose output is parsed; supported says whether
// kiln builds that output (the installer image is built only through
// Installer, never as a /image asset).
func (b *Builder) plan(ctx context.Context, req Request, out Output, supported func() error) (*Plan, error) {
	if !schematic.ValidID(req.SchematicID) {
		return nil, &SchematicNotFoundError{ID: req.SchematicID}
	}

	canonical, err := b.deps.Schematics.Get(ctx, req.SchematicID)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, &SchematicNotFoundError{ID: req.SchematicID}
	}

	if err != nil {
		return nil, err
	}

	sc, err := schematic.Parse(canonical)
	if err != nil {
		return nil, fmt.Errorf("stored schematic %s: %w", req.SchematicID, err)
	}

	version, err := b.deps.Artifacts.CheckVersion(ctx, req.Version)
	if err != nil {
		return nil, err
	}

	if err := supported(); err != nil {
		return nil, err
	}

	if err := supportedSchematic(sc, out, version); err != nil {
		return nil, err
	}

	boot, err := b.deps.Artifacts.BootAssets(ctx, version, out.Arch)
	if err != nil {
		return nil, err
	}

	p := &Plan{
		Builder: Version, SchematicID: req.SchematicID, Version: version, Output: out,
		Imager: boot.Imager.Digest().String(), Epoch: SourceDateEpoch, FactoryURL: b.cfg.FactoryURL,
		schematic: sc, canonical: canonical, boot: boot,
	}

	if out.Kind == KindKernel || out.Kind == KindCmdline {
		return p, nil // extensions do not change these
	}

	if out.Kind == KindDisk {
		if err := b.planDisk(ctx, p); err != nil {
			return nil, err
		}
	}

	if out.Kind == KindISO {
		if err := b.planISO(ctx, p); err != nil {
			return nil, err
		}
	}

	if out.Kind == KindInstaller {
		base, err := b.deps.Artifacts.InstallerBase(ctx, version)
		if err != nil {
			return nil, err
		}

		p.InstallerBase, p.base = base.Verified.Digest().String(), base
	}

	if ic := sc.Customization.ImageCache; ic.Enabled() && (out.Kind == KindISO || out.Kind == KindDisk) {
		if err := b.planImageCache(ctx, p, ic, req.build); err != nil {
			return nil, err
		}
	}

	for _, n := range sc.Customization.SystemExtensions.OfficialExtensions {
		ext, err := b.deps.Artifacts.Extension(ctx, version, n)
		if err != nil {
			return nil, err
		}

		p.Extensions = append(p.Extensions, PlanInput{Name: ext.Name, Ref: ext.Verified.Digest().String()})
		p.exts = append(p.exts, ext)
	}

	return p, nil
}

// planImageCache resolves every image of the schematic's image cache in
// the mirror and verifies it, so that a missing image or platform fails the
// request, naming it, before anything is built.
func (b *Builder) planImageCache(ctx context.Context, p *Plan, ic schematic.ImageCache, build bool) error {
	var refs []string

	if ic.Kubernetes {
		k8s, err := release.KubernetesImages(p.Version)
		if err != nil {
			return &UnsupportedError{What: fmt.Sprintf("the Kubernetes image list of Talos %s (%v)", p.Version, err)}
		}

		refs = append(refs, k8s...)
	}

	refs = append(refs, ic.Images...)

	refs, r, v, err := b.withInstaller(ctx, p, refs, build)
	if err != nil {
		return fmt.Errorf("image cache: %w", err)
	}

	opts := imagecache.DefaultOptions()
	opts.Logger = b.deps.Logger
	opts.Layout = imagecache.Flat
	opts.Platforms = ic.Platforms

	if len(opts.Platforms) == 0 {
		opts.Platforms = []string{"linux/" + p.Output.Arch}
	}

	cp, err := imagecache.NewPlan(ctx, refs, r, v, opts)
	if err != nil {
		return fmt.Errorf("image cache: %w", err)
	}

	p.ImageCache, p.cachePlan, p.cacheOpts = cp.ID(), cp, opts

	return nil
}

// supportedSchematic refuses what kiln would otherwise silently build
// differently from the public factory.
func supportedSchematic(sc *schematic.Schematic, out Output, version release.Version) error {
	c := sc.Customization

	if sc.Overlay.Image != "" || sc.Overlay.Name != "" {
		return &UnsupportedError{What: "overlays (" + sc.Overlay.Name + ")"}
	}

	if c.SecureBoot != (schematic.SecureBootCustomization{}) && (out.Kind == KindISO || out.Kind == KindDisk || out.Kind == KindUKI) {
		return &UnsupportedError{What: "SecureBoot customization"}
	}

	if out.Kind == KindDisk {
		switch c.DiskImage.SectorSize {
		case 0, 512, 4096:
		default:
			return &invalidSchematicError{fmt.Sprintf("diskImage.sectorSize %d: use 512 or 4096", c.DiskImage.SectorSize)}
		}
	}

	if c.EmbeddedMachineConfiguration != "" && version.Before(1, 12) {
		return &invalidSchematicError{"embeddedMachineConfiguration needs Talos 1.12 or later"}
	}

	// Disk images before 1.8 also carry STATE and EPHEMERAL partitions
	// (quirks.SkipDataPartitions), which kiln does not make.
	if out.Kind == KindDisk && version.Before(1, 8) {
		return &UnsupportedError{What: "disk images for Talos before 1.8 (they carry STATE and EPHEMERAL partitions)"}
	}

	return nil
}

// invalidSchematicError is a schematic that cannot build this output.
type invalidSchematicError struct{ msg string }

func (e *invalidSchematicError) Error() string { return e.msg }

// Is makes it an invalid-schematic error for the classifier.
func (e *invalidSchematicError) Is(target error) bool { return target == schematic.ErrInvalid }

// Lookup returns the cached asset of a plan without building.
func (b *Builder) Lookup(ctx context.Context, p *Plan) (storage.Asset, error) {
	if p.unpublished {
		return nil, fmt.Errorf("%s: its installer is not built yet: %w", p.Output.Path, storage.ErrNotFound)
	}

	return b.deps.Assets.Open(ctx, p.Key())
}

// Result is a built (or cached) asset, open for reading; the caller closes it.
type Result struct {
	Plan     *Plan
	Asset    storage.Asset
	CacheHit bool
}

// Build returns the asset of req from the cache, or builds it once however
// many callers ask at the same time. progress (may be nil) receives events.
func (b *Builder) Build(ctx context.Context, req Request, progress func(Event)) (*Result, error) {
	if progress == nil {
		progress = func(Event) {}
	}

	// The plan is all that can refuse the request, so no event goes out
	// before it: a stream that has sent nothing can still answer with the
	// refusal's own status (a 404 or 400, not a 200 ending in an error).
	req.build = true

	p, err := b.Plan(ctx, req)
	if err != nil {
		return nil, err
	}

	progress(Event{Phase: "resolve", Message: "resolved " + req.Path})

	a, hit, err := b.cached(ctx, p.Key(), progress, func(ctx context.Context, emit func(Event)) error {
		// The plan read the release at its locked digests, so an asset
		// built before a re-tag is still found above; nothing new is
		// built from a release whose tags no longer match its lock.
		if err := b.deps.Artifacts.Drift(ctx, p.Version); err != nil {
			return err
		}

		start := time.Now()

		if err := b.assemble(ctx, p, emit); err != nil {
			b.logFailure(ctx, "build", err, "asset", p.Output.Path, "schematic", p.SchematicID, "version", p.Version)

			return err
		}

		b.deps.Logger.InfoContext(ctx, "built", "asset", p.Output.Path, "schematic", p.SchematicID, "version", p.Version,
			"key", p.Key(), "duration", time.Since(start))

		return nil
	})
	if err != nil {
		return nil, err
	}

	return &Result{Plan: p, Asset: a, CacheHit: hit}, nil
}

// cached returns the asset under key, running work to make it when it is
// not in the cache: once for all concurrent callers, in a build slot (see
// package flight). A caller whose ctx ends stops waiting; when the last one
// has gone, the build is cancelled. A new build is refused with a
// BusyError when every slot is taken and MaxQueue builds already wait.
func (b *Builder) cached(ctx context.Context, key string, progress func(Event), work func(context.Context, func(Event)) error) (storage.Asset, bool, error) {
	if a, err := b.deps.Assets.Open(ctx, key); err == nil {
		progress(Event{CacheHit: true})

		return a, true, nil
	} else if !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrCorrupt) {
		return nil, false, err
	}

	if err := b.flight(ctx, key, progress, work); err != nil {
		return nil, false, err
	}

	a, err := b.deps.Assets.Open(ctx, key)
	if err != nil {
		return nil, false, fmt.Errorf("open built asset: %w", err)
	}

	return a, false, nil
}

// flight runs work once for every caller asking for key at the same time,
// in a build slot (see package flight); a full queue is a BusyError.
func (b *Builder) flight(ctx context.Context, key string, progress func(Event), work func(context.Context, func(Event)) error) error {
	err := b.flights.Do(ctx, key, progress, func(ctx context.Context, emit func(Event)) error {
		b.builds.Add(1)

		return work(ctx, emit)
	})

	var full *flight.FullError
	if errors.As(err, &full) {
		return &BusyError{Running: full.Running, Queued: full.Queued, RetryAfter: busyRetryAfter}
	}

	return err
}

// logFailure logs a failed build: an abandoned one at INFO (nobody is left
// to care), a full disk at WARN (the operator's to fix), anything else at
// ERROR.
func (b *Builder) logFailure(ctx context.Context, what string, err error, attrs ...any) {
	attrs = append(attrs, "error", err)

	switch {
	case errors.Is(context.Cause(ctx), flight.ErrAbandoned):
		b.deps.Logger.InfoContext(ctx, what+" cancelled: every request waiting for the "+what+" went away", attrs...)
	case storage.IsNoSpace(err):
		b.deps.Logger.WarnContext(ctx, what+" failed: the data disk is full", attrs...)
	default:
		b.deps.Logger.ErrorContext(ctx, what+" failed", attrs...)
	}
}

// assemble writes the asset of p into the cache.
func (b *Builder) assemble(ctx context.Context, p *Plan, emit func(Event)) error {
	w, err := b.deps.Assets.Create(ctx, p.Key())
	if err != nil {
		return err
	}

	committed := false

	defer func() {
		if !committed {
			w.Cancel() //nolint:errcheck // already failing
		}
	}()

	if err := b.write(ctx, p, w, emit); err != nil {
		return err
	}

	emit(Event{Phase: "publish", Message: "publishing " + p.Output.Path})

	if err := w.Commit(); err != nil {
		return fmt.Errorf("publish %s: %w", p.Output.Path, err)
	}

	committed = true

	return nil
}
