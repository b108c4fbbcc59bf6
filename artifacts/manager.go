package artifacts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sync/singleflight"

	"github.com/kiln-dev/kiln/internal/echo"
	"github.com/kiln-dev/kiln/internal/flight"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// ErrVersionNotAvailable is returned for a Talos version the mirror does not
// offer. Its text (with the version) is the public factory's.
var ErrVersionNotAvailable = errors.New("is not available")

// VersionError names the version that is not available.
type VersionError struct{ Version string }

func (e *VersionError) Error() string { return "version " + echo.Clip(e.Version) + " is not available" }

// Is makes every VersionError match ErrVersionNotAvailable.
func (e *VersionError) Is(target error) bool { return target == ErrVersionNotAvailable }

// Deps are what a Manager reads, verifies with and writes.
type Deps struct {
	// Source is the registry the releases are mirrored in.
	Source *Source
	// Checker verifies every image before it is used. The manager asks it
	// for a signature made for the upstream repository a release image
	// stands for (signing.WithSignedIdentity).
	Checker signing.Checker
	// Store keeps what is extracted from release images (boot assets),
	// under the same size bound as the assets built from them; nil
	// extracts nothing (BootAssets.Open fails).
	Store storage.Assets
	// Logger receives what the manager records on its own (a lock
	// recorded at first use); nil discards it.
	Logger *slog.Logger
}

// Config tunes a Manager.
type Config struct {
	// BrokenVersions are hidden from the list and answered "not available".
	BrokenVersions []string
	// VersionsTTL is how long a version list is reused. A mirror run shows
	// up within this time (at once when it records a release lock).
	VersionsTTL time.Duration
	// Locks keeps the release locks; nil keeps them in memory, for the
	// life of the Manager.
	Locks LockStore
}

// Manager hands out verified pieces of releases: the versions the mirror
// offers, their catalogs, and each image or file kiln builds from (boot
// assets, extensions, the installer base), every one read at the digest
// the version's release lock records and verified before use. Catalogs are
// cached by digest: a digest never changes content, so a re-tagged catalog
// is simply a new entry.
type Manager struct {
	src    *Source
	check  signing.Checker
	store  storage.Assets
	cfg    Config
	logger *slog.Logger
	locks  LockStore
	// lockMu orders the read-modify-write of a lock.
	lockMu sync.Mutex

	group singleflight.Group
	// extracts runs each extraction of a release image's files once.
	extracts *flight.Group[struct{}]
	// chunks are the buffers of extractions' stages (pipeline.go).
	chunks chunkPool

	mu         sync.Mutex
	versions   []release.Version
	versionsAt time.Time
	extensions map[string][]release.Extension
	overlays   map[string][]release.Overlay
	// absent are store keys of files an extraction did not find in its
	// image (an old imager without systemd-boot).
	absent map[string]bool
	// talosctlFiles are the binaries of talosctl-all images, by
	// "talosctl-list:<digest>".
	talosctlFiles map[string][]string
}

// NewManager reads releases from deps.Source.
func NewManager(deps Deps, cfg Config) *Manager {
	if cfg.VersionsTTL == 0 {
		cfg.VersionsTTL = 30 * time.Second
	}

	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}

	locks := cfg.Locks
	if locks == nil {
		locks = &memLocks{}
	}

	return &Manager{
		src: deps.Source, check: deps.Checker, store: deps.Store, cfg: cfg, logger: deps.Logger, locks: locks,
		extracts:   flight.New[struct{}](flight.Config{What: "extraction", Logger: deps.Logger}),
		extensions: map[string][]release.Extension{},
		overlays:   map[string][]release.Overlay{},
		absent:     map[string]bool{},
	}
}

// Source is where the manager reads.
func (m *Manager) Source() *Source { return m.src }

// ImageChecker checks any image of the source (an image-cache entry, say)
// against the trust policy alone: what its signature names is not checked,
// since Kubernetes' own signatures name other registries than the one they
// are pulled from, and an image listed by hand may be signed under any name.
func (m *Manager) ImageChecker() signing.Checker { return m.check }

// Versions lists the offered Talos versions, ascending.
func (m *Manager) Versions(ctx context.Context) ([]release.Version, error) {
	m.mu.Lock()
	if m.versions != nil && time.Since(m.versionsAt) < m.cfg.VersionsTTL {
		vs := m.versions
		m.mu.Unlock()

		return vs, nil
	}
	m.mu.Unlock()

	v, err, _ := m.group.Do("versions", func() (any, error) {
		tags, err := m.src.Tags(ctx, release.ImagerRepo)
		if err != nil {
			return nil, err
		}

		vs := release.Versions(tags, m.cfg.BrokenVersions)

		m.mu.Lock()
		m.versions, m.versionsAt = vs, time.Now()
		m.mu.Unlock()

		return vs, nil
	})
	if err != nil {
		return nil, err
	}

	return v.([]release.Version), nil
}

// BrokenVersions lists the versions configured as broken.
func (m *Manager) BrokenVersions() []string { return m.cfg.BrokenVersions }

// CheckVersion parses a version as a request gives it ("1.13.0" or
// "v1.13.0"): an InvalidVersionError when it is not one, a VersionError
// unless the mirror offers it.
func (m *Manager) CheckVersion(ctx context.Context, version string) (release.Version, error) {
	v, err := parseVersion(version)
	if err != nil {
		return release.Version{}, err
	}

	vs, err := m.Versions(ctx)
	if err != nil {
		return release.Version{}, err
	}

	for _, have := range vs {
		if have == v {
			return v, nil
		}
	}

	return release.Version{}, &VersionError{Version: v.String()}
}

// InvalidVersionError is a version string that is not semver.
type InvalidVersionError struct {
	Version string
	Err     error
}

func (e *InvalidVersionError) Error() string {
	return fmt.Sprintf("invalid Talos version %q: want vMAJOR.MINOR.PATCH", echo.Clip(e.Version))
}

func (e *InvalidVersionError) Unwrap() error { return e.Err }

// parseVersion is release.ParseVersion failing with an InvalidVersionError.
func parseVersion(s string) (release.Version, error) {
	v, err := release.ParseVersion(s)
	if err != nil {
		return release.Version{}, &InvalidVersionError{Version: s, Err: err}
	}

	return v, nil
}

// verifyMirrored checks a release image of the source (an extension, say)
// against the trust policy, and that its signature was made for the
// upstream repository it stands for.
func (m *Manager) verifyMirrored(ctx context.Context, ref name.Digest) (signing.Verified, error) {
	path, err := m.src.Path(ref.Context())
	if err != nil {
		return signing.Verified{}, err
	}

	return m.verifyAs(ctx, path, ref)
}

// verifyAs verifies ref as the release image of mirror path path.
func (m *Manager) verifyAs(ctx context.Context, path string, ref name.Digest) (signing.Verified, error) {
	up, err := release.UpstreamRepo(path)
	if err != nil {
		return signing.Verified{}, err
	}

	return m.check.Verify(signing.WithSignedIdentity(ctx, up), ref)
}

// Extensions reads the official extensions catalog of a version.
func (m *Manager) Extensions(ctx context.Context, version string) ([]release.Extension, error) {
	v, err := m.CheckVersion(ctx, version)
	if err != nil {
		return nil, err
	}

	return m.extensionsOf(ctx, v)
}

// extensionsOf reads the (locked, verified) extensions catalog of v.
func (m *Manager) extensionsOf(ctx context.Context, v release.Version) ([]release.Extension, error) {
	ref, err := m.pinned(ctx, release.ExtensionsRepo, v)
	if err != nil {
		return nil, fmt.Errorf("extensions catalog of %s: %w", v, err)
	}

	return m.catalogExtensions(ctx, ref.Digest().DigestStr())
}

// catalogExtensions reads the extensions catalog at a digest (verified by
// the caller).
func (m *Manager) catalogExtensions(ctx context.Context, digest string) ([]release.Extension, error) {
	repo, err := m.src.Repo(release.ExtensionsRepo)
	if err != nil {
		return nil, err
	}

	ref := repo.Digest(digest)

	return cached(ctx, m, m.extensions, ref, func(ctx context.Context) ([]release.Extension, error) {
		img, err := m.src.Image(ctx, ref, "amd64")
		if err != nil {
			return nil, err
		}

		return release.ExtensionsFromImage(img)
	})
}

// Overlays reads the official overlays catalog of a version; releases before
// 1.7 have none.
func (m *Manager) Overlays(ctx context.Context, version string) ([]release.Overlay, error) {
	v, err := m.CheckVersion(ctx, version)
	if err != nil {
		return nil, err
	}

	if !release.HasOverlays(v) {
		return []release.Overlay{}, nil
	}

	ref, err := m.pinned(ctx, release.OverlaysRepo, v)
	if err != nil {
		return nil, fmt.Errorf("overlays catalog of %s: %w", v, err)
	}

	return m.catalogOverlays(ctx, ref.Digest().DigestStr())
}

// catalogOverlays reads the overlays catalog at a digest (verified by the
// caller).
func (m *Manager) catalogOverlays(ctx context.Context, digest string) ([]release.Overlay, error) {
	repo, err := m.src.Repo(release.OverlaysRepo)
	if err != nil {
		return nil, err
	}

	ref := repo.Digest(digest)

	return cached(ctx, m, m.overlays, ref, func(ctx context.Context) ([]release.Overlay, error) {
		img, err := m.src.Image(ctx, ref, "amd64")
		if err != nil {
			return nil, err
		}

		return release.OverlaysFromImage(img)
	})
}

func cached[T any](ctx context.Context, m *Manager, cache map[string][]T, ref name.Digest, load func(context.Context) ([]T, error)) ([]T, error) {
	key := ref.String()

	m.mu.Lock()
	if v, ok := cache[key]; ok {
		m.mu.Unlock()

		return v, nil
	}
	m.mu.Unlock()

	v, err, _ := m.group.Do(key, func() (any, error) {
		items, err := load(ctx)
		if err != nil {
			return nil, err
		}

		m.mu.Lock()
		cache[key] = items
		m.mu.Unlock()

		return items, nil
	})
	if err != nil {
		return nil, err
	}

	return v.([]T), nil
}
