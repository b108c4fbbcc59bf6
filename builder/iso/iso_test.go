package iso_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/iso"
)

func TestVolumeID(t *testing.T) {
	for in, want := range map[string]string{
		"v1.13.0":                     "TALOS_V1_13_0",
		"v1.12.0-beta.1":              "TALOS_V1_12_0_BETA_1",
		"v1.14.0+dirty/x":             "TALOS_V1_14_0DIRTYX",
		"v1.14.0-alpha.0-84-gabcdefg": "TALOS_V1_14_0_ALPHA_0_84_GABCDEF",
	} {
		if got := iso.VolumeID(in); got != want {
			t.Errorf("VolumeID(%q) = %q, want %q", in, got, want)
		}
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

func fakeTree(t *testing.T, dir string) bootTree {
	uki := filepath.Join(dir, "fake-uki.efi")
	if err := os.WriteFile(uki, randBytes(1, 3<<20+5), 0o644); err != nil {
		t.Fatal(err)
	}
	extra := map[string][]byte{
		"imagecache/blob/sha256-" + strings.Repeat("ab", 32):                randBytes(2, 70_001),
		"imagecache/manifests/ghcr.io/siderolabs/kubelet/reference/v1.36.0": []byte(`{"schemaVersion":2}`),
		"a/b/c/d/e/f/g/h/i/j/deep.txt":                                      []byte("ten levels deep\n"),
		"exact-block":                                                       randBytes(3, 4096),
		"empty":                                                             {},
	}
	return newBootTree(t, dir, uki, loaderConf, extra)
}

func TestWriteReaders(t *testing.T) {
	for _, espMin := range []int64{0, 64 << 20} { // FAT16 ESP < 32 MiB; FAT32 ESP (El Torito count 0)
		t.Run(fmt.Sprintf("esp%dMiB", espMin>>20), func(t *testing.T) {
			dir := t.TempDir()
			bt := fakeTree(t, dir)
			img, l := buildISO(t, dir, bt, espMin)
			t.Logf("layout %+v", l)

			toc := run(t, "xorriso", "-indev", img, "-toc")
			for _, want := range []string{"TALOS_V1_13_0", "El Torito"} {
				if !strings.Contains(toc, want) {
					t.Errorf("xorriso -toc lacks %q:\n%s", want, toc)
				}
			}
			if strings.Contains(toc, "Joliet") {
				t.Errorf("xorriso -toc reports Joliet:\n%s", toc)
			}
			find := run(t, "xorriso", "-indev", img, "-find", "/")
			for _, want := range []string{"'/imagecache'", "'/EFI/BOOT/BOOTX64.EFI'", "'/EFI/Linux/Talos-v1.13.0.efi'", "'/loader/loader.conf'"} {
				if !strings.Contains(find, want) {
					t.Errorf("xorriso -find lacks %s:\n%s", want, find)
				}
			}
			if strings.Contains(find, "placeholder") || !strings.Contains(find, "'/boot.catalog'") {
				t.Errorf("xorriso -find shows the placeholder or lacks /boot.catalog:\n%s", find)
			}
			rep := run(t, "xorriso", "-indev", img, "-report_el_torito", "plain", "-report_system_area", "plain")
			t.Logf("xorriso reports:\n%s", rep)
			count := l.ESPSize / 512
			if count > 0xFFFF {
				count = 0
			}
			wantImg := fmt.Sprintf("El Torito boot img : 1 UEFI y none 0x0000 0x00 %d %d", count, l.ESPStart/2048)
			if !strings.Contains(strings.Join(strings.Fields(rep), " "), wantImg) {
				t.Errorf("El Torito report lacks %q", wantImg)
			}
			// MBR-only, as xorrisofs -partition_offset 16 makes it.
			p1 := l.ESPStart/512 - 64
			p2 := (l.ESPSize + 1<<20 - 1) >> 20 << 11
			for _, want := range []string{
				"System area summary: MBR cyl-align-on",
				"Partition offset : 16",
				fmt.Sprintf("MBR partition : 1 0x00 0x83 64 %d", p1),
				fmt.Sprintf("MBR partition : 2 0x00 0xef %d %d", l.ESPStart/512, p2),
			} {
				if !strings.Contains(strings.Join(strings.Fields(rep), " "), want) {
					t.Errorf("system area report lacks %q", want)
				}
			}
			if strings.Contains(rep, "GPT") {
				t.Errorf("system area report shows a GPT")
			}
			sf := run(t, "sfdisk", "-d", img)
			t.Logf("sfdisk -d:\n%s", sf)
			for _, want := range []string{"label: dos", fmt.Sprintf("start=%12d, size=%12d, type=83", 64, p1),
				fmt.Sprintf("start=%12d, size=%12d, type=ef", l.ESPStart/512, p2)} {
				if !strings.Contains(sf, want) {
					t.Errorf("sfdisk -d lacks %q", want)
				}
			}
			if strings.Count(sf, "start=") != 2 {
				t.Errorf("sfdisk -d: not exactly two partitions")
			}
			if v := run(t, "sgdisk", "-v", img); !strings.Contains(v, "Found invalid GPT and valid MBR") {
				t.Errorf("sgdisk -v does not see MBR-only:\n%s", v)
			}

			info := run(t, "isoinfo", "-d", "-i", img)
			for _, want := range []string{"Volume id: TALOS_V1_13_0", "Volume set id: Talos-v1.13.0", "Data preparer id: \n",
				"Rock Ridge signatures version 1 found", "El Torito VD version 1 found", "ID ''"} {
				if !strings.Contains(info, want) {
					t.Errorf("isoinfo -d lacks %q:\n%s", want, info)
				}
			}

			// Partition 1 alone is the ISO9660 volume: blkid, isoinfo and
			// xorriso read it as such.
			part1 := filepath.Join(dir, "p1.img")
			extract(t, img, part1, 64*512, p1*512)
			bl := run(t, "blkid", "-p", "-o", "export", part1)
			t.Logf("blkid -p partition 1:\n%s", bl)
			for _, want := range []string{"TYPE=iso9660", "LABEL=TALOS_V1_13_0", "VOLUME_SET_ID=Talos-v1.13.0"} {
				if !strings.Contains(bl, want+"\n") {
					t.Errorf("blkid on partition 1 lacks %s", want)
				}
			}
			if strings.Contains(bl, "go-diskfs") || strings.Contains(info, "go-diskfs") {
				t.Errorf("go-diskfs named in the volume")
			}
			info1 := run(t, "isoinfo", "-d", "-i", part1)
			if !strings.Contains(info1, fmt.Sprintf("Volume size is: %d\n", p1/4)) || !strings.Contains(info1, "Rock Ridge signatures version 1 found") {
				t.Errorf("isoinfo -d partition 1:\n%s", info1)
			}
			for _, src := range []string{img, part1} {
				ls := run(t, "xorriso", "-indev", src, "-lsdl", "/", "--")
				if !strings.Contains(ls, "drwxr-xr-x") {
					t.Errorf("root directory of %s is not 0755:\n%s", filepath.Base(src), ls)
				}
			}
			out1 := filepath.Join(dir, "x1")
			run(t, "xorriso", "-osirrox", "on", "-indev", part1, "-extract", "/", out1)
			for p, want := range bt.bytes {
				got, err := os.ReadFile(filepath.Join(out1, p))
				if err != nil || !bytes.Equal(got, want) {
					t.Fatalf("extracted %s from partition 1: %v, %d bytes, want %d", p, err, len(got), len(want))
				}
			}

			fd := run(t, "fdisk", "-l", img)
			t.Logf("fdisk -l:\n%s", fd)

			// The ESP partition, extracted, is a clean FAT.
			part := filepath.Join(dir, "p2.img")
			extract(t, img, part, l.ESPStart, l.ESPSize)
			fsck := run(t, "fsck.vfat", "-n", part)
			t.Logf("fsck.vfat -n p2:\n%s", fsck)
			got := run(t, "mcopy", "-n", "-i", part, "::/loader/loader.conf", "-")
			if got != loaderConf {
				t.Errorf("loader.conf from the ESP partition = %q", got)
			}

			// Every file reads back byte-exact through xorriso.
			out := filepath.Join(dir, "x")
			run(t, "xorriso", "-osirrox", "on", "-indev", img, "-extract", "/", out)
			for p, want := range bt.bytes {
				got, err := os.ReadFile(filepath.Join(out, p))
				if err != nil {
					t.Fatalf("extracted %s: %v", p, err)
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("extracted %s: %d bytes differ from the %d written", p, len(got), len(want))
				}
			}
			// The staging directory is gone.
			if m, _ := filepath.Glob(filepath.Join(dir, ".kiln-iso-*")); len(m) != 0 {
				t.Fatalf("staging directory left behind: %v", m)
			}
		})
	}
}

func extract(t *testing.T, img, dst string, off, size int64) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, size)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReproducible(t *testing.T) {
	dir := t.TempDir()
	bt := fakeTree(t, dir)
	a, _ := buildISO(t, dir, bt, 0)
	ab, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	b, _ := buildISO(t, dir2, bt, 0)
	bb, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ab, bb) {
		for i := range ab {
			if ab[i] != bb[i] {
				t.Fatalf("two builds differ, first at byte %d (block %d)", i, i/2048)
			}
		}
		t.Fatal("two builds differ in length")
	}
}

func TestWriteErrors(t *testing.T) {
	dir := t.TempDir()
	espPath := filepath.Join(dir, "esp.img")
	if err := os.WriteFile(espPath, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	never := func() (io.ReadCloser, error) { t.Fatal("Open called"); return nil, nil }
	mbr := make([]byte, 512)
	mbr[510], mbr[511] = 0x55, 0xAA
	empty := func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("")), nil }
	f, err := os.Create(filepath.Join(dir, "out.iso"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, tc := range []struct {
		name string
		p    iso.Params
		want error
	}{
		{"4GiB", iso.Params{VolumeID: "X", ESP: espPath, Files: []iso.File{{Path: "big", Size: 1 << 32, Open: never}}}, iso.ErrFileTooLarge},
		{"longroot", iso.Params{VolumeID: "X", ESP: espPath, Files: []iso.File{{Path: strings.Repeat("n", 128), Open: never}}}, iso.ErrInvalidPath},
		{"reserved", iso.Params{VolumeID: "X", ESP: espPath, Files: []iso.File{{Path: "imagecache", Open: never}}}, iso.ErrInvalidPath},
		{"abs", iso.Params{VolumeID: "X", ESP: espPath, Files: []iso.File{{Path: "/x", Open: never}}}, iso.ErrInvalidPath},
		{"lowercase", iso.Params{VolumeID: "talos", ESP: espPath}, iso.ErrInvalidVolumeID},
		{"volset", iso.Params{VolumeID: "X", VolumeSetID: "Talos-\n", ESP: espPath}, iso.ErrInvalidVolumeID},
		{"long-names", iso.Params{VolumeID: "X", ESP: espPath, TempDir: dir, Files: []iso.File{
			{Path: "d/a" + strings.Repeat("n", 200), Open: empty},
			{Path: "d/b" + strings.Repeat("n", 200), Open: empty},
		}}, iso.ErrInvalidPath},
		{"volid33", iso.Params{VolumeID: strings.Repeat("A", 33), ESP: espPath}, iso.ErrInvalidVolumeID},
		{"bios-small", iso.Params{VolumeID: "X", ESP: espPath, BIOS: &iso.BIOS{ImagePath: "e.img", Image: make([]byte, 2048), MBR: mbr}}, iso.ErrInvalidBIOS},
		{"bios-mbr", iso.Params{VolumeID: "X", ESP: espPath, BIOS: &iso.BIOS{ImagePath: "e.img", Image: make([]byte, 4096), MBR: make([]byte, 512)}}, iso.ErrInvalidBIOS},
		{"bios-twice", iso.Params{VolumeID: "X", ESP: espPath, BIOS: &iso.BIOS{ImagePath: "e.img", Image: make([]byte, 4096), MBR: mbr},
			Files: []iso.File{{Path: "e.img", Open: never}}}, iso.ErrInvalidPath},
		{"bios-path", iso.Params{VolumeID: "X", ESP: espPath, BIOS: &iso.BIOS{ImagePath: "../e.img", Image: make([]byte, 4096), MBR: mbr}}, iso.ErrInvalidPath},
		{"dir-path", iso.Params{VolumeID: "X", ESP: espPath, Dirs: []string{"a/../../b"}}, iso.ErrInvalidPath},
		{"dir-file", iso.Params{VolumeID: "X", ESP: espPath, Dirs: []string{"a/b"}, Files: []iso.File{{Path: "a", Open: never}}}, iso.ErrInvalidPath},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := iso.Write(context.Background(), f, tc.p)
			t.Log(err)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Write: err = %v, want %v", err, tc.want)
			}
		})
	}
	t.Run("cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		data := []byte("x")
		_, err := iso.Write(ctx, f, iso.Params{VolumeID: "X", ESP: espPath, TempDir: dir, Files: []iso.File{{Path: "x", Size: 1,
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }}}})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if m, _ := filepath.Glob(filepath.Join(dir, ".kiln-iso-*")); len(m) != 0 {
			t.Fatalf("staging directory left behind: %v", m)
		}
	})
}

// TestBuildESPInPlace: an ESP built in place (Params.BuildESP) gives the
// same image, byte for byte, as one built to a file and appended.
func TestBuildESPInPlace(t *testing.T) {
	for _, espMin := range []int64{0, 64 << 20} {
		t.Run(fmt.Sprintf("esp%dMiB", espMin>>20), func(t *testing.T) {
			dir := t.TempDir()
			bt := fakeTree(t, dir)
			img, _ := buildISO(t, dir, bt, espMin)
			want, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			opts := esp.Options{MinSize: espMin, ModTime: modTime}
			size, err := esp.RequiredSize(bt.esp, opts)
			if err != nil {
				t.Fatal(err)
			}
			f, err := os.Create(filepath.Join(dir, "inplace.iso"))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			_, err = iso.Write(context.Background(), f, iso.Params{
				VolumeID: iso.VolumeID(talosVer), VolumeSetID: iso.Label(talosVer), Files: bt.iso,
				ESPSize: size, ModTime: modTime, TempDir: dir,
				BuildESP: func(ctx context.Context, out *os.File, offset, size int64) error {
					_, err := esp.BuildAt(ctx, out, offset, size, bt.esp, opts)
					return err
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(f.Name())
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("in-place ESP: image of %d bytes differs from the appended one (%d bytes)", len(got), len(want))
			}
		})
	}
}

// TestWriteSources: Sources keep their mode (a setuid one is staged by a
// real link, the others by placeholders), a Source may be used twice, and
// every file reads back byte-exact: the data laid out again with the real
// sizes lands where the records point. (xorriso shows no Rock Ridge link
// count.)
func TestWriteSources(t *testing.T) {
	dir := t.TempDir()
	bt := fakeTree(t, dir)
	src := func(name string, seed uint64, n int, mode os.FileMode) string {
		p := filepath.Join(dir, "src-"+name)
		if err := os.WriteFile(p, randBytes(seed, n), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	add := func(p, source string) {
		b, err := os.ReadFile(source)
		if err != nil {
			t.Fatal(err)
		}
		bt.bytes[p] = b
		bt.iso = append(bt.iso, iso.File{Path: p, Size: int64(len(b)), Source: source})
	}
	private := src("private", 20, 5000, 0o600)
	twice := src("twice", 21, 2048*3, 0o755)
	suid := src("suid", 22, 300_001, os.ModeSetuid|0o755)
	add("imagecache/a/private", private)
	add("imagecache/a/twice", twice)
	add("imagecache/b/twice-again", twice)
	add("imagecache/b/suid", suid)
	img, _ := buildISO(t, dir, bt, 0)

	out := filepath.Join(dir, "x")
	run(t, "xorriso", "-osirrox", "on", "-indev", img, "-extract", "/", out)
	for p, want := range bt.bytes {
		got, err := os.ReadFile(filepath.Join(out, p))
		if err != nil {
			t.Fatalf("extracted %s: %v", p, err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("extracted %s: %d bytes differ from the %d written", p, len(got), len(want))
		}
	}
	ls := run(t, "xorriso", "-indev", img, "-lsdl", "/imagecache/a/private", "/imagecache/a/twice", "/imagecache/b/twice-again", "/imagecache/b/suid", "/loader/loader.conf")
	modes := map[string]string{}
	for _, l := range strings.Split(ls, "\n") {
		if f := strings.Fields(l); len(f) > 5 && strings.HasPrefix(f[len(f)-1], "'/") {
			modes[strings.Trim(f[len(f)-1], "'")] = f[0] + " " + f[4]
		}
	}
	for p, want := range map[string]string{
		"/imagecache/a/private": "-rw------- 5000", "/imagecache/a/twice": "-rwxr-xr-x 6144",
		"/imagecache/b/twice-again": "-rwxr-xr-x 6144", "/imagecache/b/suid": "-rwsr-xr-x 300001",
		"/loader/loader.conf": "-rw-r--r-- 65",
	} {
		if modes[p] != want {
			t.Errorf("xorriso -lsdl %s: %q, want %q", p, modes[p], want)
		}
	}
}
