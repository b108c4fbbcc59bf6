//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

// TestGrubISO (issue 16): the metal-amd64.iso kiln serves for a
// `bootloader: grub` schematic of Talos 1.13, and for any schematic of
// Talos 1.9, is Talos's GRUB-only ISO (grub-mkrescue without --directory):
// with the release's GRUB (Debian's 2.06 from the host, 2.12 and 2.14 from
// _e2e/grub), QEMU with SeaBIOS boots it as
// a CD-ROM and as a USB stick, and OVMF as a CD-ROM, each through GRUB's
// "Talos ISO" entry (no systemd-boot, no UKI on it) into the fixture
// initramfs with the schematic's kernel arguments. The readers see the BIOS
// and EFI El Torito entries, the 2.88 MB FAT12 image holding GRUB's
// BOOTX64.EFI only, and an iso9660 TALOS_V1_13_0 on partition 1.
func TestGrubISO(t *testing.T) {
	in := bootInputsFromEnv(t)
	assets, kver := bootAssets(t, in)
	modules := extensionModules(t, in, kver)

	// Talos before 1.10 makes every ISO GRUB-only, whatever the schematic.
	suites := []struct{ name, dir, version, schematic string }{
		{"bookworm-2.06", demo.HostGrubDir, "v1.13.0", grubSchematic},
		{"trixie-2.12", filepath.Join(testfixture.GrubVersions(), "trixie", "root/usr/lib/grub"), "v1.13.0", grubSchematic},
		{"sid-2.14", filepath.Join(testfixture.GrubVersions(), "sid", "root/usr/lib/grub"), "v1.13.0", grubSchematic},
		{"v1.9.0-default", demo.HostGrubDir, "v1.9.0", bootSchematic},
	}

	for i, s := range suites {
		t.Run(s.name, func(t *testing.T) {
			for _, p := range []string{"i386-pc/boot_hybrid.img", "x86_64-efi/kernel.img"} {
				if _, err := os.Stat(filepath.Join(s.dir, p)); err != nil {
					t.Fatalf("GRUB %s: %v (make deps / make e2e-tools installs it)", s.name, err)
				}
			}

			iso := servedISO(t, assets, kver, modules, s.dir, s.schematic, s.version)
			grubISOProof(t, iso, s.version, i == 0)
		})
	}
}

func grubISOProof(t *testing.T, iso, version string, all bool) {
	checkGRUBBoot := func(t *testing.T, console string) {
		t.Helper()

		cmdline := consoleLine(console, "CMDLINE")
		for _, want := range []string{"BOOT_IMAGE=/boot/vmlinuz", "talos.platform=metal", "talos.halt_if_installed=1",
			"console=ttyS0", "kiln.e2e=boot-proof", "talos.environment=INSTALLER_META_BASE64="} {
			if !strings.Contains(cmdline, want) {
				t.Errorf("kernel command line %q lacks %q", cmdline, want)
			}
		}

		if strings.Contains(cmdline, "talos.experimental.wipe") {
			t.Errorf("GRUB booted the reset entry: %q", cmdline)
		}

		if version == "v1.13.0" {
			checkTalosInit(t, console)
		} else if !strings.Contains(console, "KILN-BOOT-DONE") || strings.Contains(console, "KILN-BOOT-FAILED") {
			// The initramfs's layers follow the version's quirks (no
			// modules.dep layer, labels kept before 1.10), which
			// checkTalosInit knows for 1.13 only; the fixture's init ran.
			t.Errorf("the fixture's init failed")
		}

		if t.Failed() {
			t.Logf("console:\n%s", tail(console, 6000))
		}
	}

	// GRUB's EFI image from the FAT image, its prefix ()/boot/grub the
	// whole CD: BOOT_IMAGE= is GRUB's, systemd-boot is not on the ISO.
	t.Run("ovmf cd-rom", func(t *testing.T) {
		checkGRUBBoot(t, qemu(t, 4*time.Minute, true, "-cdrom", iso))
	})

	t.Run("seabios cd-rom", func(t *testing.T) {
		checkGRUBBoot(t, qemu(t, 4*time.Minute, false, "-cdrom", iso))
	})

	if !all {
		return
	}

	t.Run("seabios usb stick", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, false, "-usb",
			"-drive", "if=none,id=u,format=raw,readonly=on,file="+iso, "-device", "qemu-xhci", "-device", "usb-storage,drive=u,bootindex=0")
		checkGRUBBoot(t, console)

		if disks := consoleLine(console, "DISKS"); !strings.Contains(disks, "sd") {
			t.Errorf("the guest did not see its USB stick: %q", disks)
		}
	})

	t.Run("readers", func(t *testing.T) {
		et := run(t, "xorriso", "-indev", iso, "-report_el_torito", "plain")
		for _, re := range []string{
			`El Torito boot img :\s+1\s+BIOS\s+y\s+none\s+0x0000\s+0x00\s+4\s+\d+`,
			`El Torito boot img :\s+2\s+UEFI\s+y\s+none\s+0x0000\s+0x00\s+5760\s+\d+`,
			`El Torito img path :\s+1\s+/boot/grub/i386-pc/eltorito.img`,
			`El Torito img opts :\s+1\s+boot-info-table grub2-boot-info`,
		} {
			if !regexp.MustCompile(re).MatchString(et) {
				t.Errorf("xorriso -report_el_torito lacks %s:\n%s", re, et)
			}
		}

		// No systemd-boot and no UKI in the tree; GRUB's two module trees.
		ls := run(t, "xorriso", "-indev", iso, "-find", "/", "-exec", "lsdl", "--")
		for _, absent := range []string{"'/EFI", "'/loader"} {
			if strings.Contains(ls, absent) {
				t.Errorf("the GRUB ISO has %s...:\n%s", absent, ls)
			}
		}

		for _, want := range []string{"'/boot/vmlinuz'", "'/boot/initramfs.xz'", "'/boot/grub/grub.cfg'",
			"'/boot/grub/i386-pc/normal.mod'", "'/boot/grub/x86_64-efi/normal.mod'", "'/imagecache'"} {
			if !strings.Contains(ls, want) {
				t.Errorf("the GRUB ISO lacks %s", want)
			}
		}

		dir := t.TempDir()
		run(t, "xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/boot/grub/grub.cfg", filepath.Join(dir, "grub.cfg"))

		cfg, err := os.ReadFile(filepath.Join(dir, "grub.cfg"))
		if err != nil {
			t.Fatal(err)
		}

		for _, want := range []string{`menuentry "Talos ISO" {`, `menuentry "Reset Talos installation" {`,
			" kiln.e2e=boot-proof talos.experimental.wipe=system\n\tinitrd /boot/initramfs.xz\n"} {
			if !strings.Contains(string(cfg), want) {
				t.Errorf("grub.cfg lacks %q:\n%s", want, cfg)
			}
		}

		sf := run(t, "sfdisk", "-d", iso)

		m := regexp.MustCompile(`(?m)1 : start=\s*64, size=\s*(\d+), type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7,.*name="ISO9660"`).FindStringSubmatch(sf)
		esp := regexp.MustCompile(`(?m)2 : start=\s*(\d+), size=\s*(\d+), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B`).FindStringSubmatch(sf)

		if m == nil || esp == nil {
			t.Fatalf("sfdisk -d: no partition 1 ISO9660 at LBA 64 or no ESP:\n%s", sf)
		}

		size, _ := strconv.ParseInt(m[1], 10, 64)
		p1 := run(t, "blkid", "-p", "-o", "export", "-O", "32768", "-S", fmt.Sprint(size*512), iso)

		label := "TALOS_" + strings.ToUpper(strings.ReplaceAll(version, ".", "_"))
		for _, want := range []string{"TYPE=iso9660", "LABEL=" + label, "VOLUME_SET_ID=Talos-" + version} {
			if !strings.Contains(p1, want) {
				t.Errorf("blkid on partition 1 lacks %s:\n%s", want, p1)
			}
		}

		// The FAT image (partition 2): GRUB's BOOTX64.EFI and nothing else.
		fat := filepath.Join(dir, "efi.img")
		run(t, "dd", "if="+iso, "of="+fat, "bs=512", "skip="+esp[1], "count=5760", "status=none")

		if out := run(t, "fsck.vfat", "-n", fat); !strings.Contains(out, "files") {
			t.Errorf("fsck.vfat -n: %s", out)
		}

		if out := run(t, "mdir", "-/", "-b", "-i", fat, "::"); out != "::/EFI/\n::/EFI/BOOT/\n::/EFI/BOOT/BOOTX64.EFI\n" {
			t.Errorf("FAT image holds %q, want ::/EFI/BOOT/BOOTX64.EFI only", out)
		}

		if out := run(t, "file", "-b", fat); !strings.Contains(out, "FAT (12 bit)") {
			t.Errorf("FAT image: %s, want FAT12 as grub-mkrescue's efi.img", out)
		}

		if out := run(t, "sgdisk", "-v", iso); !strings.Contains(out, "No problems found") {
			t.Errorf("sgdisk -v:\n%s", out)
		}
	})
}
