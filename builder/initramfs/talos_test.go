package initramfs

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/builder/cpio"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/squashfs"
	"github.com/kiln-dev/kiln/internal/taloskernel"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

// appended returns the entries of the extension archive Build appended
// (the last segment), decompressed in Go.
func appended(t *testing.T, out []byte) (map[string][]byte, cpio.Compression) {
	t.Helper()

	segs, err := cpio.Segments(bytes.NewReader(out), int64(len(out)))
	if err != nil {
		t.Fatalf("Segments: %v", err)
	}

	last := segs[len(segs)-1]
	sec := io.NewSectionReader(bytes.NewReader(out), last.Offset, last.Size)

	var r io.Reader

	switch last.Compression {
	case cpio.Zstd:
		d, err := zstd.NewReader(sec)
		if err != nil {
			t.Fatal(err)
		}

		defer d.Close()

		r = d
	case cpio.Xz:
		if r, err = xz.NewReader(sec); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("last segment is %s", last.Compression)
	}

	raw, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}

	_, contents, _ := cpioEntries(t, raw)

	return contents, last.Compression
}

func openLayer(t *testing.T, data []byte) *squashfs.Reader {
	t.Helper()

	r, err := squashfs.NewReader(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}

	return r
}

func buildWith(t *testing.T, base []byte, exts []Extension, version string) ([]byte, error) {
	t.Helper()

	var out bytes.Buffer

	err := Build(t.Context(), bytes.NewReader(base), exts, Options{Arch: "amd64", TalosVersion: release.MustParseVersion(version), ModTime: buildTime, TempDir: t.TempDir()}, &out)

	return out.Bytes(), err
}

func fixtureExtensions(t *testing.T) []Extension {
	t.Helper()

	var exts []Extension
	for _, img := range loadFixture(t).exts {
		exts = append(exts, FromImage(img))
	}

	return append(exts, SchematicExtension("376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba", []byte("customization: {}\n"), "https://factory.kiln.invalid"),
		EmbeddedConfigExtension([]byte("version: v1alpha1\n")))
}

// TestTalosKernelAccepts walks what Build writes for a zstd release (1.8
// and later) and an xz one (before 1.8) and fails on any segment or layer
// the Talos kernel could not read (internal/taloskernel states its
// configuration). Real readers agree: unsquashfs on every layer, xz and
// zstd on the appended archive.
func TestTalosKernelAccepts(t *testing.T) {
	fx := loadFixture(t)

	// Before 1.10 modules live in lib/modules, so the fixture's
	// usr/lib/modules extension makes no modules.dep layer there.
	for _, tc := range []struct {
		version string
		layers  string
		archive cpio.Compression
		images  int
	}{
		{"v1.13.0", "zstd", cpio.Zstd, 8},
		{"v1.8.0", "zstd", cpio.Zstd, 7},
		{"v1.7.6", "xz", cpio.Xz, 7},
	} {
		t.Run(tc.version, func(t *testing.T) {
			out, err := buildWith(t, fx.base, fixtureExtensions(t), tc.version)
			if err != nil {
				t.Fatal(err)
			}

			rep, err := taloskernel.CheckInitramfs(bytes.NewReader(out), int64(len(out)))
			if err != nil {
				t.Fatalf("the Talos kernel could not read it: %v", err)
			}

			// rootfs.sqsh of the base, then the layers.
			if len(rep.Layers) != tc.images {
				t.Errorf("found %d squashfs images, want %d: %+v", len(rep.Layers), tc.images, rep.Layers)
			}

			for _, l := range rep.Layers {
				if l.Name != "rootfs.sqsh" && l.Compression != tc.layers {
					t.Errorf("%s is %s, want %s", l.Name, l.Compression, tc.layers)
				}
			}

			files, comp := appended(t, out)
			if comp != tc.archive {
				t.Errorf("appended archive is %s, want %s", comp, tc.archive)
			}

			testfixture.RequireTool(t, "unsquashfs", "xz", "zstd")

			dir := t.TempDir()

			for name, data := range files {
				if !strings.HasSuffix(name, ".sqsh") {
					continue
				}

				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, data, 0o644); err != nil {
					t.Fatal(err)
				}

				if got := string(run(t, "", nil, "unsquashfs", "-s", p)); !strings.Contains(got, "Compression "+tc.layers+"\n") {
					t.Errorf("unsquashfs -s %s:\n%s", name, got)
				}

				run(t, "", nil, "unsquashfs", "-no-xattrs", "-d", filepath.Join(dir, "x-"+name), p)
			}

			segs, _ := cpio.Segments(bytes.NewReader(out), int64(len(out)))
			last := segs[len(segs)-1]
			tool := map[cpio.Compression]string{cpio.Zstd: "zstd", cpio.Xz: "xz"}[tc.archive]
			raw := run(t, "", out[last.Offset:last.Offset+last.Size], tool, "-d", "-c")

			if listed := strings.Fields(string(run(t, "", raw, "cpio", "-t", "--quiet"))); !slices.Contains(listed, "extensions.yaml") {
				t.Errorf("cpio -t of the %s archive: %v", tool, listed)
			}

			if tc.archive == cpio.Xz {
				p := filepath.Join(dir, "archive.xz")
				if err := os.WriteFile(p, out[last.Offset:last.Offset+last.Size], 0o644); err != nil {
					t.Fatal(err)
				}

				if info := string(run(t, "", nil, "xz", "--robot", "--list", p)); !strings.Contains(info, "CRC32") {
					t.Errorf("xz --list: the archive's check is not CRC32:\n%s", info)
				}
			}
		})
	}
}

// TestModulesLayer checks the modules.dep layer against Debian's depmod run
// on the same tree Talos's imager would give it: the release's module tree
// (from rootfs.sqsh) with the extension's modules copied in.
func TestModulesLayer(t *testing.T) {
	fx := loadFixture(t)

	out, err := buildWith(t, fx.base, fixtureExtensions(t), talosVersion)
	if err != nil {
		t.Fatal(err)
	}

	files, _ := appended(t, out)
	layer := openLayer(t, files["modules.dep.sqsh"])
	kver := demo.DefaultKernelVersion
	dir := "usr/lib/modules/" + kver

	ents, err := layer.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}

	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}

	want := []string{"modules.alias", "modules.alias.bin", "modules.builtin", "modules.builtin.alias.bin", "modules.builtin.bin",
		"modules.builtin.modinfo", "modules.dep", "modules.dep.bin", "modules.devname", "modules.order", "modules.softdep",
		"modules.symbols", "modules.symbols.bin"}
	if !slices.Equal(names, want) {
		t.Errorf("layer holds %v, want %v", names, want)
	}

	dep, _ := fs.ReadFile(layer, dir+"/modules.dep")
	for _, line := range []string{"extras/drbd.ko: kernel/lib/libcrc32c.ko\n", "extras/drbd_transport_tcp.ko: extras/drbd.ko kernel/lib/libcrc32c.ko\n"} {
		if !strings.Contains(string(dep), line) {
			t.Errorf("modules.dep lacks %q:\n%s", line, dep)
		}
	}

	// The same tree, by hand: the base from rootfs.sqsh, the extension's
	// modules on top, and Debian's depmod with Talos's configuration.
	testfixture.RequireTool(t, "depmod")

	root := t.TempDir()
	tree := filepath.Join(root, "lib", "modules", kver)
	base := rootfsOf(t, fx.base)

	err = fs.WalkDir(base, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}

		data, err := fs.ReadFile(base, p)
		if err != nil {
			return err
		}

		return writeFileAll(filepath.Join(tree, strings.TrimPrefix(p, dir)), data)
	})
	if err != nil {
		t.Fatal(err)
	}

	drbd := fileFromImageT(t, fx.exts[3], "rootfs/"+dir+"/extras/drbd.ko")
	tcp := fileFromImageT(t, fx.exts[3], "rootfs/"+dir+"/extras/drbd_transport_tcp.ko")

	if err := writeFileAll(filepath.Join(tree, "extras/drbd.ko"), drbd); err != nil {
		t.Fatal(err)
	}

	if err := writeFileAll(filepath.Join(tree, "extras/drbd_transport_tcp.ko"), tcp); err != nil {
		t.Fatal(err)
	}

	conf := filepath.Join(root, "10-extra-modules.conf")
	if err := os.WriteFile(conf, []byte("search extras built-in\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	run(t, "", nil, "depmod", "--all", "--basedir", root, "--config", conf, kver)

	for _, name := range want {
		wantData, err := os.ReadFile(filepath.Join(tree, name))
		if err != nil {
			t.Fatal(err)
		}

		got, err := fs.ReadFile(layer, dir+"/"+name)
		if err != nil || !bytes.Equal(got, wantData) {
			t.Errorf("%s: %d bytes, %v; Debian's depmod wrote %d bytes:\n%q\n%q", name, len(got), err, len(wantData), got, wantData)
		}
	}
}

func writeFileAll(p string, data []byte) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}

	return os.WriteFile(p, data, 0o644)
}

func fileFromImageT(t *testing.T, img v1.Image, p string) []byte {
	t.Helper()

	data, err := fileFromImage(img, p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}

	return data
}

// rootfsOf opens rootfs.sqsh of a release initramfs.
func rootfsOf(t *testing.T, base []byte) *squashfs.Reader {
	t.Helper()

	d, err := zstd.NewReader(bytes.NewReader(base))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()

	raw, err := io.ReadAll(d)
	if err != nil {
		t.Fatal(err)
	}

	_, contents, _ := cpioEntries(t, raw)

	return openLayer(t, contents["rootfs.sqsh"])
}

// TestLayerOrderTwelve: with 12 extensions Talos lists the layers as
// strings sort their directory names, 0, 1, 10, 11, 2, ..., 9.
func TestLayerOrderTwelve(t *testing.T) {
	var exts []Extension

	for i := range 12 {
		exts = append(exts, tarExtension{name: "ext" + strconv.Itoa(i), entries: map[string]string{
			"manifest.yaml":                                  strings.Replace(manifestYAML("v1alpha1", ">= v1.0.0"), "name: test", "name: ext"+strconv.Itoa(i), 1),
			"rootfs/usr/local/share/order":                   strconv.Itoa(i),
			"rootfs/usr/lib/firmware/fw.bin":                 "firmware of " + strconv.Itoa(i),
			"rootfs/usr/local/share/only-" + strconv.Itoa(i): "x",
		}})
	}

	out, err := buildWith(t, loadFixture(t).base, exts, talosVersion)
	if err != nil {
		t.Fatal(err)
	}

	files, _ := appended(t, out)

	var cfg Config
	if err := yaml.Unmarshal(files["extensions.yaml"], &cfg); err != nil {
		t.Fatal(err)
	}

	wantOrder := []int{0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9}
	if got := LayerOrder(12); !slices.Equal(got, wantOrder) {
		t.Errorf("LayerOrder(12) = %v, want %v", got, wantOrder)
	}

	if len(cfg.Layers) != 12 {
		t.Fatalf("%d layers, want 12", len(cfg.Layers))
	}

	for pos, i := range wantOrder {
		l := cfg.Layers[pos]
		if l.Image != strconv.Itoa(i)+".sqsh" || l.Metadata.Name != "ext"+strconv.Itoa(i) {
			t.Errorf("layer %d: %s %s, want %d.sqsh ext%d", pos, l.Image, l.Metadata.Name, i, i)
		}

		got, err := fs.ReadFile(openLayer(t, files[l.Image]), "usr/local/share/order")
		if err != nil || string(got) != strconv.Itoa(i) {
			t.Errorf("%s holds %q, %v; want extension %d's file", l.Image, got, err, i)
		}
	}

	// Firmware overrides in layer order too: the last listed, 9, wins.
	if got := string(files["usr/lib/firmware/fw.bin"]); got != "firmware of 9" {
		t.Errorf("usr/lib/firmware/fw.bin = %q, want extension 9's", got)
	}
}

// TestFirmwarePathByVersion: firmware (and microcode) is taken from
// /lib/firmware before Talos 1.10 and /usr/lib/firmware from 1.10; the
// other directory stays in the layer.
func TestFirmwarePathByVersion(t *testing.T) {
	ext := tarExtension{name: "fw", entries: map[string]string{
		"manifest.yaml":                          manifestYAML("v1alpha1", ">= v1.0.0"),
		"rootfs/lib/firmware/old.bin":            "old",
		"rootfs/lib/firmware/intel-ucode/06-01":  "ucode-old",
		"rootfs/usr/lib/firmware/new.bin":        "new",
		"rootfs/usr/lib/firmware/intel-ucode/06": "ucode-new",
	}}

	for _, tc := range []struct {
		version, moved, kept, ucode string
	}{
		{"v1.9.5", "lib/firmware", "usr/lib/firmware", "ucode-old"},
		{"v1.10.0", "usr/lib/firmware", "lib/firmware", "ucode-new"},
	} {
		t.Run(tc.version, func(t *testing.T) {
			out, err := buildWith(t, loadFixture(t).base, []Extension{ext}, tc.version)
			if err != nil {
				t.Fatal(err)
			}

			files, _ := appended(t, out)
			layer := openLayer(t, files["0.sqsh"])

			movedFile := map[string]string{"lib/firmware": "old.bin", "usr/lib/firmware": "new.bin"}

			if _, ok := files[tc.moved+"/"+movedFile[tc.moved]]; !ok {
				t.Errorf("%s/%s is not in the initramfs", tc.moved, movedFile[tc.moved])
			}

			if _, err := layer.Stat(tc.moved); err == nil {
				t.Errorf("%s is still in the layer", tc.moved)
			}

			if _, err := layer.Stat(tc.kept + "/" + movedFile[tc.kept]); err != nil {
				t.Errorf("%s/%s left the layer: %v", tc.kept, movedFile[tc.kept], err)
			}

			// The uncompressed microcode archive in front.
			_, contents, _ := cpioEntries(t, out)
			if got := string(contents["kernel/x86/microcode/GenuineIntel.bin"]); got != tc.ucode {
				t.Errorf("GenuineIntel.bin = %q, want %q", got, tc.ucode)
			}
		})
	}
}

// paxExtension is an extension given as explicit tar headers.
type paxExtension struct {
	name    string
	headers []*tar.Header
	data    map[string]string
}

func (e paxExtension) Name() string { return e.name }

func (e paxExtension) Open(context.Context) (io.ReadCloser, error) {
	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)

	for _, h := range e.headers {
		h.Size = int64(len(e.data[h.Name]))
		h.Format = tar.FormatPAX

		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}

		if _, err := tw.Write([]byte(e.data[h.Name])); err != nil {
			return nil, err
		}
	}

	if err := tw.Close(); err != nil {
		return nil, err
	}

	return io.NopCloser(&buf), nil
}

// TestSELinuxLabels: a layer keeps exactly the security.selinux labels of
// the extension's tar entries (the rootfs directory's on the layer root)
// and no other xattr; firmware, moved into the initramfs, has none.
func TestSELinuxLabels(t *testing.T) {
	label := func(l string) map[string]string { return map[string]string{"SCHILY.xattr.security.selinux": l} }
	ext := paxExtension{name: "labels", data: map[string]string{
		"manifest.yaml":                     manifestYAML("v1alpha1", ">= v1.0.0"),
		"rootfs/usr/local/bin/tool":         "tool",
		"rootfs/usr/lib/firmware/x.bin":     "fw",
		"rootfs/usr/local/share/plain":      "p",
		"rootfs/usr/local/share/other-attr": "o",
		"rootfs/usr/local/share/empty-lbl":  "e",
	}, headers: []*tar.Header{
		{Name: "manifest.yaml", Mode: 0o644},
		{Name: "rootfs", Typeflag: tar.TypeDir, Mode: 0o755, PAXRecords: label("system_u:object_r:root_t:s0")},
		{Name: "rootfs/usr/local/bin", Typeflag: tar.TypeDir, Mode: 0o750, PAXRecords: label("system_u:object_r:bin_t:s0")},
		{Name: "rootfs/usr/local/bin/tool", Mode: 0o755, PAXRecords: label("system_u:object_r:tool_exec_t:s0")},
		{Name: "rootfs/usr/local/bin/alias", Typeflag: tar.TypeSymlink, Linkname: "tool", PAXRecords: label("system_u:object_r:link_t:s0")},
		{Name: "rootfs/usr/lib/firmware/x.bin", Mode: 0o644, PAXRecords: label("system_u:object_r:firmware_t:s0")},
		{Name: "rootfs/usr/local/share/plain", Mode: 0o644},
		{Name: "rootfs/usr/local/share/other-attr", Mode: 0o644, PAXRecords: map[string]string{
			"SCHILY.xattr.user.origin": "kiln", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
		}},
		{Name: "rootfs/usr/local/share/empty-lbl", Mode: 0o644, PAXRecords: label("")},
	}}

	out, err := buildWith(t, loadFixture(t).base, []Extension{ext}, talosVersion)
	if err != nil {
		t.Fatal(err)
	}

	files, _ := appended(t, out)
	layer := openLayer(t, files["0.sqsh"])

	for p, want := range map[string]string{
		".":                          "system_u:object_r:root_t:s0",
		"usr/local/bin":              "system_u:object_r:bin_t:s0",
		"usr/local/bin/tool":         "system_u:object_r:tool_exec_t:s0",
		"usr/local/bin/alias":        "system_u:object_r:link_t:s0",
		"usr/local/share/plain":      "",
		"usr/local/share/other-attr": "",
		"usr/local/share/empty-lbl":  "",
		"usr/local/share":            "",
	} {
		x, err := layer.Xattrs(p)
		if err != nil {
			t.Errorf("%s: %v", p, err)
			continue
		}

		if want == "" && len(x) != 0 || want != "" && (len(x) != 1 || x["security.selinux"] != want) {
			t.Errorf("%s: xattrs %v, want only security.selinux=%q", p, x, want)
		}
	}

	// Directories are rwx for their owner, as Talos's extraction makes them.
	if fi, err := layer.Stat("usr/local/bin"); err != nil || fi.Mode().Perm() != 0o750 {
		t.Errorf("usr/local/bin mode %v, %v; want 0750", fi.Mode(), err)
	}

	if _, ok := files["usr/lib/firmware/x.bin"]; !ok {
		t.Error("the labelled firmware did not move to the initramfs")
	}

	// The real tools agree, as root (security.* needs privilege).
	if os.Geteuid() != 0 {
		return
	}

	testfixture.RequireTool(t, "unsquashfs", "getfattr")

	dir := t.TempDir()
	img := filepath.Join(dir, "0.sqsh")

	if err := os.WriteFile(img, files["0.sqsh"], 0o644); err != nil {
		t.Fatal(err)
	}

	x := filepath.Join(dir, "x")
	run(t, "", nil, "unsquashfs", "-q", "-d", x, img)

	dump := string(run(t, "", nil, "getfattr", "--absolute-names", "-R", "-d", "-m", "-", x))
	for _, want := range []string{"usr/local/bin/tool\nsecurity.selinux=\"system_u:object_r:tool_exec_t:s0\"", "user.origin"} {
		if strings.Contains(dump, want) != (want != "user.origin") {
			t.Errorf("getfattr -R -d: presence of %q wrong:\n%s", want, dump)
		}
	}
}

// TestModulesNeedTheRelease: modules for another kernel than the
// release's, or a release without a module tree, are refused with the
// reason, as Talos's imager fails on them.
func TestModulesNeedTheRelease(t *testing.T) {
	fx := loadFixture(t)
	ext := tarExtension{name: "othermods", entries: map[string]string{
		"manifest.yaml": manifestYAML("v1alpha1", ">= v1.0.0"),
		"rootfs/usr/lib/modules/9.9.9-other/extras/x.ko": "\x7fELF",
	}}

	_, err := buildWith(t, fx.base, []Extension{ext}, talosVersion)
	if err == nil || !strings.Contains(err.Error(), "nothing for the release's kernel "+demo.DefaultKernelVersion) ||
		!strings.Contains(err.Error(), "9.9.9-other") {
		t.Errorf("modules for another kernel: %v", err)
	}

	_, err = buildWith(t, []byte("not an initramfs"), []Extension{ext}, talosVersion)
	if err == nil || !strings.Contains(err.Error(), "release initramfs") {
		t.Errorf("no rootfs.sqsh: %v", err)
	}
}

// TestModulesBefore110: before Talos 1.10 modules live in /lib/modules,
// in the release's rootfs.sqsh and in extensions; the modules.dep layer
// follows, and extension modules under /usr/lib/modules are ignored, as
// Talos ignores them.
func TestModulesBefore110(t *testing.T) {
	fx := loadFixture(t)
	kver := demo.DefaultKernelVersion
	usrDir := "usr/lib/modules/" + kver

	// The fixture release's rootfs.sqsh with its module tree moved to
	// lib/modules, in a zstd cpio as Talos 1.8-1.9 ship it.
	base := rootfsOf(t, fx.base)

	var img memWriterAt

	w, err := squashfs.NewWriter(&img, squashfs.Options{ZstdLevel: zstd.SpeedFastest})
	if err != nil {
		t.Fatal(err)
	}

	err = fs.WalkDir(base, usrDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}

		data, err := fs.ReadFile(base, p)
		if err != nil {
			return err
		}

		return w.Create("lib/modules/"+kver+strings.TrimPrefix(p, usrDir), 0o644, bytes.NewReader(data), nil)
	})
	if err != nil {
		t.Fatal(err)
	}

	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}

	var raw bytes.Buffer

	cw := cpio.NewWriter(&raw)
	_ = cw.WriteHeader(&cpio.Header{Name: "rootfs.sqsh", Mode: cpio.TypeReg | 0o644, Size: int64(len(img.b))})
	_, _ = cw.Write(img.b)
	_ = cw.Close()

	enc, _ := zstd.NewWriter(nil)
	oldBase := enc.EncodeAll(raw.Bytes(), nil)

	drbd := fileFromImageT(t, fx.exts[3], "rootfs/"+usrDir+"/extras/drbd.ko")
	ext := tarExtension{name: "oldmods", entries: map[string]string{
		"manifest.yaml": manifestYAML("v1alpha1", ">= v1.0.0"),
		"rootfs/lib/modules/" + kver + "/extras/drbd.ko":    string(drbd),
		"rootfs/usr/lib/modules/" + kver + "/extras/new.ko": "ignored before 1.10",
	}}

	out, err := buildWith(t, oldBase, []Extension{ext}, "v1.9.5")
	if err != nil {
		t.Fatal(err)
	}

	files, _ := appended(t, out)

	dep, err := fs.ReadFile(openLayer(t, files["modules.dep.sqsh"]), "lib/modules/"+kver+"/modules.dep")
	if err != nil || string(dep) != "kernel/lib/libcrc32c.ko:\nextras/drbd.ko: kernel/lib/libcrc32c.ko\n" {
		t.Errorf("lib/modules/%s/modules.dep = %q, %v", kver, dep, err)
	}

	// From 1.10 the same extension's lib/modules is just files.
	out, err = buildWith(t, fx.base, []Extension{tarExtension{name: "oldmods", entries: map[string]string{
		"manifest.yaml": manifestYAML("v1alpha1", ">= v1.0.0"),
		"rootfs/lib/modules/" + kver + "/extras/drbd.ko": string(drbd),
	}}}, "v1.10.0")
	if err != nil {
		t.Fatal(err)
	}

	if files, _ := appended(t, out); files["modules.dep.sqsh"] != nil {
		t.Error("1.10 made a modules.dep layer for modules under lib/modules")
	}
}

type memWriterAt struct{ b []byte }

func (w *memWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(w.b) {
		w.b = append(w.b, make([]byte, end-len(w.b))...)
	}

	return copy(w.b[off:], p), nil
}
