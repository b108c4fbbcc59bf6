//go:build e2e

package disk_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/disk"
	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/grub"
	"github.com/kiln-dev/kiln/builder/xfs"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

// cmdlineInitrd is a newc initramfs whose /init (busybox) prints the
// kernel command line and powers off.
func cmdlineInitrd(t *testing.T) []byte {
	t.Helper()
	testfixture.RequireTool(t, "cpio")
	testfixture.Require(t, "/bin/busybox")
	root := t.TempDir()
	os.MkdirAll(filepath.Join(root, "bin"), 0o755)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(root, "bin", "busybox"), bb, 0o755)
	os.WriteFile(filepath.Join(root, "init"), []byte("#!/bin/busybox sh\n/bin/busybox mkdir -p /proc\n/bin/busybox mount -t proc proc /proc\n"+
		"echo \"KILN-CMDLINE: $(/bin/busybox cat /proc/cmdline)\"\n/bin/busybox poweroff -f\n"), 0o755)
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBootGRUBVersions boots dual-boot disks under SeaBIOS (q35, TCG)
// through GRUB's BIOS path with each Debian GRUB (2.06, 2.12, 2.14) and
// the XFS profiles of the Talos versions it can read: every GRUB reads
// lts_6.12 (Talos 1.10–1.12), only 2.14 Talos 1.13's lts_6.18, whose
// exchange bit 2.06 and 2.12 refuse (the last case checks that refusal,
// so that a GRUB that learns it is noticed). A grub disk with 2.14's
// x86_64-efi image boots under OVMF.
func TestBootGRUBVersions(t *testing.T) {
	testfixture.RequireTool(t, "qemu-system-x86_64")
	kernel, err := os.ReadFile(testfixture.Kernel())
	if err != nil {
		t.Fatal(err)
	}
	initrd := cmdlineInitrd(t)
	versions := testfixture.GrubVersions()
	trees := map[string]string{
		"2.06": hostGrub,
		"2.12": filepath.Join(versions, "trixie", "root", "usr", "lib", "grub"),
		"2.14": filepath.Join(versions, "sid", "root", "usr", "lib", "grub"),
	}
	for _, tc := range []struct {
		grub     string
		features xfs.Features
		profile  string
		bl       disk.Bootloader
		uefi     bool
		boots    bool
	}{
		{"2.06", xfs.LTS612, "lts_6.12", disk.BootloaderDualBoot, false, true},
		{"2.12", xfs.LTS612, "lts_6.12", disk.BootloaderDualBoot, false, true},
		{"2.14", xfs.LTS618, "lts_6.18", disk.BootloaderDualBoot, false, true},
		{"2.14", xfs.LTS618, "lts_6.18", disk.BootloaderGRUB, true, true},
		{"2.12", xfs.LTS618, "lts_6.18", disk.BootloaderDualBoot, false, false},
	} {
		name := tc.grub + " " + tc.profile + " " + string(tc.bl)
		if tc.uefi {
			name += " OVMF"
		}
		t.Run(name, func(t *testing.T) {
			dir := trees[tc.grub]
			testfixture.Require(t, filepath.Join(dir, "i386-pc", "kernel.img"), filepath.Join(dir, "x86_64-efi", "kernel.img"))
			pc := os.DirFS(filepath.Join(dir, "i386-pc"))
			core, err := grub.MakeImage(pc, grub.Options{Format: grub.FormatPC, Modules: append(append([]string(nil), grub.TalosModules...), grub.TalosBIOSModules...), Prefix: grub.TalosPrefix})
			if err != nil {
				t.Fatal(err)
			}
			boot, err := grub.BootImage(pc)
			if err != nil {
				t.Fatal(err)
			}
			efiFiles := []esp.File{bytesFile("EFI/boot/placeholder", []byte("sd-boot would be here"))}
			if tc.bl == disk.BootloaderGRUB {
				img, err := grub.MakeImage(os.DirFS(filepath.Join(dir, "x86_64-efi")), grub.Options{Format: grub.FormatX86_64EFI, Modules: grub.TalosModules, Prefix: grub.TalosPrefix})
				if err != nil {
					t.Fatal(err)
				}
				efiFiles = []esp.File{bytesFile("EFI/boot/BOOTX64.efi", img)}
			}
			arg := "kiln.grub=" + strings.ReplaceAll(name, " ", "_")
			cfg := grub.DiskConfig(release.MustParseVersion("v1.13.0"), "console=ttyS0 "+arg, true)
			features := tc.features
			bootPart := xfs.Partition(disk.BootSize, []xfs.File{
				xfsBytes("A/vmlinuz", kernel), xfsBytes("A/initramfs.xz", initrd), xfsBytes("grub/grub.cfg", cfg),
			}, xfs.Options{Features: &features})
			img := filepath.Join(t.TempDir(), "disk.raw")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			err = disk.Write(context.Background(), f, disk.Params{
				Bootloader: tc.bl, EFI: disk.ESP(efiFiles, esp.Options{}),
				BIOS: &disk.BIOSBoot{BootImage: boot, CoreImage: core}, Boot: &bootPart,
			})
			f.Close()
			if err != nil {
				t.Fatal(err)
			}

			args := []string{"-M", "q35", "-m", "512", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
				"-drive", "file=" + img + ",format=raw,if=virtio"}
			if tc.uefi {
				vars := filepath.Join(t.TempDir(), "vars.fd")
				data, err := os.ReadFile("/usr/share/OVMF/OVMF_VARS_4M.fd")
				if err != nil {
					t.Skip(err)
				}
				os.WriteFile(vars, data, 0o644)
				args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd", "-drive", "if=pflash,format=raw,file="+vars)
			}
			timeout := 3 * time.Minute
			if !tc.boots {
				timeout = 40 * time.Second // GRUB stops in its rescue shell
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			out, _ := exec.CommandContext(ctx, "qemu-system-x86_64", args...).CombinedOutput()
			booted := bytes.Contains(out, []byte("KILN-CMDLINE: BOOT_IMAGE=/A/vmlinuz console=ttyS0 "+arg))
			if booted != tc.boots {
				t.Errorf("booted = %v, want %v; console:\n%s", booted, tc.boots, tail(string(out), 2000))
			}
		})
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
