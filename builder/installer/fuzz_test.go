package installer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/builder/installer"
)

// FuzzOverlayFromImage: whatever layer an overlay image holds, reading it
// either fails or gives clean paths inside overlay/artifacts/ and the
// installer; it never panics or writes outside the store. (Building the
// layer is left to the unit tests: gzip is too slow under the fuzzer's
// instrumentation.)
func FuzzOverlayFromImage(f *testing.F) {
	f.Add(tarBytes(f, []entry{
		{name: "artifacts/", typeflag: tar.TypeDir, mode: 0o755},
		{name: "artifacts/arm64/dtb/x.dtb", mode: 0o644, data: "dtb"},
		{name: "installers/rpi_generic", mode: 0o755, data: "bin"},
	}))
	f.Add(tarBytes(f, []entry{
		{name: "../artifacts/../../etc/x", mode: 0o644, data: "x"},
		{name: "/installers/rpi_generic", mode: 0o755, data: "bin"},
		{name: "artifacts/a", mode: 0o644, data: "a"},
		{name: "artifacts/a/b", mode: 0o644, data: "b"},
		{name: "artifacts/l", typeflag: tar.TypeLink, link: "artifacts/a"},
	}))

	f.Fuzz(func(t *testing.T, layer []byte) {
		img, err := mutate.AppendLayers(empty.Image, rawLayer(layer))
		if err != nil {
			return
		}

		store := t.TempDir()

		ov, err := installer.OverlayFromImage(context.Background(), img, "rpi_generic", []byte("a: b\n"), store)
		if err != nil {
			return
		}

		if ov.Installer.IsZero() {
			t.Fatal("an overlay without its installer")
		}

		for _, a := range ov.Artifacts {
			if a.Path == "" || a.Path != path.Clean(a.Path) || strings.HasPrefix(a.Path, "/") || strings.HasPrefix(a.Path, "..") {
				t.Fatalf("artifact path %q escapes overlay/artifacts/", a.Path)
			}

			if !a.Dir && (a.Content.IsZero() || a.Content.Size > installer.MaxOverlaySize) {
				t.Fatalf("artifact %q: content %+v", a.Path, a.Content)
			}
		}

		ents, err := os.ReadDir(store)
		if err != nil {
			t.Fatal(err)
		}

		for _, e := range ents {
			if e.IsDir() {
				t.Fatalf("store holds a directory %s", e.Name())
			}
		}
	})
}

// rawLayer is an uncompressed tar as a layer, with no gzip (compress/flate
// is slow under the fuzzer's instrumentation): only what mutate.Extract
// reads.
type rawLayer []byte

func (r rawLayer) hash() v1.Hash {
	s := sha256.Sum256(r)

	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

func (r rawLayer) Digest() (v1.Hash, error)             { return r.hash(), nil }
func (r rawLayer) DiffID() (v1.Hash, error)             { return r.hash(), nil }
func (r rawLayer) Size() (int64, error)                 { return int64(len(r)), nil }
func (r rawLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }
func (r rawLayer) Uncompressed() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(r)), nil }
func (r rawLayer) Compressed() (io.ReadCloser, error)   { return r.Uncompressed() }
