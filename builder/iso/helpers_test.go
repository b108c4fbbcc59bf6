package iso_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/iso"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

const (
	sdBoot     = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	loaderConf = "# systemd-boot configuration\n\ntimeout 10\n\nsecure-boot-enroll off\n"
	talosVer   = "v1.13.0"
)

var modTime = time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC)

func mustTool(t testing.TB, name string) {
	t.Helper()
	// Fails under make (KILN_REQUIRE_FIXTURES=1), skips for a plain go test.
	testfixture.RequireTool(t, name)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	mustTool(t, name)
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

// bootTree is the file list shared by the ESP and the ISO tree (the Talos
// sd-boot layout, talos-formats.md §3.2), plus extra ISO-only files.
type bootTree struct {
	esp   []esp.File
	iso   []iso.File
	bytes map[string][]byte // ISO path -> content, for read-back
}

func newBootTree(t testing.TB, dir, ukiPath, loader string, extra map[string][]byte) bootTree {
	t.Helper()
	bt := bootTree{bytes: map[string][]byte{}}
	add := func(p, src string, data []byte, ro bool) {
		if src == "" {
			src = filepath.Join(dir, "src-"+filepath.Base(p))
			if err := os.WriteFile(src, data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		bt.bytes[p] = b
		bt.iso = append(bt.iso, iso.File{Path: p, Size: int64(len(b)), Source: src})
		bt.esp = append(bt.esp, esp.File{Path: p, Size: int64(len(b)), ReadOnly: ro,
			Open: func() (io.ReadCloser, error) { return os.Open(src) }})
	}
	add("EFI/BOOT/BOOTX64.EFI", sdBoot, nil, false)
	add("EFI/Linux/Talos-"+talosVer+".efi", ukiPath, nil, false)
	add("loader/loader.conf", "", []byte(loader), false)
	add("loader/random-seed", "", make([]byte, 32), true)
	for p, data := range extra {
		data := data
		bt.bytes[p] = data
		bt.iso = append(bt.iso, iso.File{Path: p, Size: int64(len(data)),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }})
	}
	return bt
}

// buildISO builds the ESP and then the ISO into dir and returns the ISO path.
func buildISO(t testing.TB, dir string, bt bootTree, espMin int64) (string, iso.Layout) {
	t.Helper()
	ctx := context.Background()
	espPath := filepath.Join(dir, "efiboot.img")
	ef, err := os.Create(espPath)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := esp.Build(ctx, ef, bt.esp, esp.Options{MinSize: espMin, ModTime: modTime}); err != nil {
		t.Fatalf("esp.Build: %v", err)
	}
	ef.Close()
	isoPath := filepath.Join(dir, "talos.iso")
	f, err := os.Create(isoPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l, err := iso.Write(ctx, f, iso.Params{
		VolumeID:    iso.VolumeID(talosVer),
		VolumeSetID: iso.Label(talosVer),
		Files:       bt.iso,
		ESP:         espPath,
		ModTime:     modTime,
		TempDir:     dir,
	})
	if err != nil {
		t.Fatalf("iso.Write: %v", err)
	}
	return isoPath, l
}
