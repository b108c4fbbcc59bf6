package artifacts

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/blang/semver/v4"
	"github.com/google/go-containerregistry/pkg/name"
	"golang.org/x/sync/singleflight"

	"github.com/kiln-dev/kiln/internal/echo"
	"github.com/kiln-dev/kiln/release"
)

// ErrVersionNotAvailable is returned for a Talos version the mirror does not
// offer. Its text (with the version) is the public factory's.
var ErrVersionNotAvailable = errors.New("is not available")

// VersionError names the version that is not available.
type VersionError struct{ Version string }

func (e *VersionError) Error() string { return "version " + echo.Clip(e.Version) + " is not available" }

// Is makes every VersionError match ErrVersionNotAvailable.
func (e *VersionError) Is(target error) bool { return target == ErrVersionNotAvailable }

// Verifier checks an artifact's signature before it is used. Any error
// refuses the artifact.
type Verifier interface {
	Verify(ctx context.Context, ref name.Digest) error
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

// Manager answers what a release holds, reading each catalog only after its
// signature verified. Catalogs are cached by digest: a digest never changes
// content, so a re-tagged catalog is simply a new entry.
type Manager struct {
	src    *Source
	verify Verifier
	cfg    Config
	logger *slog.Logger
	locks  LockStore
	// lockMu orders the read-modify-write of a lock.
	lockMu sync.Mutex

	group singleflight.Group

	mu         sync.Mutex
	versions   []string
	versionsAt time.Time
	extensions map[string][]release.Extension
	overlays   map[string][]release.Overlay
}

// NewManager reads releases from src, verifying with verify.
func NewManager(src *Source, verify Verifier, cfg Config, logger *slog.Logger) *Manager {
	if cfg.VersionsTTL == 0 {
		cfg.VersionsTTL = 30 * time.Second
	}

	locks := cfg.Locks
	if locks == nil {
		locks = &memLocks{}
	}

	return &Manager{
		src: src, verify: verify, cfg: cfg, logger: logger, locks: locks,
		extensions: map[string][]release.Extension{},
		overlays:   map[string][]release.Overlay{},
	}
}

// Source is where the manager reads.
func (m *Manager) Source() *Source { return m.src }

// Versions lists the offered Talos versions, ascending.
func (m *Manager) Versions(ctx context.Context) ([]string, error) {
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

	return v.([]string), nil
}

// BrokenVersions lists the versions configured as broken.
func (m *Manager) BrokenVersions() []string { return m.cfg.BrokenVersions }

// CheckVersion parses a version and fails with a VersionError unless the
// mirror offers it. It returns the version spelled with its "v".
func (m *Manager) CheckVersion(ctx context.Context, version string) (string, error) {
	v, err := release.ParseVersion(version)
	if err != nil {
		return "", &InvalidVersionError{Version: version, Err: err}
	}

	vs, err := m.Versions(ctx)
	if err != nil {
		return "", err
	}

	for _, have := range vs {
		if have == v {
			return v, nil
		}
	}

	return "", &VersionError{Version: v}
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

// VerifyImage checks any image of the source (an image-cache entry, say)
// against the trust policy alone: what its signature names is not checked,
// since Kubernetes' own signatures name other registries than the one they
// are pulled from, and an image listed by hand may be signed under any name.
func (m *Manager) VerifyImage(ctx context.Context, ref name.Digest) error {
	return m.verify.Verify(ctx, ref)
}

// Verify checks a release image of the source (an extension, say) against
// the trust policy, and that its signature was made for the upstream
// repository it stands for (signing.WithSignedIdentity).
func (m *Manager) Verify(ctx context.Context, ref name.Digest) error {
	path, err := m.src.Path(ref.Context())
	if err != nil {
		return err
	}

	return m.verifyAs(ctx, path, ref)
}

// Verified returns the verified digest of path:tag. For a repository a
// release lock records (imager, installer, catalogs, talosctl-all) and a
// version tag, that is the locked digest, whatever the tag says now: a
// re-tagged release changes nothing kiln reads (Drift reports it). What the
// lock does not record yet is recorded at this first use.
func (m *Manager) Verified(ctx context.Context, path, tag string) (name.Digest, error) {
	if repos, err := lockedRepos(tag); err == nil && slices.Contains(repos, path) {
		ref, err := m.lockedDigest(ctx, path, tag)
		if err != nil {
			return name.Digest{}, err
		}

		return ref, nil
	}

	ref, err := m.src.Resolve(ctx, path, tag)
	if err != nil {
		return name.Digest{}, err
	}

	if err := m.verifyAs(ctx, path, ref); err != nil {
		return name.Digest{}, err
	}

	return ref, nil
}

// Extensions reads the official extensions catalog of a version.
func (m *Manager) Extensions(ctx context.Context, version string) ([]release.Extension, error) {
	v, err := m.CheckVersion(ctx, version)
	if err != nil {
		return nil, err
	}

	ref, err := m.Verified(ctx, release.ExtensionsRepo, v)
	if err != nil {
		return nil, fmt.Errorf("extensions catalog of %s: %w", v, err)
	}

	return m.catalogExtensions(ctx, ref.DigestStr())
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

// overlaysSince is the first Talos minor with an overlays catalog.
var overlaysSince = semver.Version{Major: 1, Minor: 7}

// Overlays reads the official overlays catalog of a version; releases before
// 1.7 have none.
func (m *Manager) Overlays(ctx context.Context, version string) ([]release.Overlay, error) {
	v, err := m.CheckVersion(ctx, version)
	if err != nil {
		return nil, err
	}

	if semver.MustParse(v[1:]).LT(overlaysSince) {
		return []release.Overlay{}, nil
	}

	ref, err := m.Verified(ctx, release.OverlaysRepo, v)
	if err != nil {
		return nil, fmt.Errorf("overlays catalog of %s: %w", v, err)
	}

	return m.catalogOverlays(ctx, ref.DigestStr())
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
