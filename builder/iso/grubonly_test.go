package iso_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/grub"
	"github.com/kiln-dev/kiln/builder/iso"
	"github.com/kiln-dev/kiln/release"
)

// hostGrubEFI is Debian's grub-efi-amd64-bin tree.
const hostGrubEFI = "/usr/lib/grub/x86_64-efi"

// grubOnlyTree is the scratch tree of Talos's GRUB-only ISO
// (pkg/imager/iso/grub.go): the kernel, the initramfs and Talos's ISO
// grub.cfg, no systemd-boot, no UKI.
func grubOnlyTree(t *testing.T, files map[string][]byte) bootTree {
	t.Helper()
	bt := bootTree{bytes: map[string][]byte{}}
	for p, data := range files {
		bt.bytes[p] = data
		bt.iso = append(bt.iso, iso.File{Path: p, Size: int64(len(data)),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }})
	}
	return bt
}

// buildGrubOnly writes kiln's GRUB-only ISO of bt with the host's i386-pc
// and x86_64-efi GRUB into dir/kiln-grub.iso, as builder assembles it: the
// GRUB EFI image in an ESP of at least grub-mkrescue's efi.img size.
func buildGrubOnly(t *testing.T, dir string, bt bootTree) (string, iso.Layout) {
	t.Helper()
	mustTool(t, "xorriso")
	for _, p := range []string{hostGrubPC + "/boot_hybrid.img", hostGrubEFI + "/kernel.img"} {
		if _, err := os.Stat(p); err != nil {
			mustTool(t, "grub-mkrescue")
			t.Skipf("no GRUB tree: %v", err)
		}
	}
	pc, err := iso.MkrescueBIOS(os.DirFS(hostGrubPC))
	if err != nil {
		t.Fatal(err)
	}
	efi, err := iso.MkrescueEFI(os.DirFS(hostGrubEFI), grub.FormatX86_64EFI)
	if err != nil {
		t.Fatal(err)
	}
	if len(efi.EFI) != 1 || efi.EFI[0].Path != "EFI/BOOT/BOOTX64.EFI" || efi.BIOS != nil {
		t.Fatalf("MkrescueEFI: %d images, BIOS %v", len(efi.EFI), efi.BIOS != nil)
	}
	img := efi.EFI[0].Image
	files := []esp.File{{Path: efi.EFI[0].Path, Size: int64(len(img)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(img)), nil }}}
	opts := esp.Options{ModTime: modTime}
	size, ok := efi.FATSize()
	if !ok {
		t.Fatalf("%d bytes of GRUB EFI image do not fit grub-mkrescue's efi.img", len(img))
	}
	out := filepath.Join(dir, "kiln-grub.iso")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	l, err := iso.Write(context.Background(), f, iso.Params{
		VolumeID:    iso.VolumeID(talosVer),
		VolumeSetID: iso.Label(talosVer),
		Files:       append(append(bt.iso, pc.Files...), efi.Files...),
		Dirs:        pc.Dirs,
		BIOS:        pc.BIOS,
		ESPSize:     size,
		BuildESP: func(ctx context.Context, out *os.File, offset, size int64) error {
			_, err := esp.BuildAt(ctx, out, offset, size, files, opts)
			return err
		},
		ModTime: modTime,
		TempDir: dir,
	})
	if err != nil {
		t.Fatalf("iso.Write: %v", err)
	}
	return out, l
}

// TestMkrescueEFIErrors: MkrescueEFI takes EFI platforms only, and a tree
// with modules.
func TestMkrescueEFIErrors(t *testing.T) {
	if _, err := iso.MkrescueEFI(os.DirFS(hostGrubPC), grub.FormatPC); err == nil {
		t.Error("MkrescueEFI accepted i386-pc")
	}
	if _, err := iso.MkrescueEFI(os.DirFS(t.TempDir()), grub.FormatX86_64EFI); err == nil {
		t.Error("MkrescueEFI accepted an empty directory")
	}
	big := iso.Mkrescue{EFI: []iso.EFIImage{{Path: "EFI/BOOT/BOOTX64.EFI", Image: make([]byte, 2<<20)}, {Path: "EFI/BOOT/BOOTAA64.EFI", Image: make([]byte, 1<<20)}}}
	if size, ok := big.FATSize(); ok {
		t.Errorf("3 MiB of EFI images fit a FAT image of %d bytes", size)
	}
}

// TestGrubOnlySameAsGrubMkrescue builds kiln's GRUB-only ISO and the one
// Talos's grub-mkrescue call (pkg/imager/iso/grub.go: no --directory, so
// every platform of the host's /usr/lib/grub, i386-pc and x86_64-efi) makes
// from the same scratch tree, and compares what stays equal:
//   - the El Torito entries: BIOS no-emulation, 4 sectors, the i386-pc
//     eltorito.img with boot info table, then UEFI no-emulation over a
//     2.88 MB FAT image (5760 sectors) holding efi/boot/bootx64.efi, GRUB
//     EFI image with grub-mkrescue's modules, prefix and config (byte for
//     byte: grub's TestMkrescueEFIMatchesGrubMkrescue; here equal but for
//     the xzio and gcry_crc modules grub-mkrescue --compress=xz adds);
//   - the tree: boot/, boot/grub/{grub.cfg,roms,i386-pc,x86_64-efi} with
//     the same names, modes and owners, the GRUB files equal to
//     grub-mkrescue's xz-decompressed.
//
// and checks the differences kept: kiln's FAT image is the appended ESP
// (GPT partition 2 "Appended2", not a visible /efi.img inside the volume
// as grub-mkrescue's "EFI boot partition"); no HFS+ hybrid and Apple
// partition map (/System, /mach_kernel, HFSPLUS) for Macs; no fonts and
// locale; partition 1 is a mountable copy of the volume from LBA 64
// (grub-mkrescue's starts at 0: Gap0); no xorriso name as data preparer.
func TestGrubOnlySameAsGrubMkrescue(t *testing.T) {
	mustTool(t, "mcopy")
	dir := t.TempDir()
	v, err := release.ParseVersion(talosVer)
	if err != nil {
		t.Fatal(err)
	}
	bt := grubOnlyTree(t, map[string][]byte{
		"boot/vmlinuz":       randBytes(7, 1<<20+3),
		"boot/initramfs.xz":  randBytes(8, 2<<20+11),
		"boot/grub/grub.cfg": grub.ISOConfig(v, "talos.platform=metal console=ttyS0 talos.halt_if_installed=1"),
	})
	img, l := buildGrubOnly(t, dir, bt)
	t.Logf("kiln layout %+v", l)

	scratch := filepath.Join(dir, "scratch")
	for p, data := range bt.bytes {
		dst := filepath.Join(scratch, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(filepath.Join(scratch, "imagecache"), 0o755); err != nil {
		t.Fatal(err)
	}
	ref := filepath.Join(dir, "grub-mkrescue.iso")
	cmd := exec.Command("grub-mkrescue", "--compress=xz", "--output="+ref, "--verbose", scratch, "-iso-level", "3", "--",
		"-volume_date", "all_file_dates", fmt.Sprintf("=%d", modTime.Unix()),
		"-volume_date", "uuid", modTime.UTC().Format("2006010215040500"),
		"-volid", iso.VolumeID(talosVer), "-volset-id", iso.Label(talosVer))
	cmd.Env = append(os.Environ(), fmt.Sprintf("SOURCE_DATE_EPOCH=%d", modTime.Unix()))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("grub-mkrescue: %v\n%s", err, b)
	}

	// El Torito entries, LBAs masked.
	et := func(p string) []string {
		ls := lines(run(t, "xorriso", "-indev", p, "-report_el_torito", "plain"), regexp.MustCompile(`^El Torito (boot img|img opts|images)`))
		for i, l := range ls {
			ls[i] = regexp.MustCompile(` \d+$`).ReplaceAllString(l, " LBA")
		}
		return ls
	}
	ke, xe := et(img), et(ref)
	t.Logf("El Torito, kiln:\n%s\ngrub-mkrescue:\n%s", strings.Join(ke, "\n"), strings.Join(xe, "\n"))
	sameLines(t, "xorriso -report_el_torito", ke, xe)
	if !strings.Contains(strings.Join(ke, "\n"), "El Torito boot img : 2 UEFI y none 0x0000 0x00 5760 LBA") {
		t.Errorf("EFI entry is not over a 5760-sector FAT image")
	}
	if l.ESPSize != iso.MkrescueFATSize {
		t.Errorf("ESP of %d bytes, want grub-mkrescue's %d", l.ESPSize, iso.MkrescueFATSize)
	}
	if out := run(t, "xorriso", "-indev", img, "-report_el_torito", "plain"); !strings.Contains(out, "El Torito img path :   1  /boot/grub/i386-pc/eltorito.img") {
		t.Errorf("BIOS entry is not boot/grub/i386-pc/eltorito.img:\n%s", out)
	}

	// The GRUB EFI images: kiln's in its ESP, grub-mkrescue's in /efi.img.
	kfat, xfat := filepath.Join(dir, "kiln-esp.img"), filepath.Join(dir, "efi.img")
	extract(t, img, kfat, l.ESPStart, l.ESPSize)
	run(t, "xorriso", "-osirrox", "on", "-indev", ref, "-extract", "/efi.img", xfat)
	t.Logf("fsck.vfat -n: %s", run(t, "fsck.vfat", "-n", kfat)) // run fails the test on errors
	if out := run(t, "file", "-b", kfat); !strings.Contains(out, "FAT (12 bit)") {
		t.Errorf("kiln's FAT image: %s, want FAT12 as grub-mkrescue's", out)
	}
	kefi, xefi := filepath.Join(dir, "kiln.efi"), filepath.Join(dir, "mkrescue.efi")
	run(t, "mcopy", "-i", kfat, "::/EFI/BOOT/BOOTX64.EFI", kefi)
	run(t, "mcopy", "-i", xfat, "::/efi/boot/bootx64.efi", xefi)
	if ls := run(t, "mdir", "-/", "-b", "-i", kfat, "::"); strings.Count(ls, "\n") != 3 {
		t.Errorf("kiln's FAT image holds more than EFI/BOOT/BOOTX64.EFI:\n%s", ls)
	}
	mods := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, m := range regexp.MustCompile(`\x00(part_gpt|part_msdos|fshelp|fat|part_apple|iso9660|crypto|xzio|gcry_crc)\x00`).FindAllSubmatch(b, -1) {
			names = append(names, string(m[1]))
		}
		return strings.Join(names, " ")
	}
	t.Logf("GRUB EFI module names, kiln: %s; grub-mkrescue: %s", mods(kefi), mods(xefi))
	for _, m := range []string{"part_gpt", "part_msdos", "fat", "part_apple", "iso9660"} {
		if !strings.Contains(" "+mods(kefi)+" ", " "+m+" ") {
			t.Errorf("kiln's GRUB EFI image lacks module %s", m)
		}
	}
	for _, m := range []string{"xzio", "gcry_crc"} {
		if strings.Contains(" "+mods(kefi)+" ", " "+m+" ") {
			t.Errorf("kiln's GRUB EFI image has %s, which only compressed modules need", m)
		}
	}
	for _, p := range []string{kefi, xefi} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(b, []byte("()/boot/grub\x00")) || !bytes.Contains(b, []byte("insmod part_msdos\n")) {
			t.Errorf("%s lacks grub-mkrescue's prefix or embedded config", filepath.Base(p))
		}
	}

	// The trees: names, modes, owners; GRUB files' sizes masked (xz there).
	tree := func(p string) []string {
		var r []string
		for _, l := range lines(run(t, "xorriso", "-indev", p, "-find", "/", "-exec", "lsdl", "--"), regexp.MustCompile(`^[-d]`)) {
			if regexp.MustCompile(`'/(boot/grub/(fonts|locale)|System|mach_kernel|efi\.img)`).MatchString(l) {
				continue
			}
			if regexp.MustCompile(`'/boot/grub/(i386-pc|x86_64-efi)/`).MatchString(l) {
				f := strings.Fields(l)
				f[4] = "N"
				l = strings.Join(f, " ")
			}
			r = append(r, l)
		}
		return r
	}
	sameLines(t, "tree", tree(img), tree(ref))

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
		case strings.HasPrefix(rel, "boot/grub/i386-pc/") || strings.HasPrefix(rel, "boot/grub/x86_64-efi/"):
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

	// Partition 1: the volume on its own; the GPT clean.
	if out := run(t, "sgdisk", "-v", img); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}
	size, err := sfdiskP1Size(img)
	if err != nil {
		t.Fatal(err)
	}
	p1 := run(t, "blkid", "-p", "-o", "export", "-O", "32768", "-S", fmt.Sprint(size), img)
	if !strings.Contains(p1, "TYPE=iso9660") || !strings.Contains(p1, "LABEL="+iso.VolumeID(talosVer)) {
		t.Errorf("partition 1: %s", p1)
	}
}
