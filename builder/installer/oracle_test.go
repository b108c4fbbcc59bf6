package installer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/kiln-dev/kiln/builder/installer"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

// Talos's own layer code (hack/installer-oracle, which make unit builds)
// against kiln's, for the layers kiln writes.

type oracleFile struct {
	ImagePath  string
	SourcePath string
	ImageMode  int64
}

type oracleWalk struct {
	Source string `json:"source"`
	Image  string `json:"image"`
}

type oracleLayer struct {
	Digest string `json:"digest"`
	DiffID string `json:"diffID"`
	Size   int64  `json:"size"`
}

func talosLayer(t *testing.T, files []oracleFile, walks []oracleWalk) oracleLayer {
	t.Helper()

	bin := testfixture.InstallerOracle(t)

	req, err := json.Marshal(map[string]any{"files": files, "walks": walks})
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin)
	cmd.Stdin = bytes.NewReader(req)

	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("installer-oracle: %v", err)
	}

	var l oracleLayer
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatalf("installer-oracle said %q: %v", out, err)
	}

	return l
}

func kilnLayer(t *testing.T, l v1.Layer) oracleLayer {
	t.Helper()

	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}

	diff, err := l.DiffID()
	if err != nil {
		t.Fatal(err)
	}

	size, err := l.Size()
	if err != nil {
		t.Fatal(err)
	}

	return oracleLayer{Digest: d.String(), DiffID: diff.String(), Size: size}
}

// TestArtifactsLayerIsTalos: the artifacts layer has the bytes Talos's
// filemap.Layer gives the same files, for both layouts and sizes around the
// tar and gzip block boundaries.
func TestArtifactsLayerIsTalos(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))

	for _, tc := range []struct {
		version    string
		sizes      [2]int
		compressed bool // random bytes, or text that compresses
	}{
		{"v1.13.0", [2]int{0, 1}, false},
		{"v1.13.0", [2]int{511, 512}, true},
		{"v1.13.0", [2]int{65535, 3 << 20}, true},
		{"v1.12.0", [2]int{130000, 9 << 20}, false},
		{"v1.9.4", [2]int{513, 1 << 20}, true},
	} {
		t.Run(fmt.Sprintf("%s-%d-%d", tc.version, tc.sizes[0], tc.sizes[1]), func(t *testing.T) {
			dir := t.TempDir()
			content := func(name string, n int) string {
				b := make([]byte, n)
				if tc.compressed {
					for i := range b {
						b[i] = "talos kiln installer\n"[i%21]
					}
				} else {
					for i := range b {
						b[i] = byte(rng.Uint32())
					}
				}

				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, b, 0o644); err != nil {
					t.Fatal(err)
				}

				return p
			}

			a, b := content("a", tc.sizes[0]), content("b", tc.sizes[1])
			blob := func(p string) installer.Blob {
				x, err := installer.FileBlob(p)
				if err != nil {
					t.Fatal(err)
				}

				return x
			}

			uki := installer.UsesUKI(release.MustParseVersion(tc.version))

			assets := installer.Assets{Kernel: blob(a), Initramfs: blob(b)}
			oracle := []oracleFile{{ImagePath: "usr/install/amd64/vmlinuz", SourcePath: a}, {ImagePath: "usr/install/amd64/initramfs.xz", SourcePath: b}}

			if uki {
				assets = installer.Assets{SDBoot: blob(a), UKI: blob(b)}
				oracle = []oracleFile{{ImagePath: "usr/install/amd64/systemd-boot.efi", SourcePath: a}, {ImagePath: "usr/install/amd64/vmlinuz.efi", SourcePath: b}}
			}

			idx, err := installer.Build(context.Background(), installer.Options{Version: release.MustParseVersion(tc.version), Created: epoch, Dir: dir},
				installer.Platform{Arch: "amd64", Base: baseImage(t, tc.version, "amd64", 1), Assets: assets})
			if err != nil {
				t.Fatal(err)
			}

			img, err := idx.Arch("amd64")
			if err != nil {
				t.Fatal(err)
			}

			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}

			got, want := kilnLayer(t, layers[1]), talosLayer(t, oracle, nil)
			if got != want {
				t.Errorf("kiln's artifacts layer %+v, Talos's %+v", got, want)
			}
		})
	}
}

// TestOverlayLayerIsTalos: for random overlay trees, the overlay layer kiln
// takes from the overlay image has the bytes Talos's filemap gives the tree
// extracted on disk (filemap.Walk of artifacts/, the installer and the
// options file, then filemap.Layer).
func TestOverlayLayerIsTalos(t *testing.T) {
	for seed := range uint64(12) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 99))
			root := t.TempDir()
			tree := filepath.Join(root, "overlay")

			entries := randomOverlay(t, rng, tree)

			options := filepath.Join(root, "extra-options")
			if err := os.WriteFile(options, []byte("configTxtAppend: dtoverlay=vc4-kms-v3d\n"), 0o644); err != nil {
				t.Fatal(err)
			}

			if err := os.Chmod(options, 0o644); err != nil {
				t.Fatal(err)
			}

			img, err := mutate.AppendLayers(empty.Image, layerOf(t, entries))
			if err != nil {
				t.Fatal(err)
			}

			store := filepath.Join(root, "store")
			if err := os.Mkdir(store, 0o755); err != nil {
				t.Fatal(err)
			}

			ov, err := installer.OverlayFromImage(context.Background(), img, "rpi_generic", []byte("configTxtAppend: dtoverlay=vc4-kms-v3d\n"), store)
			if err != nil {
				t.Fatal(err)
			}

			idx, err := installer.Build(context.Background(), installer.Options{Version: release.MustParseVersion("v1.13.0"), Created: epoch, Dir: store},
				installer.Platform{Arch: "arm64", Base: baseImage(t, "v1.13.0", "arm64", 1), Assets: assetFiles(t, root, "arm64"), Overlay: ov})
			if err != nil {
				t.Fatal(err)
			}

			arm, err := idx.Arch("arm64")
			if err != nil {
				t.Fatal(err)
			}

			layers, err := arm.Layers()
			if err != nil {
				t.Fatal(err)
			}

			want := talosLayer(t, nil, []oracleWalk{
				{Source: filepath.Join(tree, "artifacts"), Image: "overlay/artifacts"},
				{Source: filepath.Join(tree, "installers", "rpi_generic"), Image: "overlay/installers/default"},
				{Source: options, Image: "overlay/extra-options"},
			})

			if got := kilnLayer(t, layers[2]); got != want {
				t.Errorf("kiln's overlay layer %+v, Talos's %+v", got, want)

				for _, e := range readLayer(t, layers[2]) {
					t.Logf("kiln: %s %o %d", e.hdr.Name, e.hdr.Mode, e.hdr.Size)
				}
			}
		})
	}
}

// randomOverlay writes a random overlay image tree under dir (with the
// modes set exactly, whatever the umask) and returns its tar entries, some
// directories only implied by their files as in real images.
func randomOverlay(t *testing.T, rng *rand.Rand, dir string) []entry {
	t.Helper()

	modes := []int64{0o644, 0o600, 0o755, 0o700, 0o444}
	dirModes := []int64{0o755, 0o750, 0o700}
	names := []string{"a", "b", "dtb", "u-boot", "firmware", "x.bin", "a-b", "a.b", "Z"}

	var entries []entry

	mkdir := func(p string, mode int64, listed bool) {
		if err := os.MkdirAll(filepath.Join(dir, p), 0o755); err != nil {
			t.Fatal(err)
		}

		if err := os.Chmod(filepath.Join(dir, p), fs.FileMode(mode)); err != nil {
			t.Fatal(err)
		}

		if listed {
			entries = append(entries, entry{name: p + "/", mode: mode, typeflag: tar.TypeDir})
		}
	}

	write := func(p string, mode int64, data string) {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}

		if err := os.Chmod(filepath.Join(dir, p), fs.FileMode(mode)); err != nil {
			t.Fatal(err)
		}

		entries = append(entries, entry{name: p, mode: mode, data: data})
	}

	// The extraction creates implied directories 0755 (and Talos walks
	// them); listed ones keep their mode.
	mkdir("artifacts", 0o755, true)

	var walk func(p string, depth int)
	walk = func(p string, depth int) {
		for i := range 1 + rng.IntN(4) {
			n := p + "/" + names[rng.IntN(len(names))] + fmt.Sprint(i)
			if depth < 3 && rng.IntN(3) == 0 {
				listed := rng.IntN(2) == 0
				mode := int64(0o755)

				if listed {
					mode = dirModes[rng.IntN(len(dirModes))]
				}

				mkdir(n, 0o755, listed)
				walk(n, depth+1)

				// Set the final mode after the children are written.
				if err := os.Chmod(filepath.Join(dir, n), fs.FileMode(mode)); err != nil {
					t.Fatal(err)
				}

				if listed {
					for j := range entries {
						if entries[j].name == n+"/" {
							entries[j].mode = mode
						}
					}
				}

				continue
			}

			size := rng.IntN(3000)
			if rng.IntN(5) == 0 {
				size = rng.IntN(200000)
			}

			data := make([]byte, size)
			for j := range data {
				data[j] = byte(rng.IntN(7))
			}

			write(n, modes[rng.IntN(len(modes))], string(data))
		}
	}

	walk("artifacts", 0)
	mkdir("installers", 0o755, true)
	write("installers/rpi_generic", 0o755, "overlay installer")
	write("installers/other", 0o755, "another installer")
	mkdir("profiles", 0o755, true)
	write("profiles/rpi_generic.yaml", 0o644, "arch: arm64\n")

	return entries
}
