//go:build e2e

package grub

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/cpio"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

const (
	busybox    = "/bin/busybox"
	ovmfCode   = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars   = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	bootMarker = "KILN-GRUB-BOOTED"
	talosVer   = "v1.13.9"
	// bootTimeout bounds one QEMU run; a boot takes 5–15 s under TCG on an
	// idle machine (GRUB's menu waits 3 s), the rest is headroom for a
	// shared one.
	bootTimeout = 300 * time.Second
)

// initrd is a busybox initramfs whose /init prints the marker and the
// kernel command line on the console, then powers off.
func initrd(t *testing.T) []byte {
	t.Helper()

	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}

	script := "#!/bin/busybox sh\n" +
		"/bin/busybox mkdir -p /proc\n" +
		"/bin/busybox mount -t proc proc /proc\n" +
		"/bin/busybox echo \"" + bootMarker + " cmdline=[$(/bin/busybox cat /proc/cmdline)]\"\n" +
		"/bin/busybox poweroff -f\n"

	var buf bytes.Buffer

	w := cpio.NewWriter(&buf)
	for _, e := range []struct {
		h    cpio.Header
		data []byte
	}{
		{cpio.Header{Name: "bin", Mode: cpio.TypeDir | 0o755}, nil},
		{cpio.Header{Name: "dev", Mode: cpio.TypeDir | 0o755}, nil},
		{cpio.Header{Name: "dev/console", Mode: cpio.TypeChar | 0o600, RDevMajor: 5, RDevMinor: 1}, nil},
		{cpio.Header{Name: "bin/busybox", Mode: cpio.TypeReg | 0o755, Size: int64(len(bb))}, bb},
		{cpio.Header{Name: "init", Mode: cpio.TypeReg | 0o755, Size: int64(len(script))}, []byte(script)},
	} {
		h := e.h
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}

		if _, err := w.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	return buf.Bytes()
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()

	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}

	return string(out)
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// writeAt copies src into f at byte offset off.
func writeAt(t *testing.T, f *os.File, off int64, src []byte) {
	t.Helper()

	if _, err := f.WriteAt(src, off); err != nil {
		t.Fatal(err)
	}
}

var sgdiskSector = regexp.MustCompile(`First sector: (\d+).*\n.*Last sector: (\d+)`)

// partition returns a partition's first and last sector as sgdisk reads them.
func partition(t *testing.T, disk string, n int) (first, last int64) {
	t.Helper()

	m := sgdiskSector.FindStringSubmatch(run(t, "sgdisk", "-i", strconv.Itoa(n), disk))
	if m == nil {
		t.Fatalf("sgdisk -i %d: no sectors", n)
	}

	first, _ = strconv.ParseInt(m[1], 10, 64)
	last, _ = strconv.ParseInt(m[2], 10, 64)

	return first, last
}

// talosDisk writes a raw disk with Talos's GRUB layout (talos-formats §4.2):
// GPT partitions EFI (FAT, GRUB's x86_64-efi image as EFI/BOOT/BOOTX64.EFI),
// BIOS (core.img, patched, and boot.img in the MBR as
// PatchBlocklistsForDiskImage leaves them) and BOOT (ext2 here, XFS in Talos,
// with A/vmlinuz, A/initramfs.xz and grub/grub.cfg), all made with Talos's
// module lists and prefix, from the GRUB directories under lib.
func talosDisk(t *testing.T, dir, lib, cmdline string) string {
	t.Helper()

	pc, efi := os.DirFS(lib+"/i386-pc"), os.DirFS(lib+"/x86_64-efi")

	core, err := MakeImage(pc, Options{Format: FormatPC, Modules: slices.Concat(TalosModules, TalosBIOSModules), Prefix: TalosPrefix})
	if err != nil {
		t.Fatal(err)
	}

	efiImg, err := MakeImage(efi, Options{Format: FormatX86_64EFI, Modules: TalosModules, Prefix: TalosPrefix})
	if err != nil {
		t.Fatal(err)
	}

	boot, err := BootImage(pc)
	if err != nil {
		t.Fatal(err)
	}

	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	if err := os.Truncate(disk, 64<<20); err != nil {
		t.Fatal(err)
	}

	run(t, "sgdisk", "-n", "1:2048:+8M", "-t", "1:EF00", "-c", "1:EFI",
		"-n", "2:0:+1M", "-t", "2:EF02", "-c", "2:BIOS", "-A", "2:set:2",
		"-n", "3:0:0", "-t", "3:8300", "-c", "3:BOOT", disk)

	efiFirst, efiLast := partition(t, disk, 1)
	biosFirst, _ := partition(t, disk, 2)
	bootFirst, bootLast := partition(t, disk, 3)

	espImg := filepath.Join(dir, "esp.img")
	run(t, "mkfs.vfat", "-C", espImg, strconv.FormatInt((efiLast-efiFirst+1)/2, 10))
	writeFile(t, filepath.Join(dir, "BOOTX64.EFI"), efiImg)
	run(t, "mmd", "-i", espImg, "::/EFI", "::/EFI/BOOT")
	run(t, "mcopy", "-i", espImg, filepath.Join(dir, "BOOTX64.EFI"), "::/EFI/BOOT/BOOTX64.EFI")

	tree := filepath.Join(dir, "boot")
	kernel, err := os.ReadFile(testfixture.Kernel())
	if err != nil {
		t.Fatal(err)
	}

	writeFile(t, filepath.Join(tree, "A/vmlinuz"), kernel)
	writeFile(t, filepath.Join(tree, "A/initramfs.xz"), initrd(t))
	writeFile(t, filepath.Join(tree, "grub/grub.cfg"), DiskConfig(release.MustParseVersion(talosVer), cmdline, true))

	bootImg := filepath.Join(dir, "boot.ext2")
	run(t, "mke2fs", "-q", "-t", "ext2", "-d", tree, bootImg, strconv.FormatInt((bootLast-bootFirst+1)/2, 10)+"k")

	if err := PatchForGPTDisk(boot, core, uint64(biosFirst)); err != nil {
		t.Fatal(err)
	}

	f, err := os.OpenFile(disk, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	writeAt(t, f, 0, boot[:MBRCodeSize])
	writeAt(t, f, biosFirst*sectorSize, core)

	for _, p := range []struct {
		lba  int64
		file string
	}{{efiFirst, espImg}, {bootFirst, bootImg}} {
		b, err := os.ReadFile(p.file)
		if err != nil {
			t.Fatal(err)
		}

		writeAt(t, f, p.lba*sectorSize, b)
	}

	return disk
}

// resetEntry selects a menu's second entry (Talos's reset entry) once GRUB
// shows its countdown: down arrow, enter, through the serial console (SeaBIOS
// mirrors GRUB's BIOS console there and reads keys from it; OVMF's console
// is the serial port).
var resetEntry = []string{"\x1b[B", "\r"}

const countdown = "will be executed automatically"

// qemu boots args, sends keys (if any) when GRUB's menu counts down, and
// returns the serial console up to and including the marker line.
func qemu(t *testing.T, keys []string, args ...string) (console, marker string) {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()

	start := time.Now()
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		append([]string{"-m", "512", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"}, args...)...)

	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}

	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}

	cmd.Stderr = cmd.Stdout

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer

	r := bufio.NewReader(stdout)
	for {
		b, err := r.ReadByte()
		if err != nil {
			break
		}

		out.WriteByte(b)

		if keys != nil && bytes.HasSuffix(out.Bytes(), []byte(countdown)) {
			for _, k := range keys {
				if _, err := io.WriteString(stdin, k); err != nil {
					t.Fatal(err)
				}

				time.Sleep(300 * time.Millisecond)
			}

			keys = nil
		}

		if b == '\n' {
			line := out.Bytes()[bytes.LastIndexByte(out.Bytes()[:out.Len()-1], '\n')+1:]
			if bytes.Contains(line, []byte(bootMarker)) {
				marker = strings.TrimSpace(string(line))

				break
			}
		}
	}

	stdin.Close()
	err = cmd.Wait()

	if marker == "" {
		tail := out.String()
		if len(tail) > 4000 {
			tail = tail[len(tail)-4000:]
		}

		t.Fatalf("no %s on serial after %s (err %v):\n%s", bootMarker, time.Since(start).Round(time.Second), err, tail)
	}

	t.Logf("booted in %s: %s", time.Since(start).Round(100*time.Millisecond), marker)

	return out.String(), marker
}

// checkMenu wants GRUB's menu on the serial console, and logs whether its
// entries' titles made it there: SeaBIOS's serial mirror of the BIOS console
// drops characters when the host is slow to drain the port, so the titles
// are not asserted here (the entries are proven by booting them, the text
// by TestConfigMatchesTalos).
func checkMenu(t *testing.T, console string, entries ...string) {
	t.Helper()

	if !strings.Contains(console, countdown) {
		t.Fatal("GRUB's menu is not on the serial console")
	}

	for _, e := range entries {
		t.Logf("menu entry %q on the console: %v", e, strings.Contains(console, e))
	}
}

func needBootFixtures(t *testing.T) {
	t.Helper()
	testfixture.RequireTool(t, "qemu-system-x86_64", "sgdisk", "mkfs.vfat", "mmd", "mcopy", "mke2fs")
	testfixture.Require(t, testfixture.Kernel(), busybox, systemGrub+"/i386-pc/kernel.img", systemGrub+"/x86_64-efi/kernel.img")
}

// grubLibs are the GRUB builds the disk is booted with: Debian 12's 2.06,
// and unstable's (2.14, what Talos 1.13 ships) from `make deps`.
func grubLibs(t *testing.T) map[string]string {
	t.Helper()

	sid := filepath.Join(testfixture.GrubVersions(), "sid/root/usr/lib/grub")
	testfixture.Require(t, sid+"/i386-pc/kernel.img", sid+"/x86_64-efi/kernel.img")

	libs := map[string]string{}
	for _, lib := range []string{systemGrub, sid} {
		v, err := Version(os.DirFS(lib + "/i386-pc"))
		if err != nil {
			t.Fatal(err)
		}

		libs[v] = lib
	}

	return libs
}

// TestBootDiskSeaBIOS boots the Talos-layout disk as a virtio disk under
// SeaBIOS: boot.img in the MBR → core.img from the BIOS partition → GRUB
// reads (hd0,gpt3)/grub/grub.cfg (Talos's text) → kernel and initramfs. The
// menu's default entry boots, and (with GRUB 2.06) so does the reset entry
// with its wipe argument.
func TestBootDiskSeaBIOS(t *testing.T) {
	needBootFixtures(t)

	for version, lib := range grubLibs(t) {
		dir := t.TempDir()
		cmdline := "console=ttyS0 kiln.test=grub-bios"
		disk := talosDisk(t, dir, lib, cmdline)

		for _, tc := range []struct {
			name, want string
			keys       []string
		}{
			{"default", cmdline, nil},
			{"reset", cmdline + " talos.experimental.wipe=system:EPHEMERAL,STATE", resetEntry},
		} {
			if tc.keys != nil && lib != systemGrub {
				continue
			}

			t.Run(version+"/"+tc.name, func(t *testing.T) {
				console, line := qemu(t, tc.keys, "-machine", "pc", "-drive", "file="+disk+",format=raw,if=virtio")
				checkMenu(t, console, "A - Talos "+talosVer, "Reset Talos installation and return to maintenance mode")

				if !strings.Contains(line, "cmdline=[BOOT_IMAGE=/A/vmlinuz "+tc.want+"]") {
					t.Fatalf("booted with another command line: %s", line)
				}
			})
		}
	}
}

// TestBootDiskOVMF boots the same disk under OVMF through the x86_64-efi
// image in the ESP.
func TestBootDiskOVMF(t *testing.T) {
	needBootFixtures(t)
	testfixture.Require(t, ovmfCode, ovmfVars)

	for version, lib := range grubLibs(t) {
		t.Run(version, func(t *testing.T) {
			dir := t.TempDir()
			cmdline := "console=ttyS0 kiln.test=grub-efi"
			disk := talosDisk(t, dir, lib, cmdline)

			vars := filepath.Join(dir, "OVMF_VARS.fd")
			b, err := os.ReadFile(ovmfVars)
			if err != nil {
				t.Fatal(err)
			}

			writeFile(t, vars, b)

			console, line := qemu(t, nil, "-machine", "q35",
				"-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode,
				"-drive", "if=pflash,format=raw,file="+vars,
				"-drive", "file="+disk+",format=raw,if=virtio")
			checkMenu(t, console, "A - Talos "+talosVer, "Reset Talos installation and return to maintenance mode")

			if !strings.Contains(line, "cmdline=[BOOT_IMAGE=/A/vmlinuz "+cmdline+"]") {
				t.Fatalf("booted with another command line: %s", line)
			}
		})
	}
}

// TestBootISOSeaBIOS boots an ISO with grub-mkrescue's El Torito image
// (MkrescueElTorito: biosdisk and iso9660 built in, the rest of GRUB's modules
// on the volume) under SeaBIOS, patched by PatchElToritoImage and
// PatchHybridMBR (xorriso only lays the volume out): as a CD-ROM (cdboot.img →
// core.img), choosing the reset entry, and as a USB stick (boot_hybrid.img →
// diskboot.img → core.img); GRUB reads Talos's ISO grub.cfg from the ISO9660
// volume either way.
func TestBootISOSeaBIOS(t *testing.T) {
	needBootFixtures(t)
	testfixture.RequireTool(t, "xorriso")

	dir := t.TempDir()
	cmdline := "console=ttyS0 kiln.test=grub-iso"

	pcDir := os.DirFS(systemGrub + "/i386-pc")

	o, err := MkrescueElTorito(pcDir)
	if err != nil {
		t.Fatal(err)
	}

	img, err := MakeImage(pcDir, o)
	if err != nil {
		t.Fatal(err)
	}

	kernel, err := os.ReadFile(testfixture.Kernel())
	if err != nil {
		t.Fatal(err)
	}

	tree := filepath.Join(dir, "tree")
	writeFile(t, filepath.Join(tree, "boot/vmlinuz"), kernel)
	writeFile(t, filepath.Join(tree, "boot/initramfs.xz"), initrd(t))
	writeFile(t, filepath.Join(tree, "boot/grub/grub.cfg"), ISOConfig(release.MustParseVersion(talosVer), cmdline))
	writeFile(t, filepath.Join(tree, "boot/grub/i386-pc/eltorito.img"), img)

	// The rest of GRUB loads from the ISO, as grub-mkrescue copies it there.
	mods, _ := filepath.Glob(systemGrub + "/i386-pc/*.mod")
	lists, _ := filepath.Glob(systemGrub + "/i386-pc/*.lst")

	if len(mods) == 0 || len(lists) == 0 {
		t.Fatal("no GRUB modules")
	}

	mods = append(mods, lists...)

	for _, m := range mods {
		b, err := os.ReadFile(m)
		if err != nil {
			t.Fatal(err)
		}

		writeFile(t, filepath.Join(tree, "boot/grub/i386-pc", filepath.Base(m)), b)
	}

	isoPath := filepath.Join(dir, "grub.iso")
	xorrisoISO(t, tree, isoPath, false)

	iso, err := os.ReadFile(isoPath)
	if err != nil {
		t.Fatal(err)
	}

	patchISO(t, iso, img)
	writeFile(t, isoPath, iso)

	for _, tc := range []struct {
		name, want string
		keys       []string
		media      []string
	}{
		{"cdrom-reset", cmdline + " talos.experimental.wipe=system", resetEntry, []string{"-cdrom", isoPath}},
		{"usb-stick", cmdline, nil, []string{
			"-drive", "if=none,id=stick,format=raw,file=" + isoPath, "-device", "qemu-xhci", "-device", "usb-storage,drive=stick",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			console, line := qemu(t, tc.keys, append([]string{"-machine", "pc"}, tc.media...)...)
			checkMenu(t, console, "Talos ISO", "Reset Talos installation")

			if !strings.Contains(line, "cmdline=[BOOT_IMAGE=/boot/vmlinuz "+tc.want+"]") {
				t.Fatalf("booted with another command line: %s", line)
			}
		})
	}
}
