package artifacts_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

// identityVerifier trusts every image and records the identity each was
// verified as.
type identityVerifier struct{ seen map[string]string }

func (v *identityVerifier) check(ctx context.Context, ref name.Digest) error {
	id, ok := signing.SignedIdentity(ctx)
	if !ok {
		return errors.New("verified without a signed identity: " + ref.String())
	}

	v.seen[ref.Context().RepositoryStr()] = id.Name()

	return nil
}

type lockFixture struct {
	m      *artifacts.Manager
	src    *artifacts.Source
	rels   map[string]*demo.Release
	host   name.Registry
	inproc remote.Option
	locks  artifacts.LockDir
	v      *identityVerifier
}

func newLockFixture(t *testing.T, versions ...string) *lockFixture {
	t.Helper()

	reg, err := registry.NewEmbedded(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	f := &lockFixture{rels: map[string]*demo.Release{}, inproc: remote.WithTransport(registry.Transport(reg)), v: &identityVerifier{seen: map[string]string{}}}
	f.host, _ = name.NewRegistry("kiln.internal", name.Insecure)

	for _, v := range versions {
		rel, err := demo.Push(t.Context(), demo.Options{Version: v, Registry: f.host, Namespace: "mirror", Remote: []remote.Option{f.inproc}})
		if err != nil {
			t.Fatal(err)
		}

		f.rels[v] = rel
	}

	f.locks = artifacts.LockDir(filepath.Join(t.TempDir(), "locks"))
	f.src = &artifacts.Source{Mirror: release.Mirror{Registry: f.host, Namespace: "mirror"}, Remote: []remote.Option{f.inproc}, PublicHost: "kiln.lan"}
	f.m = f.manager(signing.CheckFunc(f.v.check))

	return f
}

// manager is a manager of the fixture's mirror and locks checking with c.
func (f *lockFixture) manager(c signing.Checker) *artifacts.Manager {
	return artifacts.NewManager(artifacts.Deps{Source: f.src, Checker: c, Logger: slog.New(slog.DiscardHandler)}, artifacts.Config{Locks: f.locks})
}

// imager is the verified imager m reads for version.
func imager(ctx context.Context, m *artifacts.Manager, version string) (name.Digest, error) {
	b, err := m.BootAssets(ctx, release.MustParseVersion(version), "amd64")
	if err != nil {
		return name.Digest{}, err
	}

	return b.Imager.Digest(), nil
}

// retag points mirror/<path>:tag at digest, as `crane tag` by an admin would.
func (f *lockFixture) retag(t *testing.T, path, tag string, digest name.Digest) {
	t.Helper()

	desc, err := remote.Get(digest, f.inproc)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.Tag(f.host.Repo("mirror", path).Tag(tag), desc, f.inproc); err != nil {
		t.Fatal(err)
	}
}

// TestReleaseLock: a version's first use records in its lock what it
// read (each image verified as its upstream repository); an explicit
// RecordLock records the whole release. Re-tagging the imager afterwards
// changes nothing kiln reads, and Drift names the repository, version and
// both digests until a new lock is recorded.
func TestReleaseLock(t *testing.T) {
	ctx := t.Context()
	f := newLockFixture(t, "v1.12.0", "v1.13.0")
	v13, v12 := f.rels["v1.13.0"], f.rels["v1.12.0"]

	ref, err := imager(ctx, f.m, "v1.13.0")
	if err != nil || ref != v13.Imager {
		t.Fatalf("imager = %v, %v; want %s", ref, err, v13.Imager)
	}

	if _, err := f.m.Extensions(ctx, "v1.13.0"); err != nil {
		t.Fatal(err)
	}

	l, err := f.locks.Lock(release.MustParseVersion("v1.13.0"))
	if err != nil || l == nil {
		t.Fatalf("no lock on disk after first use: %v", err)
	}

	if l.RecordedBy != "first use" || len(l.Images) != 2 || l.Images[release.ImagerRepo] != v13.Imager.DigestStr() ||
		l.Images[release.ExtensionsRepo] != v13.Extensions.DigestStr() {
		t.Fatalf("lock after first use = %+v, want the imager and the extensions catalog", l)
	}

	if got, want := l.Extensions["siderolabs/gvisor"], v13.ExtensionImages["siderolabs/gvisor"].DigestStr(); got != want {
		t.Errorf("lock's gvisor = %q, want the catalog's %s", got, want)
	}

	l, err = f.m.RecordLock(ctx, "v1.13.0", nil, "test")
	if err != nil {
		t.Fatal(err)
	}

	if l.Images[release.ImagerRepo] != v13.Imager.DigestStr() || l.Images[release.InstallerBaseRepo] != v13.InstallerBase.DigestStr() ||
		l.Images[release.ExtensionsRepo] != v13.Extensions.DigestStr() || l.Images[release.OverlaysRepo] != v13.Overlays.DigestStr() ||
		l.Images[release.TalosctlAllRepo] != v13.TalosctlAll.DigestStr() || len(l.Overlays) == 0 || len(l.Extensions) == 0 {
		t.Fatalf("RecordLock = %+v, want the release's digests", l)
	}

	for repo, want := range map[string]string{
		"mirror/siderolabs/imager":         "ghcr.io/siderolabs/imager",
		"mirror/siderolabs/installer-base": "ghcr.io/siderolabs/installer-base",
		"mirror/siderolabs/extensions":     "ghcr.io/siderolabs/extensions",
		"mirror/siderolabs/talosctl-all":   "ghcr.io/siderolabs/talosctl-all",
	} {
		if got := f.v.seen[repo]; got != want {
			t.Errorf("%s verified as %q, want %q", repo, got, want)
		}
	}

	if err := f.m.Drift(ctx, release.MustParseVersion("v1.13.0")); err != nil {
		t.Fatalf("Drift of an untouched release: %v", err)
	}

	// The attack: v1.12.0's signed imager tagged v1.13.0.
	f.retag(t, release.ImagerRepo, "v1.13.0", v12.Imager)

	if ref, err := imager(ctx, f.m, "v1.13.0"); err != nil || ref != v13.Imager {
		t.Fatalf("after the re-tag imager = %v, %v; want the locked %s", ref, err, v13.Imager)
	}

	err = f.m.Drift(ctx, release.MustParseVersion("v1.13.0"))

	var le *artifacts.LockError
	if !errors.As(err, &le) || !errors.Is(err, artifacts.ErrLockMismatch) {
		t.Fatalf("Drift = %v, want a LockError", err)
	}

	for _, want := range []string{"mirror/siderolabs/imager:v1.13.0", v13.Imager.DigestStr(), v12.Imager.DigestStr(), "(test, "} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("Drift error %q does not name %s", err, want)
		}
	}

	// A kiln mirror that copied something else than the tag now says is
	// refused; one that copied what the tag says records a new lock.
	if _, err := f.m.RecordLock(ctx, "v1.13.0", map[string]string{release.ImagerRepo: v13.Imager.DigestStr()}, "kiln mirror (admin)"); !errors.Is(err, artifacts.ErrLockMismatch) ||
		!strings.Contains(err.Error(), "was copied as "+v13.Imager.DigestStr()+" but the mirror's tag points to "+v12.Imager.DigestStr()) {
		t.Fatalf("RecordLock of what the tag no longer holds = %v, want ErrLockMismatch", err)
	}

	l, err = f.m.RecordLock(ctx, "v1.13.0", map[string]string{release.ImagerRepo: v12.Imager.DigestStr()}, "kiln mirror (admin)")
	if err != nil || l.Images[release.ImagerRepo] != v12.Imager.DigestStr() {
		t.Fatalf("RecordLock = %+v, %v", l, err)
	}

	if err := f.m.Drift(ctx, release.MustParseVersion("v1.13.0")); err != nil {
		t.Fatalf("Drift after a new lock: %v", err)
	}

	if ref, err := imager(ctx, f.m, "v1.13.0"); err != nil || ref != v12.Imager {
		t.Fatalf("after the new lock imager = %v, %v; want %s", ref, err, v12.Imager)
	}

	// A deleted tag is drift too.
	if err := remote.Delete(f.host.Repo("mirror", release.OverlaysRepo).Digest(v13.Overlays.DigestStr()), f.inproc); err != nil {
		t.Fatal(err)
	}

	if err := f.m.Drift(ctx, release.MustParseVersion("v1.13.0")); !errors.As(err, &le) || le.Current != "" || !strings.Contains(err.Error(), "is now gone") {
		t.Fatalf("Drift with a deleted tag = %v", err)
	}
}

// TestReleaseLockRefusesUnverified: a lock is never recorded over an image
// the verifier refuses, at first use or by RecordLock, and the refusal
// names the repository.
func TestReleaseLockRefusesUnverified(t *testing.T) {
	f := newLockFixture(t, "v1.13.0")
	refusing := f.manager(signing.CheckFunc((&recordingVerifier{refuse: "siderolabs/imager"}).check))

	if _, err := imager(t.Context(), refusing, "v1.13.0"); !errors.Is(err, errRefused) {
		t.Fatalf("imager = %v, want the refusal", err)
	}

	if l, err := f.locks.Lock(release.MustParseVersion("v1.13.0")); err != nil || l != nil {
		t.Fatalf("a lock was recorded over a refused image: %+v, %v", l, err)
	}

	refusing = f.manager(signing.CheckFunc((&recordingVerifier{refuse: "siderolabs/talosctl-all"}).check))

	if _, err := refusing.RecordLock(t.Context(), "v1.13.0", nil, "test"); !errors.Is(err, errRefused) || !strings.Contains(err.Error(), "siderolabs/talosctl-all") {
		t.Fatalf("RecordLock = %v, want the talosctl-all refusal", err)
	}

	if l, err := f.locks.Lock(release.MustParseVersion("v1.13.0")); err != nil || l != nil {
		t.Fatalf("a lock was recorded over a refused image: %+v, %v", l, err)
	}
}

// TestLockDir: locks survive a restart as files; a malformed or foreign
// file is an error, not an empty lock.
func TestLockDir(t *testing.T) {
	d := artifacts.LockDir(t.TempDir())
	v13, v12 := release.MustParseVersion("v1.13.0"), release.MustParseVersion("v1.12.0")

	if l, err := d.Lock(v13); l != nil || err != nil {
		t.Fatalf("Lock of nothing = %v, %v", l, err)
	}

	want := &artifacts.Lock{Version: v13, RecordedBy: "test", Images: map[string]string{release.ImagerRepo: "sha256:" + strings.Repeat("a", 64)}}
	if err := d.PutLock(want); err != nil {
		t.Fatal(err)
	}

	if data, err := os.ReadFile(filepath.Join(string(d), "v1.13.0.json")); err != nil || !strings.Contains(string(data), `"version": "v1.13.0"`) {
		t.Fatalf("lock file = %s, %v; want the version as a string", data, err)
	}

	got, err := d.Lock(v13)
	if err != nil || got.Images[release.ImagerRepo] != want.Images[release.ImagerRepo] {
		t.Fatalf("Lock = %+v, %v", got, err)
	}

	if err := os.WriteFile(filepath.Join(string(d), "v1.12.0.json"), []byte(`{"version":"v1.13.0","images":{"a":"b"}}`), 0o644); err != nil {
		t.Fatal(err)
	}

	if _, err := d.Lock(v12); err == nil {
		t.Fatal("a lock file of another version was accepted")
	}

	if _, err := d.Lock(release.Version{}); err == nil {
		t.Fatal("a lock of no version was read")
	}
}
