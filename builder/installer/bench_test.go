package installer_test

import (
	"context"
	"crypto/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/builder/installer"
	"github.com/kiln-dev/kiln/release"
)

// BenchmarkBuild assembles the two-arch installer of a release whose UKIs
// are 128 MiB of incompressible data (real ones are ~100 MB). B/op is the
// memory the build allocates: bounded, not a multiple of the UKI size,
// because every layer is streamed into its file.
func BenchmarkBuild(b *testing.B) {
	dir := b.TempDir()
	uki := filepath.Join(dir, "uki.efi")

	data := make([]byte, 128<<20)
	if _, err := rand.Read(data); err != nil {
		b.Fatal(err)
	}

	if err := os.WriteFile(uki, data, 0o644); err != nil {
		b.Fatal(err)
	}

	data = nil

	blob, err := installer.FileBlob(uki)
	if err != nil {
		b.Fatal(err)
	}

	var platforms []installer.Platform

	for _, arch := range []string{"amd64", "arm64"} {
		platforms = append(platforms, installer.Platform{
			Arch: arch, Base: baseImage(b, "v1.13.0", arch, 1),
			Assets: installer.Assets{SDBoot: installer.BytesBlob([]byte("MZ sd-boot")), UKI: blob},
		})
	}

	b.SetBytes(2 * blob.Size)
	b.ReportAllocs()

	for b.Loop() {
		store, err := os.MkdirTemp(dir, "store")
		if err != nil {
			b.Fatal(err)
		}

		if _, err := installer.Build(context.Background(), installer.Options{Version: release.MustParseVersion("v1.13.0"), Created: epoch, Dir: store}, platforms...); err != nil {
			b.Fatal(err)
		}

		os.RemoveAll(store) //nolint:errcheck // scratch
	}
}
