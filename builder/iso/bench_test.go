package iso_test

// Run by hand, e.g.:
//
//	go test -run '^$' -bench . -benchtime 3x ./builder/iso/
//
// BenchmarkWrite times iso.Write; BenchmarkXorriso times the Talos imager's
// sd-boot xorrisofs command (talos-formats.md §3.4) on the same tree and the
// same efiboot.img. The ESP is built once, outside the timers
// (BenchmarkESP times it alone). The page cache is not dropped.
//
// Besides -benchmem's allocations, each reports what the process moved
// through read/write-like system calls per operation (/proc/self/io
// rchar/wchar, copy_file_range included) and the number of those calls:
// the copies the writers make. BenchmarkXorriso's child is not counted.

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/iso"
)

type benchTree struct {
	dir     string // source root, laid out as the ISO tree
	files   []iso.File
	espPath string
}

func writeRandom(b *testing.B, p string, seed uint64, n int) {
	b.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(p, randBytes(seed, n), 0o644); err != nil {
		b.Fatal(err)
	}
}

// newBenchTree: a 100 MiB UKI, systemd-boot, loader files, and an image
// cache of three 64 MiB blobs plus 300 small manifests (~300 MB in all).
func newBenchTree(b *testing.B) benchTree {
	b.Helper()
	bt := benchTree{dir: filepath.Join(b.TempDir(), "tree")}
	add := func(p string, seed uint64, n int) {
		writeRandom(b, filepath.Join(bt.dir, p), seed, n)
		bt.files = append(bt.files, iso.File{Path: p, Size: int64(n), Source: filepath.Join(bt.dir, p)})
	}
	add("EFI/BOOT/BOOTX64.EFI", 1, 120_000)
	add("EFI/Linux/Talos-v1.13.0.efi", 2, 100<<20)
	add("loader/loader.conf", 3, 64)
	add("loader/random-seed", 4, 32)
	for i := range 3 {
		add(fmt.Sprintf("imagecache/blob/sha256-%064d", i), uint64(10+i), 64<<20)
	}
	for i := range 300 {
		add(fmt.Sprintf("imagecache/manifests/r%02d/digest/sha256-%064d", i%20, i), uint64(100+i), 1000+i*37)
	}
	var ef []esp.File
	for _, f := range bt.files[:4] {
		src := f.Source
		ef = append(ef, esp.File{Path: f.Path, Size: f.Size, ReadOnly: f.Path == "loader/random-seed",
			Open: func() (io.ReadCloser, error) { return os.Open(src) }})
	}
	bt.espPath = filepath.Join(filepath.Dir(bt.dir), "efiboot.img")
	out, err := os.Create(bt.espPath)
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	if _, err := esp.Build(context.Background(), out, ef, esp.Options{}); err != nil {
		b.Fatal(err)
	}
	return bt
}

// procIO reads this process's I/O counters (Linux); nil elsewhere.
func procIO() map[string]int64 {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return nil
	}
	m := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(l, ": ")
		if n, err := strconv.ParseInt(v, 10, 64); ok && err == nil {
			m[k] = n
		}
	}
	return m
}

// reportIO reports the I/O since before, per operation, after the loop.
func reportIO(b *testing.B, before map[string]int64) {
	after := procIO()
	if before == nil || after == nil || b.N == 0 {
		return
	}
	n := float64(b.N)
	b.ReportMetric(float64(after["rchar"]-before["rchar"])/n, "read-B/op")
	b.ReportMetric(float64(after["wchar"]-before["wchar"])/n, "written-B/op")
	b.ReportMetric(float64(after["syscr"]+after["syscw"]-before["syscr"]-before["syscw"])/n, "io-calls/op")
}

func BenchmarkESP(b *testing.B) {
	bt := newBenchTree(b)
	var ef []esp.File
	for _, f := range bt.files[:4] {
		src := f.Source
		ef = append(ef, esp.File{Path: f.Path, Size: f.Size, Open: func() (io.ReadCloser, error) { return os.Open(src) }})
	}
	out, err := os.Create(filepath.Join(b.TempDir(), "esp.img"))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	b.ResetTimer()
	io0 := procIO()
	defer reportIO(b, io0)
	for b.Loop() {
		if _, err := esp.Build(context.Background(), out, ef, esp.Options{}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkWrite(b *testing.B) {
	bt := newBenchTree(b)
	out, err := os.Create(filepath.Join(b.TempDir(), "talos.iso"))
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	b.ResetTimer()
	io0 := procIO()
	defer reportIO(b, io0)
	for b.Loop() {
		if _, err := iso.Write(context.Background(), out, iso.Params{
			VolumeID: iso.VolumeID("v1.13.0"), Files: bt.files, ESP: bt.espPath, TempDir: filepath.Dir(bt.dir),
		}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkXorriso(b *testing.B) {
	mustTool(b, "xorriso")
	bt := newBenchTree(b)
	// xorrisofs reads the scratch tree, which holds efiboot.img too (-m excludes it).
	if err := os.Link(bt.espPath, filepath.Join(bt.dir, "efiboot.img")); err != nil {
		b.Fatal(err)
	}
	out := filepath.Join(b.TempDir(), "talos.iso")
	b.ResetTimer()
	for b.Loop() {
		os.Remove(out)
		cmd := exec.Command("xorriso", "-as", "mkisofs",
			"-e", "--interval:appended_partition_2:all::",
			"-append_partition", "2", "0xef", filepath.Join(bt.dir, "efiboot.img"),
			"-partition_cyl_align", "all", "-partition_offset", "16", "-iso_mbr_part_type", "0x83",
			"-no-emul-boot", "-m", "efiboot.img", "-iso-level", "3", "-R",
			"-V", iso.VolumeID("v1.13.0"), "-o", out, bt.dir)
		if o, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("xorriso: %v\n%s", err, o)
		}
	}
}

// BenchmarkESPAndWrite times what the builder does for an ISO: the ESP of
// the boot files, then the ISO. "file": the ESP built to a file and
// appended (Params.ESP); "in-place": built into the ISO (Params.BuildESP).
func BenchmarkESPAndWrite(b *testing.B) {
	bt := newBenchTree(b)
	var ef []esp.File
	for _, f := range bt.files[:4] {
		src := f.Source
		ef = append(ef, esp.File{Path: f.Path, Size: f.Size, ReadOnly: f.Path == "loader/random-seed",
			Open: func() (io.ReadCloser, error) { return os.Open(src) }})
	}
	// The boot files reach the ISO as readers, as the builder gives them.
	files := append([]iso.File(nil), bt.files...)
	for i := range files[:4] {
		src := files[i].Source
		files[i].Source, files[i].Open = "", func() (io.ReadCloser, error) { return os.Open(src) }
	}
	tmp := b.TempDir()
	opts := esp.Options{MinSize: 10<<20 + 120<<20}
	for _, mode := range []string{"file", "in-place"} {
		b.Run(mode, func(b *testing.B) {
			out, err := os.Create(filepath.Join(tmp, "talos.iso"))
			if err != nil {
				b.Fatal(err)
			}
			defer out.Close()
			io0 := procIO()
			defer reportIO(b, io0)
			for b.Loop() {
				ctx := context.Background()
				p := iso.Params{VolumeID: iso.VolumeID("v1.13.0"), Files: files, TempDir: tmp}
				if mode == "file" {
					p.ESP = filepath.Join(tmp, "efiboot.img")
					f, err := os.Create(p.ESP)
					if err != nil {
						b.Fatal(err)
					}
					_, err = esp.Build(ctx, f, ef, opts)
					if cerr := f.Close(); err == nil {
						err = cerr
					}
					if err != nil {
						b.Fatal(err)
					}
				} else {
					size, err := esp.RequiredSize(ef, opts)
					if err != nil {
						b.Fatal(err)
					}
					p.ESPSize = size
					p.BuildESP = func(ctx context.Context, out *os.File, offset, size int64) error {
						_, err := esp.BuildAt(ctx, out, offset, size, ef, opts)
						return err
					}
				}
				if _, err := iso.Write(ctx, out, p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
