package artifacts_test

import (
	"bytes"
	"errors"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder/grub"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// TestGrubSynthetic: a release whose imager carries only the demo's
// synthetic i386-pc tree hands it out, extracted once, usable by
// builder/grub for core.img and the El Torito image, and names the imager
// and the missing directory for the EFI platforms.
func TestGrubSynthetic(t *testing.T) {
	ctx := t.Context()
	f := newPiecesFixture(t, 0)

	boot, err := f.m.BootAssets(ctx, release.MustParseVersion("v1.13.0"), "amd64")
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup

	for range 4 {
		wg.Go(func() {
			pc, err := boot.Grub(ctx, release.GrubPC)
			if err != nil {
				t.Error(err)

				return
			}

			if _, err := grub.MakeImage(pc, grub.Options{Format: grub.FormatPC, Modules: append(grub.TalosModules, grub.TalosBIOSModules...), Prefix: grub.TalosPrefix}); err != nil {
				t.Errorf("core.img from the synthetic tree: %v", err)
			}

			o, err := grub.MkrescueElTorito(pc)
			if err != nil {
				t.Fatal(err)
			}

			if _, err := grub.MakeImage(pc, o); err != nil {
				t.Errorf("El Torito image from the synthetic tree: %v", err)
			}

			if _, err := grub.BootImage(pc); err != nil {
				t.Error(err)
			}
		})
	}

	wg.Wait()

	// The same walk took the architecture's boot files, which a GRUB or
	// dual-boot build opens next: opening them extracts nothing more.
	if n := f.store.creates.Load(); n != 5 {
		t.Fatalf("4 concurrent Grub calls wrote %d store entries, want the i386-pc tree and the 4 amd64 boot files once", n)
	}

	for _, file := range []string{release.KernelAsset, release.InitramfsAsset, release.SDBootAsset, release.SDStubAsset} {
		readBoot(t, boot, file)
	}

	if n := f.store.creates.Load(); n != 5 {
		t.Fatalf("opening the boot files after the GRUB walk wrote %d entries in all, want none more than 5", n)
	}

	_, err = boot.Grub(ctx, release.GrubAMD64)
	if !errors.Is(err, artifacts.ErrNotInRelease) || !errors.Is(boot.CheckGrub(ctx, release.GrubARM64), artifacts.ErrNotInRelease) || !strings.Contains(err.Error(), f.rel.Imager.DigestStr()) || !strings.Contains(err.Error(), "usr/lib/grub/x86_64-efi") {
		t.Fatalf("Grub(x86_64-efi) of an imager without it = %v, want an error naming the imager and the path", err)
	}

	if _, err := boot.Grub(ctx, "../i386-pc"); err == nil {
		t.Fatal("Grub accepted an unknown platform")
	}
}

// TestGrubHost: the host's GRUB trees, pushed in the release's imager,
// come back file for file, and are extracted again when the store lost
// them.
func TestGrubHost(t *testing.T) {
	testfixture.Require(t, filepath.Join(demo.HostGrubDir, release.GrubPC, "kernel.img"))

	ctx := t.Context()
	f := newPiecesFixtureWith(t, 0, demo.GrubFrom(demo.HostGrubDir))

	boot, err := f.m.BootAssets(ctx, release.MustParseVersion("v1.13.0"), "arm64")
	if err != nil {
		t.Fatal(err)
	}

	for _, platform := range []string{release.GrubPC, release.GrubAMD64} {
		tree, err := boot.Grub(ctx, platform)
		if err != nil {
			t.Fatal(err)
		}

		host := filepath.Join(demo.HostGrubDir, platform)

		des, err := os.ReadDir(host)
		if err != nil {
			t.Fatal(err)
		}

		n := 0

		for _, de := range des {
			if !de.Type().IsRegular() {
				continue
			}

			n++

			want, _ := os.ReadFile(filepath.Join(host, de.Name()))
			if got, err := fs.ReadFile(tree, de.Name()); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("%s/%s: %v, or content differs", platform, de.Name(), err)
			}
		}

		got, _ := fs.ReadDir(tree, ".")
		if len(got) != n {
			t.Fatalf("%s: %d entries, want the host's %d regular files", platform, len(got), n)
		}
	}

	// A damaged entry is dropped by the store and extracted again.
	entries, _ := filepath.Glob(filepath.Join(f.dir, "assets", "*", "imager-*-grub-i386-pc"))
	if len(entries) != 1 {
		t.Fatalf("i386-pc entries in the store: %v", entries)
	}

	if err := os.WriteFile(entries[0], []byte("damaged"), 0o644); err != nil {
		t.Fatal(err)
	}

	// A new manager's store has not checked the entry in this process.
	assets, err := storage.NewFSAssets(f.dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	fresh := artifacts.NewManager(artifacts.Deps{Source: f.m.Source(), Checker: signing.CheckFunc(f.v.check), Store: assets}, artifacts.Config{})

	boot2, err := fresh.BootAssets(ctx, release.MustParseVersion("v1.13.0"), "amd64")
	if err != nil {
		t.Fatal(err)
	}

	tree, err := boot2.Grub(ctx, release.GrubPC)
	if err != nil {
		t.Fatalf("after the store's entry was damaged: %v", err)
	}

	want, _ := os.ReadFile(filepath.Join(demo.HostGrubDir, release.GrubPC, "kernel.img"))
	if got, _ := fs.ReadFile(tree, "kernel.img"); !bytes.Equal(got, want) {
		t.Fatal("a damaged tree was served")
	}
}
