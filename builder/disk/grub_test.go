package disk_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/disk"
	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/grub"
	"github.com/kiln-dev/kiln/builder/xfs"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

const hostGrub = "/usr/lib/grub"

func runTool(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func bytesFile(p string, b []byte) esp.File {
	return esp.File{Path: p, Size: int64(len(b)), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

func xfsBytes(p string, b []byte) xfs.File {
	return xfs.File{Path: p, Size: int64(len(b)), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

// grubDisk writes a dual-boot or grub disk with the host's GRUB (Debian's
// grub-pc-bin and grub-efi-amd64-bin) and returns its path, layout, and the
// core.img and boot.img before patching.
func grubDisk(t *testing.T, bl disk.Bootloader, sector int, features xfs.Features) (string, disk.Table, []byte, []byte) {
	t.Helper()
	testfixture.Require(t, filepath.Join(hostGrub, "i386-pc", "kernel.img"), filepath.Join(hostGrub, "x86_64-efi", "kernel.img"))
	pc := os.DirFS(filepath.Join(hostGrub, "i386-pc"))
	core, err := grub.MakeImage(pc, grub.Options{Format: grub.FormatPC, Modules: append(append([]string(nil), grub.TalosModules...), grub.TalosBIOSModules...), Prefix: grub.TalosPrefix})
	if err != nil {
		t.Fatal(err)
	}
	boot, err := grub.BootImage(pc)
	if err != nil {
		t.Fatal(err)
	}
	efiFiles := []esp.File{bytesFile("EFI/boot/BOOTX64.efi", bytes.Repeat([]byte("sd-boot "), 4096)), bytesFile("loader/loader.conf", []byte("timeout 10\n"))}
	if bl == disk.BootloaderGRUB {
		img, err := grub.MakeImage(os.DirFS(filepath.Join(hostGrub, "x86_64-efi")), grub.Options{Format: grub.FormatX86_64EFI, Modules: grub.TalosModules, Prefix: grub.TalosPrefix})
		if err != nil {
			t.Fatal(err)
		}
		efiFiles = []esp.File{bytesFile("EFI/boot/BOOTX64.efi", img)}
	}
	cfg := grub.DiskConfig(release.MustParseVersion("v1.13.0"), "talos.platform=metal console=ttyS0", true)
	files := []xfs.File{
		xfsBytes("A/vmlinuz", bytes.Repeat([]byte("kernel "), 300000)),
		xfsBytes("A/initramfs.xz", bytes.Repeat([]byte("initramfs "), 500000)),
		xfsBytes("grub/grub.cfg", cfg),
	}
	bootPart := xfs.Partition(disk.BootSize, files, xfs.Options{Features: &features})
	p := disk.Params{
		Bootloader: bl,
		SectorSize: sector,
		EFI:        disk.ESP(efiFiles, esp.Options{}),
		BIOS:       &disk.BIOSBoot{BootImage: bytes.Clone(boot), CoreImage: bytes.Clone(core)},
		Boot:       &bootPart,
	}
	tb, err := disk.Layout(p)
	if err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(t.TempDir(), "disk.raw")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := disk.Write(context.Background(), f, p); err != nil {
		t.Fatal(err)
	}
	return img, tb, core, boot
}

// cut copies a partition out of the image into its own file.
func cut(t *testing.T, img string, e disk.Entry) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), e.Name+".img")
	runTool(t, "dd", "if="+img, "of="+dst, "bs=1M", "iflag=skip_bytes,count_bytes", "conv=sparse",
		"skip="+strconv.FormatInt(e.Offset, 10), "count="+strconv.FormatInt(e.Size, 10), "status=none")
	return dst
}

// TestWriteGRUB: dual-boot and grub disks read by tools that are not ours:
// sgdisk (names, type GUIDs, unique GUIDs, the BIOS partition's
// legacy-bootable attribute), fsck.vfat on EFI, xfs_repair and xfs_db on
// BOOT (label, UUID GUIDFromLabel("BOOT")), and GRUB's own XFS driver
// (grub-fstest) reading grub.cfg; the MBR's boot code and core.img are
// patched for the BIOS partition as Talos patches them, and the protective
// MBR's partition entry survives.
func TestWriteGRUB(t *testing.T) {
	testfixture.RequireTool(t, "sgdisk", "fsck.vfat", "xfs_repair", "xfs_db", "dd")
	for _, bl := range []disk.Bootloader{disk.BootloaderDualBoot, disk.BootloaderGRUB} {
		t.Run(string(bl), func(t *testing.T) {
			img, tb, core, boot := grubDisk(t, bl, 512, xfs.LTS612)
			out := runTool(t, "sgdisk", "-v", img)
			if !strings.Contains(out, "No problems found") {
				t.Errorf("sgdisk -v:\n%s", out)
			}
			wantTypes := map[string]string{"EFI": "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "BIOS": "21686148-6449-6E6F-744E-656564454649",
				"BOOT": "0FC63DAF-8483-4772-8E79-3D69D8477DE4", "META": "0FC63DAF-8483-4772-8E79-3D69D8477DE4"}
			for _, e := range tb.Partitions {
				info := runTool(t, "sgdisk", "-i", strconv.Itoa(e.Number), img)
				attr := "0000000000000000"
				if e.Name == "BIOS" {
					attr = "0000000000000004"
				}
				for _, want := range []string{"Partition name: '" + e.Name + "'", wantTypes[e.Name], strings.ToUpper(disk.GUIDFromLabel(e.Name).String()), "Attribute flags: " + attr} {
					if !strings.Contains(info, want) {
						t.Errorf("sgdisk -i %d lacks %q:\n%s", e.Number, want, info)
					}
				}
			}

			f, err := os.Open(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			bios, _ := tb.Partition("BIOS")
			mbr := make([]byte, 512)
			f.ReadAt(mbr, 0)
			wantBoot := bytes.Clone(boot)
			binary.LittleEndian.PutUint64(wantBoot[0x5c:], bios.FirstLBA)
			wantBoot[0x66], wantBoot[0x67] = 0x90, 0x90
			if !bytes.Equal(mbr[:446], wantBoot[:446]) || mbr[450] != 0xee || mbr[510] != 0x55 || mbr[511] != 0xaa {
				t.Errorf("MBR: boot code is not boot.img patched for LBA %d, or the protective entry is gone", bios.FirstLBA)
			}
			gotCore := make([]byte, len(core))
			f.ReadAt(gotCore, bios.Offset)
			wantCore := bytes.Clone(core)
			binary.LittleEndian.PutUint64(wantCore[0x1f4:], bios.FirstLBA+1)
			if !bytes.Equal(gotCore, wantCore) {
				t.Error("BIOS partition does not start with core.img patched for the next sector")
			}

			efi, _ := tb.Partition("EFI")
			runTool(t, "fsck.vfat", "-n", cut(t, img, efi))

			bootE, _ := tb.Partition("BOOT")
			part := cut(t, img, bootE)
			runTool(t, "xfs_repair", "-n", part)
			db := runTool(t, "xfs_db", "-r", "-c", "label", "-c", "uuid", part)
			if !strings.Contains(db, `label = "BOOT"`) || !strings.Contains(db, "UUID = 24c73076-4092-85dd-9d98-686a2dbf6d81") {
				t.Errorf("xfs_db: %s", db)
			}
			if _, err := exec.LookPath("grub-fstest"); err == nil {
				cfg := runTool(t, "grub-fstest", part, "cat", "/grub/grub.cfg")
				if !strings.Contains(cfg, `menuentry "Reset Talos installation and return to maintenance mode"`) {
					t.Errorf("grub-fstest cat /grub/grub.cfg:\n%s", cfg)
				}
			}
		})
	}
}

func bytesReaderOf(b []byte) *bytes.Reader { return bytes.NewReader(b) }
