package initramfs

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"math/rand/v2"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/builder/cpio"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

const talosVersion = "v1.13.0"

var buildTime = time.Unix(1750000000, 0).UTC()

// extensionOrder is the order the fixture passes the demo release's extensions.
var extensionOrder = []string{"siderolabs/gvisor", "siderolabs/i915", "siderolabs/intel-ucode", "siderolabs/drbd"}

type fixture struct {
	base []byte
	exts []v1.Image
}

var (
	fixtureOnce sync.Once
	fixtureVal  fixture
	fixtureErr  error
)

// loadFixture pushes the demo release to an in-process registry and reads back
// the amd64 initramfs and extension images. It is shared by every test:
// pushing the release is the slowest part. The images are copied into
// memory so they outlive the registry.
func loadFixture(tb testing.TB) fixture {
	tb.Helper()

	fixtureOnce.Do(func() { fixtureVal, fixtureErr = pushFixture() })

	if fixtureErr != nil {
		tb.Fatalf("fixture: %v", fixtureErr)
	}

	return fixtureVal
}

func pushFixture() (fixture, error) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()

	reg, err := name.NewRegistry(strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		return fixture{}, err
	}

	rel, err := demo.Push(context.Background(), demo.Options{Version: talosVersion, Registry: reg})
	if err != nil {
		return fixture{}, err
	}

	var fx fixture

	imager, err := amd64Image(rel.Imager)
	if err != nil {
		return fx, err
	}

	if fx.base, err = fileFromImage(imager, "usr/install/amd64/initramfs.xz"); err != nil {
		return fx, err
	}

	for _, repo := range extensionOrder {
		img, err := amd64Image(rel.ExtensionImages[repo])
		if err != nil {
			return fx, err
		}

		fx.exts = append(fx.exts, img)
	}

	return fx, nil
}

// amd64Image returns the linux/amd64 image of an index, fully in memory.
func amd64Image(ref name.Digest) (v1.Image, error) {
	idx, err := remote.Index(ref)
	if err != nil {
		return nil, err
	}

	im, err := idx.IndexManifest()
	if err != nil {
		return nil, err
	}

	for _, m := range im.Manifests {
		if m.Platform != nil && m.Platform.Architecture == "amd64" {
			img, err := idx.Image(m.Digest)
			if err != nil {
				return nil, err
			}

			return inMemory(img)
		}
	}

	return nil, errors.New("no amd64 image in " + ref.String())
}

// inMemory re-creates img as a single in-memory layer holding its
// flattened filesystem, which is all Build looks at.
func inMemory(img v1.Image) (v1.Image, error) {
	var buf bytes.Buffer

	rc := mutate.Extract(img)
	defer rc.Close()

	if _, err := io.Copy(&buf, rc); err != nil {
		return nil, err
	}

	data := buf.Bytes()

	layer, err := tarLayer(data)
	if err != nil {
		return nil, err
	}

	return mutate.AppendLayers(emptyImage(), layer)
}

func fileFromImage(img v1.Image, path string) ([]byte, error) {
	rc := mutate.Extract(img)
	defer rc.Close()

	tr := tar.NewReader(rc)

	for {
		hdr, err := tr.Next()
		if err != nil {
			return nil, err
		}

		if strings.TrimPrefix(hdr.Name, "/") == path {
			return io.ReadAll(tr)
		}
	}
}

// buildFixture builds with the fixture's extensions plus both virtual ones.
func buildFixture(tb testing.TB, schematicYAML []byte) []byte {
	tb.Helper()

	fx := loadFixture(tb)

	var exts []Extension
	for _, img := range fx.exts {
		exts = append(exts, FromImage(img))
	}

	exts = append(exts,
		SchematicExtension("376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba", schematicYAML, "https://factory.kiln.invalid"),
		EmbeddedConfigExtension([]byte("version: v1alpha1\nmachine:\n  type: worker\n")))

	var out bytes.Buffer
	if err := Build(tb.Context(), bytes.NewReader(fx.base), exts, Options{Arch: "amd64", TalosVersion: release.MustParseVersion(talosVersion), ModTime: buildTime, TempDir: tb.TempDir()}, &out); err != nil {
		tb.Fatalf("Build: %v", err)
	}

	return out.Bytes()
}

func run(t *testing.T, dir string, stdin []byte, name string, args ...string) []byte {
	t.Helper()

	testfixture.RequireTool(t, name)

	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(stdin)

	var stderr bytes.Buffer

	cmd.Stderr = &stderr

	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}

	return out
}

// cpioEntries lists an archive with our reader: name -> content (regular
// files) or "" (others), plus the names in order.
func cpioEntries(t *testing.T, data []byte) (map[string]*cpio.Header, map[string][]byte, []string) {
	t.Helper()

	hdrs, contents := map[string]*cpio.Header{}, map[string][]byte{}

	var names []string

	cr := cpio.NewReader(bytes.NewReader(data))

	for {
		h, err := cr.Next()
		if errors.Is(err, io.EOF) {
			return hdrs, contents, names
		}

		if err != nil {
			t.Fatalf("cpio: %v", err)
		}

		b, err := io.ReadAll(cr)
		if err != nil {
			t.Fatalf("cpio %s: %v", h.Name, err)
		}

		hdrs[h.Name], contents[h.Name] = h, b
		names = append(names, h.Name)
	}
}

func TestBuild(t *testing.T) {
	schematicYAML := []byte("customization:\n  systemExtensions:\n    officialExtensions:\n      - siderolabs/gvisor\n")
	out := buildFixture(t, schematicYAML)
	fx := loadFixture(t)

	// For a look by hand (or a boot test): KILN_INITRAMFS_DUMP=/tmp/initramfs.xz.
	if p := os.Getenv("KILN_INITRAMFS_DUMP"); p != "" {
		if err := os.WriteFile(p, out, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	segs, err := cpio.Segments(bytes.NewReader(out), int64(len(out)))
	if err != nil {
		t.Fatalf("Segments: %v", err)
	}

	if len(segs) != 3 || segs[0].Compression != cpio.None || segs[1].Compression != cpio.Zstd || segs[2].Compression != cpio.Zstd {
		t.Fatalf("segments: got %+v, want uncompressed, zstd, zstd", segs)
	}

	seg := func(i int) []byte { return out[segs[i].Offset : segs[i].Offset+segs[i].Size] }

	// The base passes through unchanged, right after the 512-aligned
	// microcode archive.
	if !bytes.Equal(seg(1), fx.base) || segs[1].Offset%512 != 0 {
		t.Errorf("base segment at %d (%d bytes) differs from the release initramfs (%d bytes)", segs[1].Offset, segs[1].Size, len(fx.base))
	}

	t.Run("microcode", func(t *testing.T) {
		ucodeArchive := out[:segs[1].Offset]
		_, contents, names := cpioEntries(t, ucodeArchive)

		want := []string{"kernel", "kernel/x86", "kernel/x86/microcode", "kernel/x86/microcode/GenuineIntel.bin"}
		if !slices.Equal(names, want) {
			t.Errorf("our reader: got %v, want %v", names, want)
		}

		if got := strings.Fields(string(run(t, "", ucodeArchive, "cpio", "-t", "--quiet"))); !slices.Equal(got, want) {
			t.Errorf("cpio -t: got %v, want %v", got, want)
		}

		wantUcode := "kiln synthetic placeholder: intel microcode 06-55-04\nkiln synthetic placeholder: intel microcode 06-8e-0a\n"
		if got := string(contents["kernel/x86/microcode/GenuineIntel.bin"]); got != wantUcode {
			t.Errorf("GenuineIntel.bin: got %q, want %q", got, wantUcode)
		}
	})

	// The appended archive, decompressed by the real zstd.
	archive := run(t, "", seg(2), "zstd", "-d", "-c", "-q")
	hdrs, contents, names := cpioEntries(t, archive)

	t.Run("listing", func(t *testing.T) {
		listed := strings.Fields(string(run(t, "", archive, "cpio", "-t", "--quiet")))
		if !slices.Equal(listed, names) {
			t.Errorf("cpio -t %v differs from our reader %v", listed, names)
		}

		want := []string{"0.sqsh", "1.sqsh", "2.sqsh", "3.sqsh", "4.sqsh", "5.sqsh", "extensions.yaml", "modules.dep.sqsh",
			"usr", "usr/lib", "usr/lib/firmware", "usr/lib/firmware/i915",
			"usr/lib/firmware/i915/adlp_dmc.bin", "usr/lib/firmware/i915/tgl_guc_70.bin", "usr/lib/firmware/intel-ucode"}
		if !slices.Equal(names, want) {
			t.Errorf("entries: got %v, want %v", names, want)
		}

		if got := string(contents["usr/lib/firmware/i915/adlp_dmc.bin"]); got != "kiln synthetic placeholder: i915 adlp_dmc firmware\n" {
			t.Errorf("adlp_dmc.bin: got %q", got)
		}

		for _, n := range names {
			if h := hdrs[n]; h.UID != 0 || h.GID != 0 || !h.ModTime.Equal(buildTime) {
				t.Errorf("%s: uid %d gid %d mtime %v, want 0 0 %v", n, h.UID, h.GID, h.ModTime, buildTime)
			}
		}
	})

	t.Run("extensions.yaml", func(t *testing.T) {
		var cfg Config
		if err := yaml.Unmarshal(contents["extensions.yaml"], &cfg); err != nil {
			t.Fatal(err)
		}

		wantNames := []string{"gvisor", "i915", "intel-ucode", "drbd", "schematic", "embedded-config", "modules.dep"}
		if len(cfg.Layers) != len(wantNames) {
			t.Fatalf("layers: got %d, want %d:\n%s", len(cfg.Layers), len(wantNames), contents["extensions.yaml"])
		}

		for i, l := range cfg.Layers {
			if l.Image != []string{"0.sqsh", "1.sqsh", "2.sqsh", "3.sqsh", "4.sqsh", "5.sqsh", "modules.dep.sqsh"}[i] || l.Metadata.Name != wantNames[i] {
				t.Errorf("layer %d: got %s %s, want %s", i, l.Image, l.Metadata.Name, wantNames[i])
			}
		}

		if s := cfg.Layers[4].Metadata; s.ExtraInfo != string(schematicYAML) || s.Author != "Image Factory (https://factory.kiln.invalid)" {
			t.Errorf("schematic metadata: %+v", s)
		}

		if v := cfg.Layers[0].Metadata.Compatibility.Talos.Version; v != ">= v1.0.0" {
			t.Errorf("gvisor constraint: got %q", v)
		}

		if m := cfg.Layers[6].Metadata; m.Version != demo.DefaultKernelVersion || m.Author != "Talos Machinery" ||
			m.Description != "Combined modules.dep for all extensions" {
			t.Errorf("modules.dep metadata: %+v", m)
		}
	})

	t.Run("squashfs", func(t *testing.T) {
		dir := t.TempDir()
		run(t, dir, archive, "cpio", "-i", "-d", "--quiet", "--no-absolute-filenames")

		want := map[string][]string{
			"0.sqsh": {"/usr/local/bin/runsc", "/usr/local/bin/containerd-shim-runsc-v1", "/etc/cri/conf.d/gvisor.part"},
			"1.sqsh": {"/usr/lib"},
			"2.sqsh": {"/usr/lib"},
			"3.sqsh": {"/usr/lib/modules/" + demo.DefaultKernelVersion + "/extras/drbd.ko"},
			"4.sqsh": {"/usr/local/share/schematic/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"},
			"5.sqsh": {"/usr/local/etc/talos/config.yaml"},
			"modules.dep.sqsh": {"/usr/lib/modules/" + demo.DefaultKernelVersion + "/modules.dep",
				"/usr/lib/modules/" + demo.DefaultKernelVersion + "/modules.dep.bin",
				"/usr/lib/modules/" + demo.DefaultKernelVersion + "/modules.order"},
		}

		for img, paths := range want {
			listing := string(run(t, dir, nil, "unsquashfs", "-lls", "-d", "", img))
			for _, p := range paths {
				if !strings.Contains(listing, p+"\n") && !strings.Contains(listing, p+" ") {
					t.Errorf("%s: %s missing from unsquashfs listing:\n%s", img, p, listing)
				}
			}

			if strings.Contains(listing, "/usr/lib/firmware") {
				t.Errorf("%s: firmware left in the layer:\n%s", img, listing)
			}

			if img == "5.sqsh" && !strings.Contains(listing, "-r-------- root/root") {
				t.Errorf("%s: config.yaml is not mode 0400:\n%s", img, listing)
			}
		}

		// The embedded config carries its SELinux label: extract it with
		// xattrs (as root only; security.* needs privilege).
		if os.Geteuid() == 0 {
			x := filepath.Join(dir, "x")
			run(t, dir, nil, "unsquashfs", "-q", "-d", x, "5.sqsh")

			got := make([]byte, 128)

			n, err := getxattr(filepath.Join(x, "usr/local/etc/talos/config.yaml"), "security.selinux", got)
			if err != nil || string(got[:n]) != EmbeddedConfigLabel {
				t.Errorf("config.yaml security.selinux: got %q, %v; want %q", got[:n], err, EmbeddedConfigLabel)
			}
		}
	})
}

func TestBuildDeterministic(t *testing.T) {
	a := buildFixture(t, []byte("customization: {}\n"))
	b := buildFixture(t, []byte("customization: {}\n"))

	if !bytes.Equal(a, b) {
		t.Error("two builds of the same inputs differ")
	}
}

func TestBuildNoExtensions(t *testing.T) {
	fx := loadFixture(t)

	var out bytes.Buffer
	if err := Build(t.Context(), bytes.NewReader(fx.base), nil, Options{Arch: "amd64", TalosVersion: release.MustParseVersion(talosVersion)}, &out); err != nil {
		t.Fatal(err)
	}

	if !bytes.Equal(out.Bytes(), fx.base) {
		t.Error("without extensions the output is not the base")
	}
}

// tarExtension is a test extension made of tar entries.
type tarExtension struct {
	name    string
	entries map[string]string // path -> content; a trailing "/" makes a directory
}

func (e tarExtension) Name() string { return e.name }

func (e tarExtension) Open(context.Context) (io.ReadCloser, error) {
	data, err := tarOf(e.entries)
	if err != nil {
		return nil, err
	}

	return io.NopCloser(bytes.NewReader(data)), nil
}

func tarOf(entries map[string]string) ([]byte, error) {
	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)

	keys := make([]string, 0, len(entries))
	for k := range entries {
		keys = append(keys, k)
	}

	slices.Sort(keys)

	for _, k := range keys {
		h := &tar.Header{Name: k, Mode: 0o644, Size: int64(len(entries[k]))}
		if strings.HasSuffix(k, "/") {
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		}

		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}

		if _, err := tw.Write([]byte(entries[k])); err != nil && h.Size > 0 {
			return nil, err
		}
	}

	err := tw.Close()

	return buf.Bytes(), err
}

func manifestYAML(version, constraint string) string {
	return "version: " + version + "\nmetadata:\n  name: test\n  version: 1.0.0\n  author: kiln\n  description: test\n" +
		"  compatibility:\n    talos:\n      version: \"" + constraint + "\"\n"
}

func TestBuildRefuses(t *testing.T) {
	good := manifestYAML("v1alpha1", ">= v1.0.0")

	for _, tc := range []struct {
		name    string
		entries map[string]string
		want    string
	}{
		{"extra top-level file", map[string]string{"manifest.yaml": good, "rootfs/": "", "README": "hi"}, `unexpected file "README"`},
		{"wrong manifest version", map[string]string{"manifest.yaml": manifestYAML("v1alpha2", ">= v1.0.0"), "rootfs/": ""}, `manifest version "v1alpha2"`},
		{"incompatible Talos", map[string]string{"manifest.yaml": manifestYAML("v1alpha1", ">= v1.14.0"), "rootfs/": ""}, `">= v1.14.0" is not satisfied by Talos 1.13.0`},
		{"bad constraint", map[string]string{"manifest.yaml": manifestYAML("v1alpha1", "soon"), "rootfs/": ""}, "constraint"},
		{"no manifest", map[string]string{"rootfs/usr/local/bin/x": "x"}, "no manifest.yaml"},
		{"no rootfs", map[string]string{"manifest.yaml": good}, "no rootfs/"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			exts := []Extension{
				tarExtension{name: "fine", entries: map[string]string{"manifest.yaml": good, "rootfs/usr/local/bin/ok": "ok"}},
				tarExtension{name: "broken", entries: tc.entries},
			}

			var out bytes.Buffer

			err := Build(t.Context(), strings.NewReader("base"), exts, Options{Arch: "amd64", TalosVersion: release.MustParseVersion(talosVersion), TempDir: t.TempDir()}, &out)
			if err == nil {
				t.Fatal("Build accepted the extension")
			}

			if !strings.Contains(err.Error(), "extension 1 (broken") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not name extension 1 (broken) and %q", err, tc.want)
			}

			if tc.name != "bad constraint" && !errors.Is(err, ErrInvalidExtension) {
				t.Errorf("error %v is not ErrInvalidExtension", err)
			}

			if out.Len() != 0 {
				t.Errorf("%d bytes written despite the error", out.Len())
			}
		})
	}
}

func TestBuildCleansUp(t *testing.T) {
	dir := t.TempDir()
	exts := []Extension{tarExtension{name: "x", entries: map[string]string{"manifest.yaml": manifestYAML("v1alpha1", ""), "rootfs/a": "a"}}}

	if err := Build(t.Context(), strings.NewReader("base"), exts, Options{Arch: "amd64", TalosVersion: release.MustParseVersion(talosVersion), TempDir: dir}, io.Discard); err != nil {
		t.Fatal(err)
	}

	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("temp dir not cleaned: %v", left)
	}
}

func TestBuildCancelled(t *testing.T) {
	fx := loadFixture(t)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()

	err := Build(ctx, bytes.NewReader(fx.base), []Extension{FromImage(fx.exts[0])}, Options{Arch: "amd64", TalosVersion: release.MustParseVersion(talosVersion), TempDir: t.TempDir()}, io.Discard)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("got %v, want context.Canceled", err)
	}
}

func BenchmarkBuild(b *testing.B) {
	fx := loadFixture(b)

	// A 64 MiB binary and the same as firmware make the numbers about data,
	// not fixed costs. Half random (the squashfs compressor gives up on
	// those blocks), half text-like, roughly like real binaries.
	big := make([]byte, 64<<20)
	_, _ = rand.NewChaCha8([32]byte{}).Read(big[:32<<20])

	for i := 32 << 20; i < len(big); i++ {
		big[i] = "kiln initramfs benchmark\n"[i%25]
	}

	layer, err := tarLayerOf(map[string][]byte{
		"manifest.yaml":                  []byte(manifestYAML("v1alpha1", ">= v1.0.0")),
		"rootfs/usr/local/bin/big":       big,
		"rootfs/usr/lib/firmware/big.fw": big,
	})
	if err != nil {
		b.Fatal(err)
	}

	bigImg, err := mutate.AppendLayers(emptyImage(), layer)
	if err != nil {
		b.Fatal(err)
	}

	exts := []Extension{FromImage(bigImg)}
	for _, img := range fx.exts {
		exts = append(exts, FromImage(img))
	}

	b.SetBytes(2 * int64(len(big)))
	b.ResetTimer()

	for b.Loop() {
		err := Build(b.Context(), bytes.NewReader(fx.base), exts, Options{Arch: "amd64", TalosVersion: release.MustParseVersion(talosVersion), TempDir: b.TempDir()}, io.Discard)
		if err != nil {
			b.Fatal(err)
		}
	}
}
