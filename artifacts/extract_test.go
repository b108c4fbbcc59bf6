package artifacts_test

import (
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// TestBootAssetsTamperedLayer: a layer of the imager whose stored bytes no
// longer match the digest its manifest names gives no boot files, and
// leaves none of them in the store, though every boot file was extracted
// before the mismatch showed: read from the registry's storage directly,
// the blob has one byte appended (the gzip stream and its tar still read
// whole; only the digest tells); read through its HTTP API, where
// go-containerregistry refuses a blob whose length is not the manifest's,
// the last byte of the gzip trailer changed.
func TestBootAssetsTamperedLayer(t *testing.T) {
	for _, direct := range []bool{true, false} {
		t.Run(map[bool]string{true: "storage", false: "http"}[direct], func(t *testing.T) {
			ctx := t.Context()
			f := newPiecesFixture(t, 0)

			src := f.m.Source()
			if direct {
				src.Blobs = f.reg
			}

			img, err := src.Image(ctx, f.rel.Imager, "amd64")
			if err != nil {
				t.Fatal(err)
			}

			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}

			// The layers are installer-base, tools, GRUB, then each arch's
			// usr/install: amd64's is the one before the last.
			d, err := layers[len(layers)-2].Digest()
			if err != nil {
				t.Fatal(err)
			}

			if direct {
				appendTo(t, blobPath(f.regDir, d), []byte{0})
			} else {
				flipLast(t, blobPath(f.regDir, d))
			}

			m := artifacts.NewManager(artifacts.Deps{Source: src, Checker: signing.CheckFunc(f.v.check), Store: f.store}, artifacts.Config{})

			boot, err := m.BootAssets(ctx, release.MustParseVersion("v1.13.0"), "amd64")
			if err != nil {
				t.Fatal(err)
			}

			_, err = boot.Open(ctx, release.KernelAsset)
			if err == nil || !strings.Contains(err.Error(), d.String()) {
				t.Fatalf("Open of a kernel from a tampered layer = %v, want an error naming the layer %s", err, d)
			}

			if f.store.creates.Load() == 0 {
				t.Fatal("nothing was extracted before the digest failed: the test does not test what it says")
			}

			if left, _ := filepath.Glob(filepath.Join(f.dir, "assets", "*", "imager-*")); len(left) != 0 {
				t.Fatalf("a tampered layer left entries in the store: %v", left)
			}

			// Nor in a store opened afresh (nothing half-written survives).
			assets, err := storage.NewFSAssets(f.dir, 0, slog.New(slog.DiscardHandler))
			if err != nil {
				t.Fatal(err)
			}

			if _, err := assets.Open(ctx, "imager-"+strings.TrimPrefix(f.rel.Imager.DigestStr(), "sha256:")+"-amd64-vmlinuz"); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("the kernel's entry after a failed extraction: %v, want ErrNotFound", err)
			}
		})
	}
}

func blobPath(regDir string, d v1.Hash) string {
	return filepath.Join(regDir, "docker", "registry", "v2", "blobs", d.Algorithm, d.Hex[:2], d.Hex, "data")
}

func appendTo(t *testing.T, path string, data []byte) {
	t.Helper()

	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

func flipLast(t *testing.T, path string) {
	t.Helper()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	data[len(data)-1] ^= 1

	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
