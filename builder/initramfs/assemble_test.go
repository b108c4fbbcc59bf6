package initramfs

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/builder/internal/kcopy"
	"github.com/kiln-dev/kiln/release"
)

// TestAssembleIsBuild: the pieces of Assemble, concatenated, are the bytes
// Build writes (with the fixture's extensions, whose kernel modules make
// both read the base's rootfs.sqsh, and without extensions; zstd and xz
// releases), the base piece is a section of the caller's file, and Close
// removes the scratch file.
func TestAssembleIsBuild(t *testing.T) {
	fx := loadFixture(t)
	dir := t.TempDir()

	basePath := filepath.Join(dir, "base")
	// Bytes before and after, so that a wrong section shows.
	if err := os.WriteFile(basePath, append(append([]byte("head"), fx.base...), "tail"...), 0o600); err != nil {
		t.Fatal(err)
	}

	bf, err := os.Open(basePath)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()

	for _, tc := range []struct {
		name, version string
		exts          []Extension
	}{
		{"extensions", talosVersion, fixtureExtensions(t)},
		{"xz", "v1.7.0", fixtureExtensions(t)[1:]},
		{"none", talosVersion, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := Options{Arch: "amd64", TalosVersion: release.MustParseVersion(tc.version), ModTime: buildTime, TempDir: t.TempDir()}

			var want bytes.Buffer
			if err := Build(t.Context(), bytes.NewReader(fx.base), tc.exts, opts, &want); err != nil {
				t.Fatalf("Build: %v", err)
			}

			im, err := Assemble(t.Context(), io.NewSectionReader(bf, 4, int64(len(fx.base))), tc.exts, opts)
			if err != nil {
				t.Fatalf("Assemble: %v", err)
			}
			defer im.Close()

			got, err := io.ReadAll(im.Reader())
			if err != nil {
				t.Fatal(err)
			}

			if im.Size != int64(len(got)) || !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("Assemble's %d bytes (Size %d) differ from Build's %d", len(got), im.Size, want.Len())
			}

			var found bool
			for _, p := range im.Parts {
				if f, off, n, ok := kcopy.Section(p); ok && f == bf && off == 4 && n == int64(len(fx.base)) {
					found = true
				}
			}

			if !found {
				t.Error("the base is not a section of the caller's file")
			}

			if err := im.Close(); err != nil {
				t.Fatal(err)
			}

			if left, _ := os.ReadDir(opts.TempDir); len(left) != 0 {
				t.Errorf("scratch left behind: %v", left)
			}
		})
	}
}
