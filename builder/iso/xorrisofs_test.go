package iso_test

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/iso"
)

// talosXorrisofs runs the Talos imager's sd-boot ISO command (v1.13.9
// pkg/imager/iso/uefi.go, plus the arguments ExecutorOptions.Generate
// appends with SOURCE_DATE_EPOCH set) on scratch, which holds efiboot.img.
func talosXorrisofs(t *testing.T, scratch, out string, epoch time.Time) {
	t.Helper()
	mustTool(t, "xorrisofs")
	args := []string{
		"-e", "--interval:appended_partition_2:all::",
		"-append_partition", "2", "0xef", filepath.Join(scratch, "efiboot.img"),
		"-partition_cyl_align", "all",
		"-partition_offset", "16",
		"-iso_mbr_part_type", "0x83",
		"-no-emul-boot",
		"-m", "efiboot.img",
		"-iso-level", "3",
		"-o", out,
		scratch,
		"--",
		"-volume_date", "all_file_dates", fmt.Sprintf("=%d", epoch.Unix()),
		"-volume_date", "uuid", epoch.UTC().Format("2006010215040500"),
		"-volid", "TALOS_V1_13_0",
		"-volset-id", "Talos-v1.13.0",
	}
	if b, err := exec.Command("xorrisofs", args...).CombinedOutput(); err != nil {
		t.Fatalf("xorrisofs: %v\n%s", err, b)
	}
}

// lines returns the lines of s that match re, fields joined by one space.
func lines(s string, re *regexp.Regexp) []string {
	var r []string
	for _, l := range strings.Split(s, "\n") {
		if re.MatchString(l) {
			r = append(r, strings.Join(strings.Fields(l), " "))
		}
	}
	return r
}

func sameLines(t *testing.T, what string, kiln, talos []string) {
	t.Helper()
	k, x := strings.Join(kiln, "\n"), strings.Join(talos, "\n")
	if k != x {
		t.Errorf("%s differ:\nkiln:\n%s\nxorrisofs:\n%s", what, k, x)
	} else if k == "" {
		t.Errorf("%s: nothing to compare", what)
	}
}

// TestSameAsTalosXorrisofs builds kiln's ISO and the one Talos's xorrisofs
// call makes from the same tree and the same efiboot.img, and compares what
// the readers see: partition tables, system area, El Torito entry,
// partition 1 as a volume of its own, volume identifiers, and every file's
// name, mode, size and date in both the whole-device and the partition-1
// trees.
func TestSameAsTalosXorrisofs(t *testing.T) {
	t.Run("small", func(t *testing.T) {
		dir := t.TempDir()
		sameAsTalosXorrisofs(t, dir, fakeTree(t, dir))
	})
	// Directories of many blocks and Rock Ridge continuation areas (names
	// of 200 bytes do not fit a directory record). 120 files: xorriso 1.5.4
	// itself fails from about 200 such names with -partition_offset 16
	// ("Premature end of input encountered. Missing: 4096 bytes").
	t.Run("long-names", func(t *testing.T) {
		dir := t.TempDir()
		bt := fakeTree(t, dir)
		for i := range 300 {
			p := fmt.Sprintf("imagecache/manifests/many/%03d-%s", i, strings.Repeat("n", 96))
			if i%10 == 0 {
				p = fmt.Sprintf("imagecache/manifests/long/d%03d/%03d-%s", i, i, strings.Repeat("n", 196))
			}
			data := []byte(p)
			bt.bytes[p] = data
			bt.iso = append(bt.iso, iso.File{Path: p, Size: int64(len(data)),
				Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }})
		}
		sameAsTalosXorrisofs(t, dir, bt)
	})
}

func sameAsTalosXorrisofs(t *testing.T, dir string, bt bootTree) {
	img, l := buildISO(t, dir, bt, 0)

	// The scratch tree as the imager lays it out, modes as kiln's sources.
	scratch := filepath.Join(dir, "scratch")
	for _, f := range bt.iso {
		mode := os.FileMode(0o644)
		if f.Source != "" {
			fi, err := os.Stat(f.Source)
			if err != nil {
				t.Fatal(err)
			}
			mode = fi.Mode().Perm()
		}
		dst := filepath.Join(scratch, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, bt.bytes[f.Path], mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dst, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	espImg, err := os.ReadFile(filepath.Join(dir, "efiboot.img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(scratch, "efiboot.img"), espImg, 0o644); err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(dir, "talos.iso")
	ref = strings.TrimSuffix(ref, ".iso") + "-xorrisofs.iso"
	talosXorrisofs(t, scratch, ref, modTime)

	// Partition tables: MBR only, same partitions.
	sfdisk := func(p string) []string {
		out := run(t, "sfdisk", "-d", p)
		out = strings.ReplaceAll(out, p, "IMG")
		return lines(out, regexp.MustCompile(`^(label|label-id|unit|sector-size|IMG)`))
	}
	ks, xs := sfdisk(img), sfdisk(ref)
	t.Logf("sfdisk -d, kiln:\n%s\nxorrisofs:\n%s", strings.Join(ks, "\n"), strings.Join(xs, "\n"))
	sameLines(t, "sfdisk -d", ks, xs)
	// Same partitions, so the same MBR byte for byte (CHS included), and
	// the rest of the 32 KiB system area zero in both.
	head := func(p string) []byte {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		b := make([]byte, 16*2048)
		if _, err := io.ReadFull(f, b); err != nil {
			t.Fatal(err)
		}
		return b
	}
	if kh, xh := head(img), head(ref); !bytes.Equal(kh, xh) {
		t.Errorf("system areas differ:\nkiln:      %x\nxorrisofs: %x", kh[432:512], xh[432:512])
	}

	// System area and El Torito as xorriso reports them; the image size
	// differs (xorriso pads 300 KiB), as does the catalog block.
	report := func(p string) string {
		return run(t, "xorriso", "-indev", p, "-report_system_area", "plain", "-report_el_torito", "plain")
	}
	kr, xr := report(img), report(ref)
	t.Logf("xorriso reports, kiln:\n%s\nxorrisofs:\n%s", kr, xr)
	sa := regexp.MustCompile(`^(System area|Partition offset|MBR|El Torito (images|boot img|cat path)|Boot record)`)
	sameLines(t, "xorriso -report_system_area / -report_el_torito", lines(kr, sa), lines(xr, sa))

	// Whole device and partition 1: blkid, isoinfo -d, and the trees.
	part := func(p, name string) string {
		dst := filepath.Join(dir, name)
		extract(t, p, dst, 64*512, l.ESPStart-64*512)
		return dst
	}
	kp1, xp1 := part(img, "kiln-p1.img"), part(ref, "xorrisofs-p1.img")
	blkid := func(p string) []string {
		return lines(run(t, "blkid", "-p", "-o", "export", p), regexp.MustCompile(`^(TYPE|LABEL|VOLUME_SET_ID|UUID|BLOCK_SIZE|USAGE|BOOT_SYSTEM_ID|PTTYPE)=`))
	}
	for _, c := range [][2]string{{img, ref}, {kp1, xp1}} {
		kb, xb := blkid(c[0]), blkid(c[1])
		t.Logf("blkid -p %s: %v; xorrisofs: %v", filepath.Base(c[0]), kb, xb)
		sameLines(t, "blkid -p "+filepath.Base(c[0]), kb, xb)
	}
	isoinfo := regexp.MustCompile(`^(CD-ROM|System id|Volume id|Volume set id|Publisher|Application|Copyright|Abstract|Bibliographic|Volume set size|Volume set seq|Logical block|Volume size|NO Joliet|Rock Ridge|Eltorito|\s+(Hid|Arch|ID|Key|Bootid|Boot media|Load segment|Sys type|Nsect|Bootoff))`)
	for _, c := range [][2]string{{img, ref}, {kp1, xp1}} {
		ki, xi := run(t, "isoinfo", "-d", "-i", c[0]), run(t, "isoinfo", "-d", "-i", c[1])
		kl, xl := lines(ki, isoinfo), lines(xi, isoinfo)
		if c[0] == img { // the whole-device volume space: xorrisofs pads 300 KiB
			kl, xl = dropPrefix(kl, "Volume size is:"), dropPrefix(xl, "Volume size is:")
		}
		t.Logf("isoinfo -d %s, kiln:\n%s\nxorrisofs:\n%s", filepath.Base(c[0]), ki, xi)
		sameLines(t, "isoinfo -d "+filepath.Base(c[0]), kl, xl)
	}
	tree := func(p string) []string {
		out := run(t, "xorriso", "-indev", p, "-find", "/", "-exec", "lsdl", "--")
		return lines(out, regexp.MustCompile(`^[-d]`))
	}
	for _, c := range [][2]string{{img, ref}, {kp1, xp1}} {
		kt, xt := tree(c[0]), tree(c[1])
		t.Logf("xorriso -find / -exec lsdl %s, kiln:\n%s", filepath.Base(c[0]), strings.Join(kt, "\n"))
		sameLines(t, "tree of "+filepath.Base(c[0]), kt, xt)
	}
}

func dropPrefix(ls []string, prefix string) []string {
	var r []string
	for _, l := range ls {
		if !strings.HasPrefix(l, prefix) {
			r = append(r, l)
		}
	}
	return r
}
