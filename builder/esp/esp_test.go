package esp_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/fat32"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

func memFile(p string, data []byte, ro bool) esp.File {
	return esp.File{
		Path:     p,
		Size:     int64(len(data)),
		Open:     func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil },
		ReadOnly: ro,
	}
}

func randBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

// testTree is a Talos-like ESP tree with awkward sizes and names.
func testTree() (files []esp.File, want map[string][]byte) {
	want = map[string][]byte{
		"EFI/BOOT/BOOTX64.EFI":            randBytes(1, 130_000),
		"EFI/Linux/Talos-v1.13.0.efi":     randBytes(2, 5<<20+7),
		"loader/loader.conf":              []byte("# systemd-boot configuration\n\ntimeout 10\n\nsecure-boot-enroll off\n"),
		"loader/random-seed":              make([]byte, 32),
		"loader/entries/empty.conf":       {},
		"EFI/a-rather-long-file-name.txt": randBytes(3, 512),
		"EFI/exact-cluster":               randBytes(4, 2048),
	}
	for p, d := range want {
		files = append(files, memFile(p, d, p == "loader/random-seed"))
	}
	return files, want
}

func mustTool(t *testing.T, name string) {
	t.Helper()
	// Fails under make (KILN_REQUIRE_FIXTURES=1), skips for a plain go test.
	testfixture.RequireTool(t, name)
}

func fsck(t *testing.T, img string) string {
	t.Helper()
	mustTool(t, "fsck.vfat")
	out, err := exec.Command("fsck.vfat", "-n", "-v", img).CombinedOutput()
	if err != nil {
		t.Fatalf("fsck.vfat -n %s: %v\n%s", img, err, out)
	}
	for _, bad := range []string{"Invalid", "Reclaim", "Free cluster summary", "differ", "Dirty", "wrong"} {
		if strings.Contains(string(out), bad) {
			t.Fatalf("fsck.vfat -n reported %q:\n%s", bad, out)
		}
	}
	return string(out)
}

func build(t *testing.T, files []esp.File, opts esp.Options) (string, esp.Result) {
	t.Helper()
	img := filepath.Join(t.TempDir(), "efiboot.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := esp.Build(context.Background(), f, files, opts)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	if fi, _ := f.Stat(); fi.Size() != res.Size {
		t.Fatalf("image is %d bytes, Result.Size = %d", fi.Size(), res.Size)
	}
	return img, res
}

func TestBuild512(t *testing.T) {
	mustTool(t, "mcopy")
	for _, tc := range []struct {
		name    string
		minSize int64
		want    esp.Type
	}{
		{"fat16", 0, esp.FAT16},
		{"fat32", 64 * esp.MiB, esp.FAT32},
	} {
		t.Run(tc.name, func(t *testing.T) {
			files, want := testTree()
			img, res := build(t, files, esp.Options{MinSize: tc.minSize})
			if res.Type != tc.want {
				t.Fatalf("type = %s (%d clusters), want %s", res.Type, res.Clusters, tc.want)
			}
			fsck(t, img)
			for p, data := range want {
				got, err := exec.Command("mcopy", "-n", "-i", img, "::/"+p, "-").Output()
				if err != nil {
					t.Fatalf("mcopy %s: %v", p, err)
				}
				if !bytes.Equal(got, data) {
					t.Fatalf("mcopy %s: %d bytes differ from the %d written", p, len(got), len(data))
				}
			}
			attr, err := exec.Command("mattrib", "-i", img, "::/loader/random-seed").Output()
			if err != nil {
				t.Fatalf("mattrib: %v", err)
			}
			if !strings.Contains(strings.SplitN(string(attr), ":", 2)[0], "R") {
				t.Fatalf("random-seed not read-only: %q", attr)
			}
			dir, err := exec.Command("mdir", "-/", "-i", img, "::").Output()
			if err != nil {
				t.Fatalf("mdir: %v", err)
			}
			if !strings.Contains(string(dir), "Volume in drive : is EFI") {
				t.Fatalf("mdir: no EFI label:\n%s", dir)
			}
		})
	}
}

func TestBuildAtFAT12(t *testing.T) {
	img := filepath.Join(t.TempDir(), "small.img")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// A partition in the middle of a bigger file: bytes around it untouched.
	if err := f.Truncate(4 << 20); err != nil {
		t.Fatal(err)
	}
	marker := bytes.Repeat([]byte{0xA5}, 512)
	if _, err := f.WriteAt(marker, 1<<20-512); err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(marker, 3<<20); err != nil {
		t.Fatal(err)
	}
	data := randBytes(9, 70_000)
	res, err := esp.BuildAt(context.Background(), f, 1<<20, 2<<20,
		[]esp.File{memFile("EFI/BOOT/BOOTX64.EFI", data, false)}, esp.Options{})
	if err != nil {
		t.Fatalf("BuildAt: %v", err)
	}
	if res.Type != esp.FAT12 {
		t.Fatalf("type = %s, want FAT12", res.Type)
	}
	for _, off := range []int64{1<<20 - 512, 3 << 20} {
		got := make([]byte, 512)
		if _, err := f.ReadAt(got, off); err != nil || !bytes.Equal(got, marker) {
			t.Fatalf("bytes at %d outside the partition changed", off)
		}
	}
	part := filepath.Join(t.TempDir(), "part.img")
	b := make([]byte, 2<<20)
	if _, err := f.ReadAt(b, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(part, b, 0o600); err != nil {
		t.Fatal(err)
	}
	fsck(t, part)
	mustTool(t, "mcopy")
	got, err := exec.Command("mcopy", "-n", "-i", part, "::/EFI/BOOT/BOOTX64.EFI", "-").Output()
	if err != nil || !bytes.Equal(got, data) {
		t.Fatalf("mcopy: err %v, equal %v", err, bytes.Equal(got, data))
	}
}

// TestBuild4K: mtools cannot read 4096-byte-sector FAT at all (not even
// mkfs.vfat's), so the files are read back through go-diskfs and the
// structure is checked with fsck.vfat.
func TestBuild4K(t *testing.T) {
	files, want := testTree()
	img, res := build(t, files, esp.Options{SectorSize: 4096})
	if res.Type != esp.FAT32 || res.Clusters < 65525 || res.Size != esp.MinFAT32Size4K {
		t.Fatalf("result = %+v, want FAT32 of %d bytes with >= 65525 clusters", res, esp.MinFAT32Size4K)
	}
	fsck(t, img)
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fsys, err := fat32.Read(file.New(f, true), res.Size, 0, 4096)
	if err != nil {
		t.Fatalf("fat32.Read: %v", err)
	}
	for p, data := range want {
		if len(data) == 0 {
			// go-diskfs cannot open an empty file that has no cluster,
			// which is how FAT stores it (and how fixup leaves it).
			fi, err := fsys.Stat(p)
			if err != nil || fi.Size() != 0 {
				t.Fatalf("stat %s: %v", p, err)
			}
			continue
		}
		// One Read of the exact size: go-diskfs's File.Read overshoots the
		// end of file when a read starts mid-cluster, so io.ReadAll misreads.
		fh, err := fsys.OpenFile("/"+p, os.O_RDONLY)
		if err != nil {
			t.Fatalf("open %s: %v", p, err)
		}
		got := make([]byte, len(data))
		_, err = io.ReadFull(fh, got)
		if err != nil {
			t.Fatalf("read %s: %v", p, err)
		}
		if !bytes.Equal(got, data) {
			t.Fatalf("%s: %d bytes read differ from the %d written", p, len(got), len(data))
		}
	}

	// Too small for a valid 4K FAT32: refused, not silently invalid.
	small, err := os.Create(filepath.Join(t.TempDir(), "small.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer small.Close()
	_, err = esp.BuildAt(context.Background(), small, 0, 100*esp.MiB, files, esp.Options{SectorSize: 4096})
	if !errors.Is(err, esp.ErrTooSmall) {
		t.Fatalf("BuildAt 100 MiB at 4K: err = %v, want ErrTooSmall", err)
	}
}

func TestReproducible(t *testing.T) {
	files, _ := testTree()
	opts := esp.Options{ModTime: time.Date(2026, 8, 1, 12, 0, 0, 0, time.UTC)}
	a, _ := build(t, files, opts)

	// FAT times have a 2 s step: builds in different steps catch any time
	// taken from the clock (the clock-stamped label of go-diskfs's FAT32
	// attempt, left in the free clusters of a FAT16 ESP, once was).
	types := map[esp.Type]bool{}
	for _, minSize := range []int64{0, 12 << 20, 40 << 20} {
		o := opts
		o.MinSize = minSize
		// One small file, so the free clusters stay free.
		small := []esp.File{memFile("EFI/BOOT/BOOTX64.EFI", []byte("MZ"), false)}
		first, r := build(t, small, o)
		types[r.Type] = true
		time.Sleep(2100 * time.Millisecond)
		second, _ := build(t, small, o)
		fb, _ := os.ReadFile(first)
		sb, _ := os.ReadFile(second)
		if !bytes.Equal(fb, sb) {
			t.Fatalf("two %s builds (MinSize %d) two seconds apart differ", r.Type, minSize)
		}
	}
	if !types[esp.FAT16] || !types[esp.FAT32] {
		t.Fatalf("built %v; want FAT16 and FAT32 among them", types)
	}
	mustTool(t, "mdir")
	out, err := exec.Command("mdir", "-i", a, "::/loader").Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "2026-08-01") {
		t.Fatalf("mdir does not show the fixed time:\n%s", out)
	}
}

func TestErrors(t *testing.T) {
	never := func() (io.ReadCloser, error) { t.Fatal("Open called"); return nil, nil }
	f, err := os.Create(filepath.Join(t.TempDir(), "x.img"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		files []esp.File
		opts  esp.Options
		want  error
	}{
		{"4GiB", []esp.File{{Path: "big", Size: 1 << 32, Open: never}}, esp.Options{}, esp.ErrFileTooLarge},
		{"dup", []esp.File{memFile("a/b", nil, false), memFile("A/B", nil, false)}, esp.Options{}, esp.ErrInvalidPath},
		{"dotdot", []esp.File{memFile("../x", nil, false)}, esp.Options{}, esp.ErrInvalidPath},
		{"fileanddir", []esp.File{memFile("a", nil, false), memFile("a/b", nil, false)}, esp.Options{}, esp.ErrInvalidPath},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := esp.Build(ctx, f, tc.files, tc.opts); !errors.Is(err, tc.want) {
				t.Fatalf("Build: err = %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("short", func(t *testing.T) {
		bad := memFile("x", []byte("abc"), false)
		bad.Size = 4
		if _, err := esp.Build(ctx, f, []esp.File{bad}, esp.Options{}); err == nil || !strings.Contains(err.Error(), "declared") {
			t.Fatalf("Build with a short file: err = %v", err)
		}
	})
	t.Run("cancelled", func(t *testing.T) {
		c, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := esp.Build(c, f, []esp.File{memFile("x", nil, false)}, esp.Options{}); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}
