package builder

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/internal/echo"
	"github.com/kiln-dev/kiln/internal/iox"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/storage"
)

// Config tunes a Builder.
type Config struct {
	// DataDir holds extracted artifacts under <DataDir>/artifacts.
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
	Releases   *artifacts.Manager
	Assets     storage.Assets
	Logger     *slog.Logger
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

// errAbandoned is the cause of a build cancelled because every request
// that waited for it went away.
var errAbandoned = errors.New("every request waiting for the build went away")

// Builder builds boot assets.
type Builder struct {
	cfg  Config
	deps Deps
	life context.Context
	sem  chan struct{}

	mu       sync.Mutex
	inflight map[string]*build
	extracts map[string]*extraction

	// builds counts assemblies run, for tests and metrics.
	builds atomic.Int64
}

// New returns a builder whose builds end at the latest when life does. It
// removes what builds a crash interrupted left behind (scratch directories
// under <DataDir>/tmp, half-extracted imagers): the caller owns the data
// directory, so no other build can be using them.
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
		cfg: cfg, deps: deps, life: life,
		sem:      make(chan struct{}, cfg.MaxConcurrency),
		inflight: map[string]*build{},
		extracts: map[string]*extraction{},
	}
}

// cleanScratch removes <dataDir>/tmp and <dataDir>/artifacts/imager/*.tmp.
func cleanScratch(dataDir string, logger *slog.Logger) {
	if dataDir == "" {
		return
	}

	leftovers, _ := filepath.Glob(filepath.Join(dataDir, "artifacts", "imager", "*.tmp")) //nolint:errcheck // a fixed pattern

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

	version, err := b.deps.Releases.CheckVersion(ctx, req.Version)
	if err != nil {
		return nil, err
	}

	if err := out.Supported(); err != nil {
		return nil, err
	}

	if err := supportedSchematic(sc, out, version); err != nil {
		return nil, err
	}

	imager, err := b.deps.Releases.Verified(ctx, release.ImagerRepo, version)
	if err != nil {
		return nil, fmt.Errorf("imager %s: %w", version, err)
	}

	p := &Plan{
		Builder: Version, SchematicID: req.SchematicID, Version: version, Output: out,
		Imager: imager.String(), Epoch: SourceDateEpoch, FactoryURL: b.cfg.FactoryURL,
		schematic: sc, canonical: canonical, imagerRef: imager,
	}

	if out.Kind == KindKernel || out.Kind == KindCmdline {
		return p, nil // extensions do not change these
	}

	if ic := sc.Customization.ImageCache; ic.Enabled() && (out.Kind == KindISO || out.Kind == KindDisk) {
		if err := b.planImageCache(ctx, p, ic); err != nil {
			return nil, err
		}
	}

	if names := sc.Customization.SystemExtensions.OfficialExtensions; len(names) > 0 {
		catalog, err := b.deps.Releases.Extensions(ctx, version)
		if err != nil {
			return nil, err
		}

		src := b.deps.Releases.Source()

		for _, n := range names {
			ext, ok := findExtension(catalog, n)
			if !ok {
				return nil, &ExtensionError{Name: n, Version: version}
			}

			repo, err := src.Repo(release.MirrorPath(ext.Ref.Context()))
			if err != nil {
				return nil, err
			}

			ref := repo.Digest(ext.Digest)

			if err := b.deps.Releases.Verify(ctx, ref); err != nil {
				return nil, fmt.Errorf("extension %s: %w", ext.Name(), err)
			}

			p.Extensions = append(p.Extensions, PlanInput{Name: ext.Name(), Ref: ref.String()})
			p.extRefs = append(p.extRefs, ref)
		}
	}

	return p, nil
}

// planImageCache resolves every image of the schematic's image cache in
// the mirror and verifies it, so that a missing image or platform fails the
// request, naming it, before anything is built.
func (b *Builder) planImageCache(ctx context.Context, p *Plan, ic schematic.ImageCache) error {
	var refs []string

	if ic.Kubernetes {
		k8s, err := release.KubernetesImages(p.Version)
		if err != nil {
			return &UnsupportedError{What: fmt.Sprintf("the Kubernetes image list of Talos %s (%v)", p.Version, err)}
		}

		refs = append(refs, k8s...)
	}

	refs = append(refs, ic.Images...)

	opts := imagecache.DefaultOptions()
	opts.Logger = b.deps.Logger
	opts.Layout = imagecache.Flat
	opts.Platforms = ic.Platforms

	if len(opts.Platforms) == 0 {
		opts.Platforms = []string{"linux/" + p.Output.Arch}
	}

	cp, err := b.planCache(ctx, refs, opts)
	if err != nil {
		return fmt.Errorf("image cache: %w", err)
	}

	p.ImageCache, p.cachePlan, p.cacheOpts = cp.ID(), cp, opts

	return nil
}

// supportedSchematic refuses what kiln would otherwise silently build
// differently from the public factory.
func supportedSchematic(sc *schematic.Schematic, out Output, version string) error {
	c := sc.Customization

	if sc.Overlay.Image != "" || sc.Overlay.Name != "" {
		return &UnsupportedError{What: "overlays (" + sc.Overlay.Name + ")"}
	}

	if c.SecureBoot != (schematic.SecureBootCustomization{}) && (out.Kind == KindISO || out.Kind == KindDisk || out.Kind == KindUKI) {
		return &UnsupportedError{What: "SecureBoot customization"}
	}

	switch c.Bootloader {
	case schematic.BootloaderNone, schematic.BootloaderSDBoot:
	default:
		if out.Kind == KindISO || out.Kind == KindDisk {
			return &UnsupportedError{What: "boot loader " + c.Bootloader.String() + " (GRUB and BIOS boot come in a later release; use sd-boot)"}
		}
	}

	if out.Kind == KindDisk {
		switch c.DiskImage.SectorSize {
		case 0, 512, 4096:
		default:
			return &invalidSchematicError{fmt.Sprintf("diskImage.sectorSize %d: use 512 or 4096", c.DiskImage.SectorSize)}
		}
	}

	if c.EmbeddedMachineConfiguration != "" && versionBefore(version, 1, 12) {
		return &invalidSchematicError{"embeddedMachineConfiguration needs Talos 1.12 or later"}
	}

	// Talos before 1.10 boots ISOs and disks with GRUB; kiln assembles
	// sd-boot only, so it refuses rather than build a different image.
	if (out.Kind == KindISO || out.Kind == KindDisk) && versionBefore(version, 1, 10) {
		return &UnsupportedError{What: "ISO and disk images for Talos before 1.10 (they boot with GRUB)"}
	}

	return nil
}

// invalidSchematicError is a schematic that cannot build this output.
type invalidSchematicError struct{ msg string }

func (e *invalidSchematicError) Error() string { return e.msg }

// Is makes it an invalid-schematic error for the classifier.
func (e *invalidSchematicError) Is(target error) bool { return target == schematic.ErrInvalid }

func versionBefore(v string, major, minor uint64) bool {
	var maj, mnr uint64

	if _, err := fmt.Sscanf(strings.TrimPrefix(v, "v"), "%d.%d", &maj, &mnr); err != nil {
		return false
	}

	return maj < major || (maj == major && mnr < minor)
}

// Lookup returns the cached asset of a plan without building.
func (b *Builder) Lookup(ctx context.Context, p *Plan) (storage.Asset, error) {
	return b.deps.Assets.Open(ctx, p.Key())
}

// Result is a built (or cached) asset, open for reading; the caller closes it.
type Result struct {
	Plan     *Plan
	Asset    storage.Asset
	CacheHit bool
}

// build is one in-flight build, shared by every request for its key. It
// runs while at least one request waits for it: the last to leave cancels
// it, so abandoned requests never keep a build slot busy.
type build struct {
	ctx    context.Context
	cancel context.CancelCauseFunc
	done   chan struct{}
	err    error // set before done closes

	mu      sync.Mutex
	subs    map[int]func(Event)
	nextSub int
	waiters int // guarded by Builder.mu
	started atomic.Bool
}

// subscribe adds a progress receiver and returns its handle.
func (bd *build) subscribe(f func(Event)) int {
	bd.mu.Lock()
	defer bd.mu.Unlock()

	bd.nextSub++
	bd.subs[bd.nextSub] = f

	return bd.nextSub
}

// unsubscribe stops events to a receiver whose request went away (its
// stream is closed; sending to it would fail or panic).
func (bd *build) unsubscribe(id int) {
	bd.mu.Lock()
	delete(bd.subs, id)
	bd.mu.Unlock()
}

func (bd *build) emit(e Event) {
	bd.mu.Lock()
	subs := make([]func(Event), 0, len(bd.subs))

	for _, s := range bd.subs {
		subs = append(subs, s)
	}
	bd.mu.Unlock()

	for _, s := range subs {
		s(e)
	}
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
	p, err := b.Plan(ctx, req)
	if err != nil {
		return nil, err
	}

	progress(Event{Phase: "resolve", Message: "resolved " + req.Path})

	a, hit, err := b.cached(ctx, p.Key(), progress, func(ctx context.Context, emit func(Event)) error {
		// The plan read the release at its locked digests, so an asset
		// built before a re-tag is still found above; nothing new is
		// built from a release whose tags no longer match its lock.
		if err := b.deps.Releases.Drift(ctx, p.Version); err != nil {
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
// not in the cache: once for all concurrent callers, in a build slot. A
// caller whose ctx ends stops waiting; when the last one has gone, the build
// is cancelled. A new build is refused with a BusyError when every slot is
// taken and MaxQueue builds already wait.
func (b *Builder) cached(ctx context.Context, key string, progress func(Event), work func(context.Context, func(Event)) error) (storage.Asset, bool, error) {
	if a, err := b.deps.Assets.Open(ctx, key); err == nil {
		progress(Event{CacheHit: true})

		return a, true, nil
	} else if !errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrCorrupt) {
		return nil, false, err
	}

	b.mu.Lock()

	bd, running := b.inflight[key]
	if !running {
		if len(b.inflight) >= b.cfg.MaxConcurrency+b.cfg.MaxQueue {
			busy := &BusyError{Running: b.running(), RetryAfter: busyRetryAfter}
			busy.Queued = len(b.inflight) - busy.Running
			b.mu.Unlock()

			return nil, false, busy
		}

		bd = b.newBuild(ctx)
		b.inflight[key] = bd
	}

	bd.waiters++
	sub := bd.subscribe(progress)
	b.mu.Unlock()

	if !running {
		go b.run(key, bd, work)
	}

	select {
	case <-bd.done:
		bd.unsubscribe(sub)
	case <-ctx.Done():
		bd.unsubscribe(sub)
		b.leave(key, bd)

		return nil, false, ctx.Err()
	}

	if bd.err != nil {
		return nil, false, bd.err
	}

	a, err := b.deps.Assets.Open(ctx, key)
	if err != nil {
		return nil, false, fmt.Errorf("open built asset: %w", err)
	}

	return a, false, nil
}

// newBuild makes the shared state of a build. Its context keeps the values
// of the request that started it (the request ID) but none of its
// cancellation: it ends when its last waiter leaves, after BuildTimeout, or
// when the builder's life ends.
func (b *Builder) newBuild(reqCtx context.Context) *build {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(reqCtx))
	ctx, cancelTimeout := context.WithTimeout(ctx, b.cfg.BuildTimeout)
	stop := context.AfterFunc(b.life, func() { cancel(b.life.Err()) })

	bd := &build{ctx: ctx, done: make(chan struct{}), subs: map[int]func(Event){}}
	bd.cancel = func(cause error) {
		stop()
		cancel(cause)
		cancelTimeout()
	}

	return bd
}

// running counts builds holding a slot; b.mu is held.
func (b *Builder) running() int {
	n := 0

	for _, bd := range b.inflight {
		if bd.started.Load() {
			n++
		}
	}

	return n
}

// leave is a waiter giving up; the last one cancels the build and forgets
// it, so that a later request for the same asset starts afresh rather than
// joining a build that is being torn down.
func (b *Builder) leave(key string, bd *build) {
	b.mu.Lock()
	defer b.mu.Unlock()

	bd.waiters--
	if bd.waiters > 0 {
		return
	}

	if b.inflight[key] == bd {
		delete(b.inflight, key)
	}

	bd.cancel(errAbandoned)
}

// run does the work for key in a build slot, in the build's own context.
func (b *Builder) run(key string, bd *build, work func(context.Context, func(Event)) error) {
	defer func() {
		b.mu.Lock()
		if b.inflight[key] == bd {
			delete(b.inflight, key)
		}
		b.mu.Unlock()

		bd.cancel(context.Canceled)
		close(bd.done)
	}()

	select {
	case b.sem <- struct{}{}:
		defer func() { <-b.sem }()
	case <-bd.ctx.Done():
		bd.err = fmt.Errorf("waiting for a build slot: %w", context.Cause(bd.ctx))
		b.deps.Logger.DebugContext(bd.ctx, "build cancelled before it started", "key", key, "cause", context.Cause(bd.ctx))

		return
	}

	bd.started.Store(true)
	b.builds.Add(1)
	bd.err = work(bd.ctx, bd.emit)
}

// logFailure logs a failed build: an abandoned one at INFO (nobody is left
// to care), a full disk at WARN (the operator's to fix), anything else at
// ERROR.
func (b *Builder) logFailure(ctx context.Context, what string, err error, attrs ...any) {
	attrs = append(attrs, "error", err)

	switch {
	case errors.Is(context.Cause(ctx), errAbandoned):
		b.deps.Logger.InfoContext(ctx, what+" cancelled: "+errAbandoned.Error(), attrs...)
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

// extraction is an in-flight extraction of one imager's files.
type extraction struct {
	done chan struct{}
	err  error
}

// imagerFiles returns the directory holding usr/install/<arch>/* of the
// plan's (verified) imager, extracting it on first use:
//
//	<data>/artifacts/imager/<digest hex>/<arch>/{vmlinuz,initramfs.xz,systemd-boot.efi,systemd-stub.efi}
func (b *Builder) imagerFiles(ctx context.Context, p *Plan, emit func(Event)) (string, error) {
	hex := strings.TrimPrefix(p.imagerRef.DigestStr(), "sha256:")
	dir := filepath.Join(b.cfg.DataDir, "artifacts", "imager", hex)

	for {
		if _, err := os.Stat(dir); err == nil {
			return dir, nil
		}

		b.mu.Lock()

		ex, running := b.extracts[hex]
		if !running {
			ex = &extraction{done: make(chan struct{})}
			b.extracts[hex] = ex
		}
		b.mu.Unlock()

		if !running {
			emit(Event{Phase: "fetch", Artifact: p.imagerRef.String(), Message: "extracting boot assets from the imager"})
			ex.err = b.extractImager(ctx, p.imagerRef, dir)

			b.mu.Lock()
			delete(b.extracts, hex)
			b.mu.Unlock()
			close(ex.done)
		}

		select {
		case <-ex.done:
		case <-ctx.Done():
			return "", ctx.Err()
		}

		// The extraction ran in the context of the build that started it;
		// if that build was cancelled, this one extracts again.
		if ex.err != nil && running && ctx.Err() == nil &&
			(errors.Is(ex.err, context.Canceled) || errors.Is(ex.err, context.DeadlineExceeded)) {
			continue
		}

		if ex.err != nil {
			return "", ex.err
		}

		return dir, nil
	}
}

// extractImager writes the imager's usr/install tree into dir via a temp
// directory renamed at the end, so a partial extraction is never used.
func (b *Builder) extractImager(ctx context.Context, ref name.Digest, dir string) error {
	// Every platform image of the imager carries both architectures'
	// assets; any one will do.
	img, err := b.deps.Releases.Source().Image(ctx, ref, "amd64")
	if err != nil {
		return err
	}

	tmp := dir + ".tmp"
	os.RemoveAll(tmp) //nolint:errcheck // leftover of a crash

	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}

	defer os.RemoveAll(tmp) //nolint:errcheck // gone after the rename

	rc := mutate.Extract(img)
	defer rc.Close()

	tr := tar.NewReader(rc)
	found := 0

	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return fmt.Errorf("read imager %s: %w", ref, err)
		}

		rel, ok := strings.CutPrefix(strings.TrimPrefix(hdr.Name, "./"), release.InstallDir+"/")
		if !ok || hdr.Typeflag != tar.TypeReg {
			continue
		}

		arch, file, ok := strings.Cut(rel, "/")
		if !ok || strings.Contains(file, "/") || !knownAsset(file) || (arch != "amd64" && arch != "arm64") {
			continue
		}

		if err := writeFile(ctx, filepath.Join(tmp, arch, file), tr); err != nil {
			return fmt.Errorf("extract %s: %w", rel, err)
		}

		found++
	}

	if found == 0 {
		return fmt.Errorf("imager %s has no %s/<arch>/ boot assets", ref, release.InstallDir)
	}

	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}

	return os.Rename(tmp, dir)
}

func knownAsset(file string) bool {
	switch file {
	case release.KernelAsset, release.InitramfsAsset, release.SDBootAsset, release.SDStubAsset:
		return true
	}

	return false
}

func writeFile(ctx context.Context, path string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}

	if _, err := iox.Copy(ctx, f, r); err != nil {
		f.Close()

		return err
	}

	return f.Close()
}

// assetPath is a file of the extracted imager.
func assetPath(dir, arch, file string) string { return filepath.Join(dir, arch, file) }
