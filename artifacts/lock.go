package artifacts

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

// ErrLockMismatch is matched by every refusal of a release whose tags no
// longer point where they did when the release was mirrored.
var ErrLockMismatch = errors.New("release lock mismatch")

// LockError is a tag of a locked release that points elsewhere than its
// lock says: someone re-tagged it after it was mirrored.
type LockError struct {
	// Repository is the repository as stored, "kiln-demo/siderolabs/imager".
	Repository string
	Version    string
	// Locked is the digest recorded when the version was mirrored.
	Locked string
	// Current is where the tag points now; empty when it is gone.
	Current string
	// RecordedBy says who recorded the lock, and when.
	RecordedBy string
}

func (e *LockError) Error() string {
	now := "now points to " + e.Current
	if e.Current == "" {
		now = "is now gone"
	}

	return fmt.Sprintf("release lock: %s:%s was %s when %s was mirrored (%s), and %s: "+
		"kiln builds nothing more of %s until an authenticated kiln mirror records a new lock (assets built before are still served)",
		e.Repository, e.Version, e.Locked, e.Version, e.RecordedBy, now, e.Version)
}

// Is makes every LockError match ErrLockMismatch.
func (e *LockError) Is(target error) bool { return target == ErrLockMismatch }

// Lock is what one version of a release was when it was mirrored: the
// digest of each of its tagged images, and of each extension and overlay
// image by its catalog, every one verified when the lock was recorded.
// Builds read the release at these digests, whatever its tags say later.
type Lock struct {
	Version release.Version `json:"version"`
	// Recorded is when, RecordedBy who ("kiln mirror (admin)", "first use").
	Recorded   time.Time `json:"recorded"`
	RecordedBy string    `json:"recordedBy"`
	// Images maps the mirror path of imager, installer-base (installer
	// before 1.10), extensions, overlays and talosctl-all to a digest.
	Images map[string]string `json:"images"`
	// Extensions and Overlays map the mirror path of each image the locked
	// catalogs name to the digest they name.
	Extensions map[string]string `json:"extensions,omitempty"`
	Overlays   map[string]string `json:"overlays,omitempty"`
}

func (l *Lock) describe() string {
	return l.RecordedBy + ", " + l.Recorded.UTC().Format(time.RFC3339)
}

// LockStore keeps the release locks. Only kiln writes it: it lives in the
// data directory, never in the registry clients write to.
type LockStore interface {
	// Lock returns the lock of v; nil and no error when there is none.
	Lock(v release.Version) (*Lock, error)
	// PutLock records l, replacing the lock of its version.
	PutLock(l *Lock) error
}

// LockDir keeps each lock as <dir>/<version>.json.
type LockDir string

// Lock implements LockStore.
func (d LockDir) Lock(version release.Version) (*Lock, error) {
	if version.IsZero() {
		return nil, errors.New("release lock: no version")
	}

	data, err := os.ReadFile(filepath.Join(string(d), version.String()+".json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("release lock %s: %w", version, err)
	}

	var l Lock
	if err := json.Unmarshal(data, &l); err != nil {
		return nil, fmt.Errorf("release lock %s: %w", version, err)
	}

	if l.Version != version || len(l.Images) == 0 {
		return nil, fmt.Errorf("release lock %s: the file holds the lock of %q with %d images", version, l.Version, len(l.Images))
	}

	return &l, nil
}

// PutLock implements LockStore: written to a temp file, synced and renamed,
// so a crash leaves the old lock or the new one.
func (d LockDir) PutLock(l *Lock) error {
	if l.Version.IsZero() {
		return errors.New("release lock: no version")
	}

	data, err := json.MarshalIndent(l, "", "  ")
	if err != nil {
		return err
	}

	if err := os.MkdirAll(string(d), 0o755); err != nil {
		return fmt.Errorf("release lock %s: %w", l.Version, err)
	}

	tmp, err := os.CreateTemp(string(d), ".tmp-"+l.Version.String()+"-*")
	if err != nil {
		return fmt.Errorf("release lock %s: %w", l.Version, err)
	}

	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename

	if _, err := tmp.Write(append(data, '\n')); err != nil {
		tmp.Close()

		return fmt.Errorf("release lock %s: %w", l.Version, err)
	}

	if err := tmp.Sync(); err != nil {
		tmp.Close()

		return fmt.Errorf("release lock %s: %w", l.Version, err)
	}

	if err := tmp.Close(); err != nil {
		return fmt.Errorf("release lock %s: %w", l.Version, err)
	}

	if err := os.Rename(tmp.Name(), filepath.Join(string(d), l.Version.String()+".json")); err != nil {
		return fmt.Errorf("release lock %s: %w", l.Version, err)
	}

	return nil
}

// memLocks keeps locks for the life of the process (no LockStore given).
type memLocks struct {
	mu sync.Mutex
	m  map[release.Version]*Lock
}

func (s *memLocks) Lock(version release.Version) (*Lock, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.m[version], nil
}

func (s *memLocks) PutLock(l *Lock) error {
	s.mu.Lock()
	defer s.mu.Unlock()

	if s.m == nil {
		s.m = map[release.Version]*Lock{}
	}

	s.m[l.Version] = l

	return nil
}

// lockedRepos are the repositories of a version its lock records by tag,
// the imager first.
func lockedRepos(v release.Version) []string {
	repos := []string{release.ImagerRepo, release.BaseInstallerRepo(v), release.ExtensionsRepo, release.OverlaysRepo}
	if release.HasTalosctlAll(v) {
		repos = append(repos, release.TalosctlAllRepo)
	}

	return repos
}

// pinned returns the verified digest of a repository of version v that its
// lock records (imager, installer, catalogs, talosctl-all): the locked
// digest, whatever the tag says now, so a re-tagged release changes
// nothing kiln reads (Drift reports it). What the lock does not record yet
// is recorded at this first use.
func (m *Manager) pinned(ctx context.Context, path string, v release.Version) (signing.Verified, error) {
	if !slices.Contains(lockedRepos(v), path) {
		return signing.Verified{}, fmt.Errorf("%s is not a repository of a Talos %s release", path, v)
	}

	return m.lockedDigest(ctx, path, v)
}

// lockedDigest returns the digest the lock of version records for path,
// verified. A repository the lock does not record yet (a version mirrored
// by a kiln mirror that recorded no lock, into an external registry or by
// an older kiln; or a piece added after the lock) is recorded now, at its
// first use, from where its tag points: the first read of an image is what
// later reads are held to.
func (m *Manager) lockedDigest(ctx context.Context, path string, version release.Version) (signing.Verified, error) {
	repo, err := m.src.Repo(path)
	if err != nil {
		return signing.Verified{}, err
	}

	l, err := m.locks.Lock(version)
	if err != nil {
		return signing.Verified{}, err
	}

	if l != nil {
		if d, ok := l.Images[path]; ok {
			return m.verifyAs(ctx, path, repo.Digest(d))
		}
	}

	v, err, _ := m.group.Do("lock:"+version.String()+":"+path, func() (any, error) {
		ref, err := m.src.Resolve(ctx, path, version.String())
		if err != nil {
			return nil, err
		}

		verified, err := m.verifyAs(ctx, path, ref)
		if err != nil {
			return nil, err
		}

		m.lockMu.Lock()
		defer m.lockMu.Unlock()

		l, err := m.locks.Lock(version)
		if err != nil {
			return nil, err
		}

		if l == nil {
			l = &Lock{Version: version, Recorded: time.Now().UTC(), RecordedBy: "first use", Images: map[string]string{}}
		}

		if d, ok := l.Images[path]; ok {
			return m.verifyAs(ctx, path, repo.Digest(d)) // recorded meanwhile
		}

		l.Images[path] = ref.DigestStr()
		if err := m.lockCatalog(ctx, l, path); err != nil {
			return nil, err
		}

		if err := m.locks.PutLock(l); err != nil {
			return nil, err
		}

		m.logger.WarnContext(ctx, "release lock: recorded at first use what the mirror holds now (kiln mirror records a release's lock when it copies it into kiln)",
			"version", version, "repository", path, "digest", ref.DigestStr())

		return verified, nil
	})
	if err != nil {
		return signing.Verified{}, err
	}

	return v.(signing.Verified), nil
}

// lockCatalog adds to l the extension or overlay images the catalog at
// path names, when path is a catalog.
func (m *Manager) lockCatalog(ctx context.Context, l *Lock, path string) error {
	switch path {
	case release.ExtensionsRepo:
		exts, err := m.catalogExtensions(ctx, l.Images[path])
		if err != nil {
			return fmt.Errorf("release lock %s: %w", l.Version, err)
		}

		l.Extensions = map[string]string{}
		for _, e := range exts {
			l.Extensions[release.MirrorPath(e.Ref.Context())] = e.Digest
		}
	case release.OverlaysRepo:
		ovs, err := m.catalogOverlays(ctx, l.Images[path])
		if err != nil {
			return fmt.Errorf("release lock %s: %w", l.Version, err)
		}

		l.Overlays = map[string]string{}
		for _, o := range ovs {
			l.Overlays[release.MirrorPath(o.Ref.Context())] = o.Digest
		}
	}

	return nil
}

// Lock returns the recorded lock of a version, nil when there is none.
func (m *Manager) Lock(version string) (*Lock, error) {
	v, err := parseVersion(version)
	if err != nil {
		return nil, err
	}

	return m.locks.Lock(v)
}

// RecordLock records, as the lock of version, where the version's tags
// point now, each image verified as the upstream repository it stands for
// (a signature of another repository's image does not pass), and the
// extension and overlay images the locked catalogs name. want, when given,
// maps mirror paths to the digests the caller copied (kiln mirror): a tag
// that points elsewhere fails the call, so a lock is never recorded over
// what someone else wrote in the meantime. It replaces any older lock.
func (m *Manager) RecordLock(ctx context.Context, version string, want map[string]string, by string) (*Lock, error) {
	v, err := parseVersion(version)
	if err != nil {
		return nil, err
	}

	repos := lockedRepos(v)

	for path := range want {
		if !slices.Contains(repos, path) {
			return nil, fmt.Errorf("release lock %s: %s is not a repository of the release (%v)", v, path, repos)
		}
	}

	l := &Lock{Version: v, Recorded: time.Now().UTC(), RecordedBy: by, Images: map[string]string{}}

	for _, path := range repos {
		ref, err := m.src.Resolve(ctx, path, v.String())
		if errors.Is(err, ErrNotMirrored) {
			if path == release.ImagerRepo {
				return nil, &VersionError{Version: v.String()}
			}

			if want[path] != "" {
				return nil, fmt.Errorf("%w: release lock %s: %s:%s was copied as %s but is not in the mirror", ErrLockMismatch, v, path, v, want[path])
			}

			continue // not mirrored (kiln mirror --talosctl=false, before 1.7 no overlays)
		}

		if err != nil {
			return nil, err
		}

		if w := want[path]; w != "" && w != ref.DigestStr() {
			return nil, fmt.Errorf("%w: release lock %s: %s:%s was copied as %s but the mirror's tag points to %s",
				ErrLockMismatch, v, ref.Context().RepositoryStr(), v, w, ref.DigestStr())
		}

		if _, err := m.verifyAs(ctx, path, ref); err != nil {
			return nil, fmt.Errorf("release lock %s: %s: %w", v, path, err)
		}

		l.Images[path] = ref.DigestStr()
	}

	for _, path := range []string{release.ExtensionsRepo, release.OverlaysRepo} {
		if _, ok := l.Images[path]; ok {
			if err := m.lockCatalog(ctx, l, path); err != nil {
				return nil, err
			}
		}
	}

	m.lockMu.Lock()
	err = m.locks.PutLock(l)
	m.lockMu.Unlock()

	if err != nil {
		return nil, err
	}

	// A version just mirrored is offered at once, not after the list's TTL.
	m.mu.Lock()
	m.versions = nil
	m.mu.Unlock()

	return l, nil
}

// Drift reports the first tag of a locked version that points elsewhere
// than its lock (a *LockError), or nil. A version without a lock has none.
func (m *Manager) Drift(ctx context.Context, version release.Version) error {
	l, err := m.locks.Lock(version)
	if err != nil || l == nil {
		return err
	}

	for _, path := range lockedRepos(version) {
		locked, ok := l.Images[path]
		if !ok {
			continue
		}

		ref, err := m.src.Resolve(ctx, path, version.String())

		current := ""

		switch {
		case errors.Is(err, ErrNotMirrored):
		case err != nil:
			return err
		default:
			current = ref.DigestStr()
		}

		if current != locked {
			repo, err := m.src.Repo(path)
			if err != nil {
				return err
			}

			return &LockError{Repository: repo.RepositoryStr(), Version: version.String(), Locked: locked, Current: current, RecordedBy: l.describe()}
		}
	}

	return nil
}
