package artifacts_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// countingStore counts the entries written to an asset store.
type countingStore struct {
	storage.Assets
	creates atomic.Int64
}

func (s *countingStore) Create(ctx context.Context, key string) (storage.AssetWriter, error) {
	s.creates.Add(1)

	return s.Assets.Create(ctx, key)
}

type piecesFixture struct {
	m      *artifacts.Manager
	rel    *demo.Release
	store  *countingStore
	dir    string // the store's directory
	reg    *registry.Embedded
	regDir string // the registry's directory
	kernel []byte
	v      *recordingVerifier
}

func newPiecesFixture(t *testing.T, limit int64) *piecesFixture {
	t.Helper()

	return newPiecesFixtureWith(t, limit, nil)
}

// newPiecesFixtureWith is newPiecesFixture with the release's GRUB trees
// from grub (demo.Options.Grub).
func newPiecesFixtureWith(t *testing.T, limit int64, grub func(string) (fs.FS, error)) *piecesFixture {
	t.Helper()

	regDir := t.TempDir()

	reg, err := registry.NewEmbedded(t.Context(), regDir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	host, _ := name.NewRegistry("kiln.internal", name.Insecure)
	inproc := []remote.Option{remote.WithTransport(registry.Transport(reg))}
	kernel := bytes.Repeat([]byte("MZ-arm64-kernel-"), 50_000)

	rel, err := demo.Push(t.Context(), demo.Options{
		Version: "v1.13.0", Registry: host, Namespace: "mirror", Remote: inproc, Grub: grub,
		Assets: func(arch, file string) ([]byte, error) {
			if arch == "arm64" && file == release.KernelAsset {
				return kernel, nil
			}

			return nil, os.ErrNotExist
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()

	assets, err := storage.NewFSAssets(dir, limit, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	f := &piecesFixture{rel: rel, store: &countingStore{Assets: assets}, dir: dir, reg: reg, regDir: regDir, kernel: kernel, v: &recordingVerifier{}}
	src := &artifacts.Source{Mirror: release.Mirror{Registry: host, Namespace: "mirror"}, Remote: inproc}
	f.m = artifacts.NewManager(artifacts.Deps{Source: src, Checker: signing.CheckFunc(f.v.check), Store: f.store}, artifacts.Config{})

	return f
}

// readBoot reads a boot file whole.
func readBoot(t *testing.T, b *artifacts.BootAssets, file string) []byte {
	t.Helper()

	a, err := b.Open(t.Context(), file)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()

	data, err := io.ReadAll(a)
	if err != nil {
		t.Fatal(err)
	}

	return data
}

// TestBootAssets: the boot files of one architecture are extracted from
// the locked, verified imager into the asset store, once however many
// builds ask at the same time, read back checked, and extracted again when
// the store lost or damaged one.
func TestBootAssets(t *testing.T) {
	ctx := t.Context()
	f := newPiecesFixture(t, 0)
	v13 := release.MustParseVersion("v1.13.0")

	boot, err := f.m.BootAssets(ctx, v13, "arm64")
	if err != nil {
		t.Fatal(err)
	}

	if boot.Imager.Digest() != f.rel.Imager || boot.Imager.IsZero() {
		t.Fatalf("Imager = %v, want the release's %s, verified", boot.Imager.Digest(), f.rel.Imager)
	}

	if f.store.creates.Load() != 0 {
		t.Fatal("BootAssets extracted before a file was opened")
	}

	var wg sync.WaitGroup

	for range 8 {
		wg.Go(func() {
			a, err := boot.Open(ctx, release.KernelAsset)
			if err != nil {
				t.Error(err)

				return
			}
			defer a.Close()

			if data, _ := io.ReadAll(a); !bytes.Equal(data, f.kernel) {
				t.Error("the kernel read back differs from the imager's")
			}
		})
	}

	wg.Wait()

	if n := f.store.creates.Load(); n != 4 {
		t.Fatalf("8 concurrent opens wrote %d entries, want the 4 boot files once", n)
	}

	for _, file := range []string{release.InitramfsAsset, release.SDBootAsset, release.SDStubAsset} {
		if data := readBoot(t, boot, file); len(data) == 0 {
			t.Errorf("%s is empty", file)
		}
	}

	if n := f.store.creates.Load(); n != 4 {
		t.Fatalf("opening the other files wrote %d entries, want none more", n)
	}

	// A damaged entry is dropped by the store and extracted again.
	entries, _ := filepath.Glob(filepath.Join(f.dir, "assets", "*", "imager-*-arm64-vmlinuz"))
	if len(entries) != 1 {
		t.Fatalf("kernel entries in the store: %v", entries)
	}

	if err := os.WriteFile(entries[0], bytes.Repeat([]byte("X"), len(f.kernel)), 0o644); err != nil {
		t.Fatal(err)
	}

	// A new manager's store has not checked the entry in this process.
	assets, err := storage.NewFSAssets(f.dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	fresh := artifacts.NewManager(artifacts.Deps{Source: f.m.Source(), Checker: signing.CheckFunc(f.v.check), Store: assets}, artifacts.Config{})

	boot2, err := fresh.BootAssets(ctx, v13, "arm64")
	if err != nil {
		t.Fatal(err)
	}

	if data := readBoot(t, boot2, release.KernelAsset); !bytes.Equal(data, f.kernel) {
		t.Fatal("a damaged kernel entry was served")
	}

	// Unknown architectures and files are refused.
	if _, err := f.m.BootAssets(ctx, v13, "riscv64"); err == nil {
		t.Error("BootAssets(riscv64): no error")
	}

	if _, err := boot.Open(ctx, "../../etc/passwd"); err == nil {
		t.Error("Open of a file that is no boot asset: no error")
	}
}

// TestBootAssetsRefused: an imager the checker refuses gives no boot
// assets, and nothing is extracted.
func TestBootAssetsRefused(t *testing.T) {
	f := newPiecesFixture(t, 0)
	f.v.refuse = "siderolabs/imager"

	if _, err := f.m.BootAssets(t.Context(), release.MustParseVersion("v1.13.0"), "amd64"); !errors.Is(err, errRefused) {
		t.Fatalf("BootAssets = %v, want the refusal", err)
	}

	if n := f.store.creates.Load(); n != 0 {
		t.Fatalf("%d entries written for a refused imager", n)
	}
}

// TestBootAssetsBounded: extracted files count against the store's bound
// like built assets: a build committed after them evicts them, and an
// evicted file is extracted again when opened. A store too small for the
// boot files of one release says so.
func TestBootAssetsBounded(t *testing.T) {
	ctx := t.Context()
	f := newPiecesFixture(t, 0)
	v13 := release.MustParseVersion("v1.13.0")

	boot, err := f.m.BootAssets(ctx, v13, "arm64")
	if err != nil {
		t.Fatal(err)
	}

	var total int64

	for _, file := range []string{release.KernelAsset, release.InitramfsAsset, release.SDBootAsset, release.SDStubAsset} {
		a, err := boot.Open(ctx, file)
		if err != nil {
			t.Fatal(err)
		}

		total += a.Size()
		a.Close()
	}

	// The same directory under a bound the boot files just fit in; an
	// asset as large as all of them evicts them.
	bounded := func(limit int64) (*artifacts.Manager, *countingStore) {
		assets, err := storage.NewFSAssets(f.dir, limit, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}

		store := &countingStore{Assets: assets}

		return artifacts.NewManager(artifacts.Deps{Source: f.m.Source(), Checker: signing.CheckFunc(f.v.check), Store: store}, artifacts.Config{}), store
	}

	m, store := bounded(total)

	w, err := store.Create(ctx, "built-asset-1")
	if err != nil {
		t.Fatal(err)
	}

	if _, err := w.Write(make([]byte, total)); err != nil {
		t.Fatal(err)
	}

	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}

	if left, _ := filepath.Glob(filepath.Join(f.dir, "assets", "*", "imager-*.json")); len(left) != 0 {
		t.Fatalf("boot files kept over the bound: %v", left)
	}

	boot, err = m.BootAssets(ctx, v13, "arm64")
	if err != nil {
		t.Fatal(err)
	}

	before := store.creates.Load()

	if data := readBoot(t, boot, release.KernelAsset); !bytes.Equal(data, f.kernel) {
		t.Fatal("the kernel extracted again differs")
	}

	if store.creates.Load() == before {
		t.Error("an evicted file was not extracted again")
	}

	// A bound below one boot file: each commit evicts the one before.
	tiny, _ := bounded(1)

	boot, err = tiny.BootAssets(ctx, v13, "amd64")
	if err != nil {
		t.Fatal(err)
	}

	var opened int

	for _, file := range []string{release.KernelAsset, release.InitramfsAsset, release.SDBootAsset, release.SDStubAsset} {
		a, err := boot.Open(ctx, file)
		if err == nil {
			opened++

			a.Close()

			continue
		}

		if !strings.Contains(err.Error(), "--asset-cache-size") {
			t.Errorf("Open(%s) in a store too small = %v, want it to name --asset-cache-size", file, err)
		}
	}

	if opened == 4 {
		t.Error("every boot file opened from a store of 1 byte")
	}
}

// TestExtension: an extension is found in the locked catalog by name or by
// the factory's old name, verified as its upstream repository; an unknown
// name is an ExtensionError; the image of an arch is readable.
func TestExtension(t *testing.T) {
	ctx := t.Context()
	f := newPiecesFixture(t, 0)
	v13 := release.MustParseVersion("v1.13.0")

	ext, err := f.m.Extension(ctx, v13, "siderolabs/gvisor")
	if err != nil {
		t.Fatal(err)
	}

	if ext.Name != "siderolabs/gvisor" || ext.Verified.Digest() != f.rel.ExtensionImages["siderolabs/gvisor"] {
		t.Fatalf("Extension = %s %s, want %s", ext.Name, ext.Verified.Digest(), f.rel.ExtensionImages["siderolabs/gvisor"])
	}

	img, err := ext.Platform(ctx, "arm64")
	if err != nil {
		t.Fatal(err)
	}

	if cf, err := img.ConfigFile(); err != nil || cf.Architecture != "arm64" {
		t.Fatalf("Platform(arm64) config = %+v, %v", cf, err)
	}

	// i915-ucode is the factory's old name of i915.
	if old, err := f.m.Extension(ctx, v13, "siderolabs/i915-ucode"); err != nil || old.Name != "siderolabs/i915" {
		t.Fatalf("Extension(siderolabs/i915-ucode) = %+v, %v; want siderolabs/i915", old, err)
	}

	var extErr *artifacts.ExtensionError
	if _, err := f.m.Extension(ctx, v13, "siderolabs/nope"); !errors.As(err, &extErr) || extErr.Version != v13 {
		t.Fatalf("Extension(nope) = %v, want an ExtensionError", err)
	}

	f.v.refuse = "siderolabs/gvisor"

	if _, err := f.m.Extension(ctx, v13, "siderolabs/gvisor"); !errors.Is(err, errRefused) || !strings.Contains(err.Error(), "extension siderolabs/gvisor") {
		t.Fatalf("Extension of a refused image = %v", err)
	}
}

// TestInstallerBase: installer-base at its locked digest from 1.10; the
// overlays of a schematic are not built yet.
func TestInstallerBase(t *testing.T) {
	ctx := t.Context()
	f := newPiecesFixture(t, 0)
	v13 := release.MustParseVersion("v1.13.0")

	base, err := f.m.InstallerBase(ctx, v13)
	if err != nil {
		t.Fatal(err)
	}

	if base.Name != release.InstallerBaseRepo || base.Verified.Digest() != f.rel.InstallerBase {
		t.Fatalf("InstallerBase = %s %s, want %s", base.Name, base.Verified.Digest(), f.rel.InstallerBase)
	}

	if _, err := base.Platform(ctx, "amd64"); err != nil {
		t.Fatal(err)
	}

	if _, err := f.m.Overlay(ctx, v13, "rpi_generic"); !errors.Is(err, errors.ErrUnsupported) {
		t.Fatalf("Overlay = %v, want errors.ErrUnsupported", err)
	}
}
