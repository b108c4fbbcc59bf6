package installer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kiln-dev/kiln/builder/installer"
	"github.com/kiln-dev/kiln/release"
)

// build makes the installer of version for both arches from fresh inputs
// under dir, with bases of baseLayers layers.
func build(t testing.TB, version, dir string, baseLayers int, overlay func(arch string) *installer.Overlay) *installer.Index {
	t.Helper()

	inputs := filepath.Join(dir, "inputs")
	store := filepath.Join(dir, "store")

	for _, d := range []string{inputs, store} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	var platforms []installer.Platform

	for _, arch := range []string{"amd64", "arm64"} {
		p := installer.Platform{Arch: arch, Base: baseImage(t, version, arch, baseLayers), Assets: assetFiles(t, inputs, arch)}
		if overlay != nil {
			p.Overlay = overlay(arch)
		}

		platforms = append(platforms, p)
	}

	idx, err := installer.Build(context.Background(), installer.Options{Version: release.MustParseVersion(version), Created: epoch, Dir: store}, platforms...)
	if err != nil {
		t.Fatal(err)
	}

	return idx
}

func TestInstallerLayout(t *testing.T) {
	for _, tc := range []struct {
		version    string
		baseLayers int // layers of the base installer
		keep       int // of which the image keeps
		files      []string
	}{
		// installer-base is one squashed layer.
		{"v1.13.0", 1, 1, []string{"systemd-boot.efi", "vmlinuz.efi"}},
		{"v1.10.0", 1, 1, []string{"systemd-boot.efi", "vmlinuz.efi"}},
		// The legacy installer: two layers, the second (its boot assets)
		// replaced by kiln's.
		{"v1.9.4", 2, 1, []string{"initramfs.xz", "vmlinuz"}},
		// Any other count is kept whole.
		{"v1.9.4", 3, 3, []string{"initramfs.xz", "vmlinuz"}},
	} {
		t.Run(tc.version+"-"+string(rune('0'+tc.baseLayers)), func(t *testing.T) {
			dir := t.TempDir()
			idx := build(t, tc.version, dir, tc.baseLayers, nil)

			if err := validate.Index(idx); err != nil {
				t.Fatalf("validate.Index: %v", err)
			}

			im, err := idx.IndexManifest()
			if err != nil {
				t.Fatal(err)
			}

			if mt, _ := idx.MediaType(); mt != types.OCIImageIndex || im.MediaType != types.OCIImageIndex {
				t.Errorf("index media type %s / %s", mt, im.MediaType)
			}

			var plats []string
			for _, m := range im.Manifests {
				plats = append(plats, m.Platform.String())

				if m.MediaType != types.OCIManifestSchema1 {
					t.Errorf("%s: media type %s", m.Platform, m.MediaType)
				}
			}

			if want := []string{"linux/amd64", "linux/arm64"}; !slices.Equal(plats, want) {
				t.Errorf("platforms %v, want %v", plats, want)
			}

			for _, arch := range []string{"amd64", "arm64"} {
				img, err := idx.Arch(arch)
				if err != nil {
					t.Fatal(err)
				}

				checkImage(t, img, tc.version, arch, baseImage(t, tc.version, arch, tc.baseLayers), tc.keep, tc.files, filepath.Join(dir, "inputs"))
			}
		})
	}
}

// checkImage checks one platform image against outInstaller's rules.
func checkImage(t *testing.T, img v1.Image, version, arch string, base v1.Image, keep int, files []string, inputs string) {
	t.Helper()

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	if cf.Architecture != arch || cf.OS != "linux" {
		t.Errorf("platform %s/%s", cf.OS, cf.Architecture)
	}

	if !cf.Created.Time.Equal(epoch) {
		t.Errorf("created %v, want the epoch %v", cf.Created.Time, epoch)
	}

	if want := baseConfig(version); !reflect.DeepEqual(cf.Config, want) {
		t.Errorf("container config %+v, want the base's %+v", cf.Config, want)
	}

	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}

	bm, err := base.Manifest()
	if err != nil {
		t.Fatal(err)
	}

	if len(m.Layers) != keep+1 {
		t.Fatalf("%d layers, want %d base + 1", len(m.Layers), keep)
	}

	for i := range keep {
		if m.Layers[i].Digest != bm.Layers[i].Digest || m.Layers[i].MediaType != bm.Layers[i].MediaType {
			t.Errorf("layer %d is %v, want the base's %v", i, m.Layers[i], bm.Layers[i])
		}
	}

	if len(cf.History) != len(m.Layers) || len(cf.RootFS.DiffIDs) != len(m.Layers) {
		t.Errorf("%d history entries, %d diff IDs for %d layers", len(cf.History), len(cf.RootFS.DiffIDs), len(m.Layers))
	}

	for _, h := range cf.History {
		if !h.Created.Time.Equal(epoch) {
			t.Errorf("history %q created %v", h.CreatedBy, h.Created.Time)
		}
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}

	art := layers[keep]
	if mt, _ := art.MediaType(); mt != types.OCILayer {
		t.Errorf("artifacts layer media type %s", mt)
	}

	entries := readLayer(t, art)

	var want []string
	for _, f := range files {
		want = append(want, "usr/install/"+arch+"/"+f)
	}

	if got := names(entries); !slices.Equal(got, want) {
		t.Fatalf("artifacts layer holds %v, want %v (sorted, no directories)", got, want)
	}

	source := map[string]string{
		"systemd-boot.efi": "sd-boot", "vmlinuz.efi": "uki", "vmlinuz": "kernel", "initramfs.xz": "initramfs",
	}

	for i, e := range entries {
		h := e.hdr
		// filemap.Build: name, mode 0, size; nothing else.
		if h.Typeflag != tar.TypeReg || h.Mode != 0 || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" ||
			h.ModTime.Unix() != 0 || h.Format != tar.FormatUSTAR {
			t.Errorf("%s: header %+v, want a bare regular USTAR entry with mode 0", h.Name, h)
		}

		src, err := os.ReadFile(filepath.Join(inputs, arch+"-"+source[files[i]]))
		if err != nil {
			t.Fatal(err)
		}

		if !bytes.Equal(e.data, src) {
			t.Errorf("%s: content differs from the asset", h.Name)
		}
	}

	// gzip with a zero header: no name, no time, OS unknown.
	rc, err := art.Compressed()
	if err != nil {
		t.Fatal(err)
	}

	head := make([]byte, 10)
	_, err = io.ReadFull(rc, head)
	rc.Close()

	if err != nil || !bytes.Equal(head, []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 4, 0xff}) {
		t.Errorf("gzip header % x (%v)", head, err)
	}
}

// TestReproducible: equal inputs give equal digests whatever the umask,
// clock, time zone, file times and modes of the inputs, and store directory.
func TestReproducible(t *testing.T) {
	first := build(t, "v1.13.0", t.TempDir(), 1, nil)

	old := syscall.Umask(0o077)
	defer syscall.Umask(old)

	dir := t.TempDir()
	second := build(t, "v1.13.0", dir, 1, nil)

	// The same inputs with other modes and times, a second later, with the
	// epoch given in another zone, into another store.
	inputs := filepath.Join(dir, "inputs")

	ents, err := os.ReadDir(inputs)
	if err != nil {
		t.Fatal(err)
	}

	for _, e := range ents {
		p := filepath.Join(inputs, e.Name())
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}

		if err := os.Chtimes(p, time.Unix(1000, 0), time.Unix(2000000000, 0)); err != nil {
			t.Fatal(err)
		}
	}

	time.Sleep(1100 * time.Millisecond)

	var platforms []installer.Platform
	for _, arch := range []string{"amd64", "arm64"} {
		platforms = append(platforms, installer.Platform{Arch: arch, Base: baseImage(t, "v1.13.0", arch, 1), Assets: assetBlobs(t, inputs, arch)})
	}

	third, err := installer.Build(context.Background(),
		installer.Options{Version: release.MustParseVersion("v1.13.0"), Created: epoch.In(time.FixedZone("UTC+5", 5*3600)), Dir: t.TempDir()}, platforms...)
	if err != nil {
		t.Fatal(err)
	}

	d1, _ := first.Digest()

	for i, idx := range []*installer.Index{second, third} {
		d, _ := idx.Digest()
		if d != d1 {
			a, _ := first.RawManifest()
			b, _ := idx.RawManifest()
			t.Errorf("build %d: index %s, want %s\n%s\n%s", i+2, d, d1, a, b)
		}
	}

	for _, arch := range []string{"amd64", "arm64"} {
		a, _ := first.Arch(arch)
		b, _ := third.Arch(arch)
		ca, _ := a.RawConfigFile()
		cb, _ := b.RawConfigFile()

		if !bytes.Equal(ca, cb) {
			t.Errorf("%s config differs:\n%s\n%s", arch, ca, cb)
		}
	}

	t.Logf("index %s", d1)
}

func TestOverlayLayer(t *testing.T) {
	dir := t.TempDir()

	overlay := func(arch string) *installer.Overlay {
		return &installer.Overlay{
			Artifacts: []installer.File{
				{Path: "arm64", Mode: 0o755, Dir: true},
				{Path: "arm64/u-boot", Mode: 0o750, Dir: true},
				{Path: "arm64/u-boot/u-boot.bin", Mode: 0o644, Content: installer.BytesBlob([]byte("u-boot"))},
				{Path: "arm64/firmware.bin", Mode: 0o600, Content: installer.BytesBlob([]byte("fw"))},
			},
			Installer:    installer.BytesBlob([]byte("overlay installer " + arch)),
			ExtraOptions: []byte("configTxtAppend: dtoverlay=vc4\n"),
		}
	}

	idx := build(t, "v1.13.0", dir, 1, overlay)
	if err := validate.Index(idx); err != nil {
		t.Fatal(err)
	}

	img, err := idx.Arch("arm64")
	if err != nil {
		t.Fatal(err)
	}

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}

	if len(layers) != 3 {
		t.Fatalf("%d layers, want base + artifacts + overlay", len(layers))
	}

	got := map[string]string{}

	for _, e := range readLayer(t, layers[2]) {
		kind := "file"
		if e.hdr.Typeflag == tar.TypeDir {
			kind = "dir"
		}

		got[e.hdr.Name] = kind + " " + os.FileMode(e.hdr.Mode).String() + " " + string(e.data)
	}

	want := map[string]string{
		"overlay/artifacts/arm64":                   "dir -rwxr-xr-x ",
		"overlay/artifacts/arm64/firmware.bin":      "file -rw------- fw",
		"overlay/artifacts/arm64/u-boot":            "dir -rwxr-x--- ",
		"overlay/artifacts/arm64/u-boot/u-boot.bin": "file -rw-r--r-- u-boot",
		"overlay/installers/default":                "file -rwxr-xr-x overlay installer arm64",
		"overlay/extra-options":                     "file -rw-r--r-- configTxtAppend: dtoverlay=vc4\n",
	}

	if !reflect.DeepEqual(got, want) {
		t.Errorf("overlay layer:\n got %v\nwant %v", got, want)
	}

	if n := names(readLayer(t, layers[2])); !slices.IsSorted(n) {
		t.Errorf("overlay entries not sorted: %v", n)
	}
}

func TestBuildErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	inputs := t.TempDir()
	good := installer.Platform{Arch: "amd64", Base: baseImage(t, "v1.13.0", "amd64", 1), Assets: assetFiles(t, inputs, "amd64")}
	opts := installer.Options{Version: release.MustParseVersion("v1.13.0"), Created: epoch, Dir: dir}

	short := good
	short.Assets.UKI = installer.Blob{Size: 10, Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("12345")), nil }}

	long := good
	long.Assets.UKI = installer.Blob{Size: 3, Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("12345")), nil }}

	noUKI := good
	noUKI.Assets.UKI = installer.Blob{}

	wrongArch := good
	wrongArch.Base = baseImage(t, "v1.13.0", "arm64", 1)

	armNoUKI := installer.Platform{Arch: "arm64", Base: baseImage(t, "v1.13.0", "arm64", 1), Assets: assetFiles(t, inputs, "arm64")}
	armNoUKI.Assets.UKI = installer.Blob{}

	for _, tc := range []struct {
		name      string
		opts      installer.Options
		platforms []installer.Platform
		invalid   bool
		want      string
	}{
		{"no epoch", installer.Options{Version: release.MustParseVersion("v1.13.0"), Dir: dir}, []installer.Platform{good}, true, "Created"},
		{"no version", installer.Options{Created: epoch, Dir: dir}, []installer.Platform{good}, true, "Version"},
		{"no UKI", opts, []installer.Platform{noUKI}, true, "needs the UKI asset (usr/install/amd64/vmlinuz.efi)"},
		{"wrong base", opts, []installer.Platform{wrongArch}, true, "base installer is linux/arm64, not linux/amd64"},
		{"twice", opts, []installer.Platform{good, good}, true, `"amd64" given twice`},
		{"second arch", opts, []installer.Platform{good, armNoUKI}, true, "linux/arm64: invalid installer input: Talos v1.13.0 installer for arm64 needs the UKI"},
		{"arch", opts, []installer.Platform{{Arch: "riscv64", Base: good.Base, Assets: good.Assets}}, true, "unknown architecture"},
		{"short", opts, []installer.Platform{short}, false, "content is 5 bytes, 10 were announced"},
		{"long", opts, []installer.Platform{long}, false, "longer than the 3 bytes announced"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := installer.Build(ctx, tc.opts, tc.platforms...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}

			if got := errors.Is(err, installer.ErrInvalid); got != tc.invalid {
				t.Errorf("errors.Is(ErrInvalid) = %v for %v", got, err)
			}
		})
	}

	// Nothing is written for a refused input, nothing half-written
	// stays behind.
	if left, err := os.ReadDir(dir); err != nil || len(left) > 0 {
		t.Errorf("files left in the store: %v %v", left, err)
	}

	// A cancelled build stops.
	cctx, cancel := context.WithCancel(ctx)
	cancel()

	if _, err := installer.Build(cctx, opts, good); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled build: %v", err)
	}
}

func TestUsesUKI(t *testing.T) {
	for v, want := range map[string]bool{"v1.9.4": false, "v1.10.0-alpha.0": true, "v1.10.0": true, "v1.13.0": true, "v2.0.0": true} {
		if got := installer.UsesUKI(release.MustParseVersion(v)); got != want {
			t.Errorf("UsesUKI(%s) = %v; want %v", v, got, want)
		}
	}
}

func TestOverlayFromImageErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		entries []entry
		want    string
	}{
		{"no installer", []entry{{name: "installers/other", mode: 0o755, data: "x"}}, `no installer "rpi_generic"`},
		{"symlink", []entry{
			{name: "installers/rpi_generic", mode: 0o755, data: "x"},
			{name: "artifacts/link", typeflag: tar.TypeSymlink, link: "/etc/passwd"},
		}, "artifacts/link is not a regular file"},
		{"foreign hard link", []entry{
			{name: "profiles/p.yaml", mode: 0o644, data: "p"},
			{name: "installers/rpi_generic", mode: 0o755, data: "x"},
			{name: "artifacts/p", typeflag: tar.TypeLink, link: "profiles/p.yaml"},
		}, "not an overlay artifact"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img, err := mutate.AppendLayers(empty.Image, layerOf(t, tc.entries))
			if err != nil {
				t.Fatal(err)
			}

			_, err = installer.OverlayFromImage(context.Background(), img, "rpi_generic", nil, t.TempDir())
			if !errors.Is(err, installer.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want ErrInvalid saying %q", err, tc.want)
			}
		})
	}

	// A header claiming more than an overlay may hold is refused before
	// anything is read (a sparse entry expands to its claimed size).
	var huge bytes.Buffer

	tw := tar.NewWriter(&huge)
	tw.WriteHeader(&tar.Header{Name: "installers/rpi_generic", Mode: 0o755, Size: 1})                //nolint:errcheck
	tw.Write([]byte("x"))                                                                            //nolint:errcheck
	tw.WriteHeader(&tar.Header{Name: "artifacts/bomb", Mode: 0o644, Size: installer.MaxOverlaySize}) //nolint:errcheck

	img, err := mutate.AppendLayers(empty.Image, rawLayer(huge.Bytes()))
	if err != nil {
		t.Fatal(err)
	}

	if _, err := installer.OverlayFromImage(context.Background(), img, "rpi_generic", nil, t.TempDir()); !errors.Is(err, installer.ErrInvalid) ||
		!strings.Contains(err.Error(), "more than") {
		t.Errorf("an oversized overlay: %v", err)
	}

	for _, bad := range []string{"", "..", "a/b"} {
		if _, err := installer.OverlayFromImage(context.Background(), empty.Image, bad, nil, t.TempDir()); !errors.Is(err, installer.ErrInvalid) {
			t.Errorf("overlay name %q: %v", bad, err)
		}
	}

	// A hard link between artifacts is the same content twice.
	img, err = mutate.AppendLayers(empty.Image, layerOf(t, []entry{
		{name: "./artifacts/a", mode: 0o644, data: "same"},
		{name: "artifacts/b", typeflag: tar.TypeLink, link: "artifacts/a", mode: 0o644},
		{name: "installers/rpi_generic", mode: 0o700, data: "x"},
	}))
	if err != nil {
		t.Fatal(err)
	}

	ov, err := installer.OverlayFromImage(context.Background(), img, "rpi_generic", nil, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}

	if len(ov.Artifacts) != 2 || ov.Artifacts[1].Content.Size != 4 || ov.InstallerMode != 0o700 {
		t.Errorf("overlay %+v", ov)
	}
}
