//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// releaseGrub is the /usr/lib/grub the boot proof's release carries:
// Debian unstable's (GRUB 2.14), which `make deps` unpacks.
func releaseGrub(t *testing.T) string {
	t.Helper()

	dir := filepath.Join(testfixture.GrubVersions(), "sid", "root", "usr", "lib", "grub")
	testfixture.Require(t, filepath.Join(dir, "i386-pc", "kernel.img"), filepath.Join(dir, "x86_64-efi", "kernel.img"))

	return dir
}

// trixieXFS runs Debian 13's xfsprogs tool (6.13, which knows Talos 1.13's
// lts_6.18 features; Debian 12's 6.1 refuses the exchange bit) through its
// own ld.so, from what `make e2e-tools` unpacks under _e2e/imager-trixie.
func trixieXFS(t *testing.T, tool string, args ...string) string {
	t.Helper()

	root := testfixture.XFSTrixieRoot()
	lib := filepath.Join(root, "usr", "lib", "x86_64-linux-gnu")
	testfixture.Require(t, filepath.Join(root, "usr", "sbin", tool))

	return run(t, filepath.Join(lib, "ld-linux-x86-64.so.2"), append([]string{"--library-path", lib + ":" + filepath.Join(root, "lib", "x86_64-linux-gnu"),
		filepath.Join(root, "usr", "sbin", tool)}, args...)...)
}

// checkGRUBDisk reads a served GRUB or dual-boot disk with tools that are
// not kiln's: sgdisk (clean, Talos's partition names in order, the BIOS
// partition's type and legacy-bootable attribute, unique GUIDs from
// GUIDFromLabel), fsck.vfat on EFI, xfs_repair -n and xfs_db on BOOT (label
// BOOT, UUID GUIDFromLabel("BOOT")), GRUB's own XFS driver reading
// grub.cfg with Talos's reset entry, and the MBR's GRUB boot code.
func checkGRUBDisk(t *testing.T, raw string, names []string, size int64) {
	t.Helper()

	// Talos's size for the layout, grown by the image cache's partition.
	if slices.Contains(names, "IMAGECACHE") {
		_, cache := partitionExtent(t, raw, "IMAGECACHE")
		n, _ := strconv.ParseInt(cache, 10, 64)
		size += n
	}

	if st, err := os.Stat(raw); err != nil || st.Size() != size {
		t.Errorf("%s: size %v, want %d (%v)", raw, st.Size(), size, err)
	}

	if out := run(t, "sgdisk", "-v", raw); !strings.Contains(out, "No problems found") {
		t.Errorf("sgdisk -v:\n%s", out)
	}

	guids := map[string]string{
		"EFI": "BCA5174B-0118-8A6A-AF0B-2C6E1585ACAE", "BIOS": "A2A02FF5-D88D-8E6E-9C95-26B9B6C80BC3", "BOOT": "24C73076-4092-85DD-9D98-686A2DBF6D81",
		"META": "CF04F137-101E-8EC6-9627-FA3F51CDABB8", "IMAGECACHE": "3B5449BC-C21F-8009-8B51-18945967F8DF",
	}

	for i, name := range names {
		info := run(t, "sgdisk", "-i", fmt.Sprint(i+1), raw)

		want := []string{"Partition name: '" + name + "'", "Partition unique GUID: " + guids[name]}
		if name == "BIOS" {
			want = append(want, "21686148-6449-6E6F-744E-656564454649", "Attribute flags: 0000000000000004")
		}

		for _, w := range want {
			if !strings.Contains(info, w) {
				t.Errorf("sgdisk -i %d lacks %q:\n%s", i+1, w, info)
			}
		}
	}

	if mbr := run(t, "dd", "if="+raw, "bs=446", "count=1", "status=none"); !strings.Contains(mbr, "GRUB") {
		t.Errorf("the MBR holds no GRUB boot code")
	}

	dir := t.TempDir()
	cut := func(name string) string {
		t.Helper()

		part := filepath.Join(dir, name+".img")
		start, size := partitionExtent(t, raw, name)
		run(t, "dd", "if="+raw, "of="+part, "bs=1M", "iflag=skip_bytes,count_bytes", "conv=sparse", "skip="+start, "count="+size, "status=none")

		return part
	}

	run(t, "fsck.vfat", "-n", cut("EFI"))

	boot := cut("BOOT")
	trixieXFS(t, "xfs_repair", "-n", boot)

	if db := trixieXFS(t, "xfs_db", "-r", "-c", "label", "-c", "uuid", boot); !strings.Contains(db, `label = "BOOT"`) ||
		!strings.Contains(db, "UUID = 24c73076-4092-85dd-9d98-686a2dbf6d81") {
		t.Errorf("xfs_db on BOOT: %s", db)
	}

	root := filepath.Join(testfixture.GrubVersions(), "sid", "root")
	lib := filepath.Join(root, "usr", "lib", "x86_64-linux-gnu")

	out, err := exec.Command(filepath.Join(lib, "ld-linux-x86-64.so.2"), "--library-path", lib+":"+filepath.Join(root, "lib", "x86_64-linux-gnu"),
		filepath.Join(root, "usr", "bin", "grub-fstest"), boot, "cat", "/grub/grub.cfg").CombinedOutput()
	if err != nil || !strings.Contains(string(out), `menuentry "A - Talos v1.13.0"`) ||
		!strings.Contains(string(out), `menuentry "Reset Talos installation and return to maintenance mode"`) ||
		!strings.Contains(string(out), "kiln.e2e=boot-proof") {
		t.Errorf("grub-fstest (2.14) cat /grub/grub.cfg: %v\n%s", err, out)
	}
}
