package iso_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/grub"
	"github.com/kiln-dev/kiln/builder/iso"
	"github.com/kiln-dev/kiln/release"
)

// hostGrubPC is Debian's grub-pc-bin tree, the one grub-mkrescue uses here.
const hostGrubPC = "/usr/lib/grub/i386-pc"

// dualBootTree is fakeTree plus the grub/dual-boot ISO files Talos's
// imager writes: the kernel, the initramfs and Talos's grub.cfg.
func dualBootTree(t *testing.T, dir, cmdline string) bootTree {
	bt := fakeTree(t, dir)
	v, err := release.ParseVersion(talosVer)
	if err != nil {
		t.Fatal(err)
	}
	for p, data := range map[string][]byte{
		"boot/vmlinuz":       randBytes(7, 1<<20+3),
		"boot/initramfs.xz":  randBytes(8, 2<<20+11),
		"boot/grub/grub.cfg": grub.ISOConfig(v, cmdline),
	} {
		bt.bytes[p] = data
		bt.iso = append(bt.iso, iso.File{Path: p, Size: int64(len(data)),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }})
	}
	return bt
}

// buildDualBoot writes kiln's dual-boot ISO of bt with the GRUB tree of
// grubDir into dir/kiln.iso.
func buildDualBoot(t *testing.T, dir string, bt bootTree, grubDir string, espMin int64) (string, iso.Layout) {
	t.Helper()
	mustTool(t, "xorriso")
	if _, err := os.Stat(filepath.Join(grubDir, "boot_hybrid.img")); err != nil {
		mustTool(t, "grub-mkrescue") // the package that brings the tree
		t.Skipf("no GRUB i386-pc tree: %v", err)
	}
	img, _ := buildISO(t, dir, bt, espMin) // the ESP (efiboot.img), as for sd-boot
	_ = os.Remove(img)
	mk, err := iso.MkrescueBIOS(os.DirFS(grubDir))
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "kiln.iso")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l, err := iso.Write(context.Background(), f, iso.Params{
		VolumeID:    iso.VolumeID(talosVer),
		VolumeSetID: iso.Label(talosVer),
		Files:       append(bt.iso, mk.Files...),
		Dirs:        mk.Dirs,
		ESP:         filepath.Join(dir, "efiboot.img"),
		BIOS:        mk.BIOS,
		ModTime:     modTime,
		TempDir:     dir,
	})
	if err != nil {
		t.Fatalf("iso.Write: %v", err)
	}
	return out, l
}

// talosMkrescue runs the Talos imager's dual-boot ISO command (v1.13.9
// pkg/imager/iso/hybrid.go, plus what ExecutorOptions.Generate appends with
// SOURCE_DATE_EPOCH set) on scratch, which holds efiboot.img.
func talosMkrescue(t *testing.T, scratch, out string) {
	t.Helper()
	mustTool(t, "grub-mkrescue")
	mustTool(t, "mformat") // grub-mkrescue refuses to run without mtools
	args := []string{
		"--compress=xz", "--output=" + out, "--directory=" + hostGrubPC,
		"-m", "efiboot.img", "-iso-level", "3", scratch,
		"-eltorito-alt-boot", "-e", "--interval:appended_partition_2:all::",
		"-append_partition", "2", "0xef", filepath.Join(scratch, "efiboot.img"),
		"-appended_part_as_gpt", "-partition_cyl_align", "all", "-partition_offset", "16",
		"-iso_mbr_part_type", "0x83", "-no-emul-boot", "--",
		"-volume_date", "all_file_dates", fmt.Sprintf("=%d", modTime.Unix()),
		"-volume_date", "uuid", modTime.UTC().Format("2006010215040500"),
		"-volid", iso.VolumeID(talosVer), "-volset-id", iso.Label(talosVer),
	}
	cmd := exec.Command("grub-mkrescue", args...)
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", modTime.Unix()))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("grub-mkrescue: %v\n%s", err, b)
	}
}

// writeScratch lays bt out as the imager's scratch directory, with
// efiboot.img from dir.
func writeScratch(t *testing.T, dir string, bt bootTree) string {
	t.Helper()
	scratch := filepath.Join(dir, "scratch")
	for _, f := range bt.iso {
		dst := filepath.Join(scratch, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		mode := os.FileMode(0o644)
		if f.Source != "" {
			fi, err := os.Stat(f.Source)
			if err != nil {
				t.Fatal(err)
			}
			mode = fi.Mode().Perm()
		}
		if err := os.WriteFile(dst, bt.bytes[f.Path], mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dst, mode); err != nil { // past the umask
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(scratch, "imagecache"), 0o755); err != nil {
		t.Fatal(err)
	}
	espImg, err := os.ReadFile(filepath.Join(dir, "efiboot.img"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(scratch, "efiboot.img"), espImg, 0o644); err != nil {
		t.Fatal(err)
	}
	return scratch
}

var number = regexp.MustCompile(`\b[0-9]+\b`)

// masked replaces the numbers of the lines that carry positions and sizes,
// which differ because the trees differ in size (see the test's doc).
func masked(ls []string, re *regexp.Regexp) []string {
	r := make([]string, len(ls))
	for i, l := range ls {
		if re.MatchString(l) {
			l = number.ReplaceAllString(l, "N")
		}
		r[i] = l
	}
	return r
}

// TestSameAsGrubMkrescue builds kiln's dual-boot ISO and the one Talos's
// grub-mkrescue call (hybrid.go) makes from the same tree, ESP and GRUB
// i386-pc directory, and compares what readers see. Differences kept, each
// checked here rather than ignored:
//   - kiln stores GRUB's modules uncompressed (grub-mkrescue --compress=xz
//     xz-compresses each): every boot/grub/i386-pc file but eltorito.img is
//     the xz-decompressed file of grub-mkrescue's; eltorito.img has no
//     xzio and gcry_crc, which only compressed modules need;
//   - no boot/grub/fonts and boot/grub/locale: grub-mkrescue takes them from
//     the build host's /usr/share, which a release does not carry;
//   - so the volume is smaller and every position and size after the
//     system area differs (masked in the reports, checked for consistency).
func TestSameAsGrubMkrescue(t *testing.T) {
	// A FAT16 ESP, and a FAT32 one of more than 0xFFFF sectors (El Torito
	// sector count 0).
	for _, espMin := range []int64{0, 64 << 20} {
		t.Run(fmt.Sprintf("esp%dMiB", espMin>>20), func(t *testing.T) { sameAsGrubMkrescue(t, espMin) })
	}
}

func sameAsGrubMkrescue(t *testing.T, espMin int64) {
	dir := t.TempDir()
	bt := dualBootTree(t, dir, "talos.platform=metal console=ttyS0 talos.halt_if_installed=1")
	img, l := buildDualBoot(t, dir, bt, hostGrubPC, espMin)
	ref := filepath.Join(dir, "grub-mkrescue.iso")
	talosMkrescue(t, writeScratch(t, dir, bt), ref)
	t.Logf("kiln layout %+v", l)

	// System area, GPT and El Torito as xorriso reports them.
	report := func(p string) []string {
		out := run(t, "xorriso", "-indev", p, "-report_system_area", "plain", "-report_el_torito", "plain")
		return lines(out, regexp.MustCompile(`^(System area|ISO image size|Partition offset|MBR|GPT|El Torito)`))
	}
	// Positions and sizes that follow the volume's size are masked; the
	// El Torito entries keep all but their LBA, the ESP's sizes stay.
	pos := regexp.MustCompile(`^(ISO image size|MBR partition :|GPT lba range|GPT start and size : [13]|El Torito catalog)`)
	kr, xr := report(img), report(ref)
	lastField := regexp.MustCompile(`^(El Torito boot img .*) \d+$|^(GPT start and size : 2) \d+ (\d+)$`)
	maskLBA := func(ls []string) []string {
		r := masked(ls, pos)
		for i, l := range r {
			r[i] = lastField.ReplaceAllString(l, "$1$2 N $3")
		}
		return r
	}
	t.Logf("xorriso reports, kiln:\n%s\ngrub-mkrescue:\n%s", strings.Join(kr, "\n"), strings.Join(xr, "\n"))
	sameLines(t, "xorriso -report_system_area / -report_el_torito", maskLBA(kr), maskLBA(xr))
	for _, want := range []string{
		fmt.Sprintf("El Torito boot img : 1 BIOS y none 0x0000 0x00 4 %d", l.BIOSImageLBA),
		fmt.Sprintf("El Torito boot img : 2 UEFI y none 0x0000 0x00 %d %d", espCount(l.ESPSize), l.ESPStart/2048),
		fmt.Sprintf("GPT start and size : 1 64 %d", l.ESPStart/512-64),
		fmt.Sprintf("GPT start and size : 2 %d %d", l.ESPStart/512, l.ESPSize/512),
		fmt.Sprintf("GPT start and size : 3 %d 600", (l.ESPStart+l.ESPSize)/512),
		fmt.Sprintf("MBR partition : 1 0x00 0xee 1 %d", l.Size/512-1),
	} {
		if !strings.Contains(strings.Join(kr, "\n"), want) {
			t.Errorf("kiln's report lacks %q", want)
		}
	}

	// Partition tables as sfdisk and sgdisk read them.
	sfdisk := func(p string) []string {
		out := strings.ReplaceAll(run(t, "sfdisk", "-d", p), p, "IMG")
		return lines(out, regexp.MustCompile(`^(label|label-id|unit|first-lba|last-lba|table-length|sector-size|IMG)`))
	}
	sfPos := regexp.MustCompile(`^(IMG|last-lba)`)
	ks, xs := sfdisk(img), sfdisk(ref)
	t.Logf("sfdisk -d, kiln:\n%s\ngrub-mkrescue:\n%s", strings.Join(ks, "\n"), strings.Join(xs, "\n"))
	sameLines(t, "sfdisk -d", masked(ks, sfPos), masked(xs, sfPos))
	if out := run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}

	// The MBR: boot_hybrid.img's code pointed at diskboot.img.
	mbr := head(t, img, 512)
	hyb, err := os.ReadFile(filepath.Join(hostGrubPC, "boot_hybrid.img"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(mbr[:0x1b0], hyb[:0x1b0]) || !bytes.Equal(mbr[0x1b8:446], hyb[0x1b8:446]) {
		t.Error("MBR boot code is not boot_hybrid.img's")
	}
	if got, want := binary.LittleEndian.Uint64(mbr[0x1b0:]), uint64(l.BIOSImageLBA)*4+4; got != want {
		t.Errorf("MBR points at sector %d, want %d", got, want)
	}

	// Whole device and partition 1: blkid.
	part := func(p, name string) string {
		dst := filepath.Join(dir, name)
		size, err := sfdiskP1Size(p)
		if err != nil {
			t.Fatal(err)
		}
		extract(t, p, dst, 64*512, size)
		return dst
	}
	kp1, xp1 := part(img, "kiln-p1.img"), part(ref, "mkrescue-p1.img")
	blkid := func(p string) []string {
		return lines(run(t, "blkid", "-p", "-o", "export", p), regexp.MustCompile(`^(TYPE|LABEL|VOLUME_SET_ID|UUID|BLOCK_SIZE|USAGE|BOOT_SYSTEM_ID|PTTYPE|PTUUID)=`))
	}
	for _, c := range [][2]string{{img, ref}, {kp1, xp1}} {
		kb, xb := blkid(c[0]), blkid(c[1])
		t.Logf("blkid -p %s: %v; grub-mkrescue: %v", filepath.Base(c[0]), kb, xb)
		sameLines(t, "blkid -p "+filepath.Base(c[0]), kb, xb)
	}
	if kb := strings.Join(blkid(kp1), " "); !strings.Contains(kb, "TYPE=iso9660") || !strings.Contains(kb, "LABEL="+iso.VolumeID(talosVer)) {
		t.Errorf("partition 1: blkid %s", kb)
	}

	isoinfo := regexp.MustCompile(`^(CD-ROM|System id|Volume id|Volume set id|Publisher|Data preparer|Application|Copyright|Abstract|Bibliographic|Volume set size|Volume set seq|Logical block|NO Joliet|Rock Ridge|Eltorito|\s+(Hid|Arch|ID|Key|Bootid|Boot media|Load segment|Sys type|Nsect))`)
	for _, c := range [][2]string{{img, ref}, {kp1, xp1}} {
		kl, xl := lines(run(t, "isoinfo", "-d", "-i", c[0]), isoinfo), lines(run(t, "isoinfo", "-d", "-i", c[1]), isoinfo)
		// The data preparer: xorriso names itself, kiln leaves it blank
		// (as for the sd-boot ISO).
		kl, xl = dropPrefix(kl, "Data preparer"), dropPrefix(xl, "Data preparer")
		sameLines(t, "isoinfo -d "+filepath.Base(c[0]), kl, xl)
	}

	// The trees (names, modes, owners) of the whole device and partition
	// 1, without what grub-mkrescue adds from the host's /usr/share, sizes
	// masked for boot/grub/i386-pc (compressed there).
	tree := func(p string) []string {
		out := run(t, "xorriso", "-indev", p, "-find", "/", "-exec", "lsdl", "--")
		var r []string
		for _, l := range lines(out, regexp.MustCompile(`^[-d]`)) {
			if strings.Contains(l, "'/boot/grub/fonts") || strings.Contains(l, "'/boot/grub/locale") {
				continue
			}
			if strings.Contains(l, "'/boot/grub/i386-pc/") {
				f := strings.Fields(l)
				f[4] = "N"
				l = strings.Join(f, " ")
			}
			r = append(r, l)
		}
		return r
	}
	for _, c := range [][2]string{{img, ref}, {kp1, xp1}} {
		kt, xt := tree(c[0]), tree(c[1])
		sameLines(t, "tree of "+filepath.Base(c[0]), kt, xt)
	}

	// Every file's bytes: equal, the GRUB files equal to grub-mkrescue's
	// decompressed, the El Torito image patched for where it lies.
	kx, xx := filepath.Join(dir, "kiln-x"), filepath.Join(dir, "mkrescue-x")
	for _, c := range [][2]string{{img, kx}, {ref, xx}} {
		run(t, "xorriso", "-osirrox", "on", "-indev", c[0], "-extract", "/", c[1])
	}
	n := 0
	err = filepath.WalkDir(kx, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(kx, p)
		kb, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		n++
		switch {
		case rel == "boot.catalog":
		case rel == "boot/grub/i386-pc/eltorito.img":
			checkElTorito(t, kb, l.BIOSImageLBA)
		case strings.HasPrefix(rel, "boot/grub/i386-pc/"):
			want, err := exec.Command("xz", "-dc", filepath.Join(xx, rel)).Output()
			if err != nil {
				t.Errorf("xz -d %s: %v", rel, err)
			} else if !bytes.Equal(kb, want) {
				t.Errorf("%s differs from grub-mkrescue's decompressed", rel)
			}
		default:
			xb, err := os.ReadFile(filepath.Join(xx, rel))
			if err != nil || !bytes.Equal(kb, xb) {
				t.Errorf("%s differs from grub-mkrescue's (%v)", rel, err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d files compared", n)
}

// checkElTorito checks the boot info table and the blocklist of an
// i386-pc-eltorito image at absolute block lba (xorriso's -boot-info-table
// --grub2-boot-info).
func checkElTorito(t *testing.T, b []byte, lba uint32) {
	t.Helper()
	le := binary.LittleEndian
	if le.Uint32(b[8:]) != 16 || le.Uint32(b[12:]) != lba || le.Uint32(b[16:]) != uint32(len(b)) {
		t.Errorf("boot info table %x, want PVD 16, LBA %d, length %d", b[8:24], lba, len(b))
	}
	if got, want := le.Uint64(b[2048+0x1f4:]), uint64(lba)*4+5; got != want {
		t.Errorf("diskboot.img blocklist at sector %d, want %d", got, want)
	}
}

func head(t *testing.T, p string, n int) []byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, n)
	if _, err := io.ReadFull(f, b); err != nil {
		t.Fatal(err)
	}
	return b
}

// sfdiskP1Size returns the byte size of GPT partition 1 of p.
func sfdiskP1Size(p string) (int64, error) {
	out, err := exec.Command("sfdisk", "-d", p).Output()
	if err != nil {
		return 0, err
	}
	m := regexp.MustCompile(`(?m)^\S+1 : start=\s*64, size=\s*(\d+)`).FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no partition 1 at LBA 64 in:\n%s", out)
	}
	var n int64
	_, err = fmt.Sscan(string(m[1]), &n)
	return n * 512, err
}

// TestDualBootReproducible: equal inputs give byte-identical dual-boot
// ISOs, the ESP appended from a file or built in place.
func TestDualBootReproducible(t *testing.T) {
	dir := t.TempDir()
	bt := dualBootTree(t, dir, "talos.platform=metal console=ttyS0")
	a, _ := buildDualBoot(t, dir, bt, hostGrubPC, 0)
	want, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := buildDualBoot(t, dir, bt, hostGrubPC, 0)
	got, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("two dual-boot ISOs of the same inputs differ")
	}
}

// espCount is the El Torito sector count of an ESP: 0 ("to the end of the
// volume") when it does not fit 16 bits, as xorriso writes it.
func espCount(size int64) int64 {
	if size/512 > 0xFFFF {
		return 0
	}
	return size / 512
}
