package builder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"
	talosmeta "github.com/siderolabs/talos/pkg/machinery/meta"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder/compress"
	"github.com/kiln-dev/kiln/builder/disk"
	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/ext4"
	"github.com/kiln-dev/kiln/builder/grub"
	"github.com/kiln-dev/kiln/builder/meta"
	"github.com/kiln-dev/kiln/builder/xfs"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/storage"
)

// planDisk decides a disk image's boot loader as Talos's imager does
// (selectBootloader) and refuses, before anything is built, what it cannot
// make: dual-boot on arm64 (Talos refuses it too: there is no BIOS GRUB for
// arm64), and GRUB images from a release whose imager lacks the GRUB
// platform directory they need.
func (b *Builder) planDisk(ctx context.Context, p *Plan) error {
	bl := selectBootloader(KindDisk, p.Output.Arch, p.Version, p.schematic.Customization.Bootloader, p.Output.SecureBoot)
	p.Bootloader = bl.String()

	if bl == schematic.BootloaderSDBoot {
		return nil
	}

	if bl == schematic.BootloaderDualBoot && p.Output.Arch != "amd64" {
		return &invalidSchematicError{fmt.Sprintf("bootloader dual-boot is amd64 only (it boots BIOS machines with GRUB's i386-pc); %s disk images use sd-boot or grub", p.Output.Arch)}
	}

	// Talos formats the grub layout's 100 MiB EFI partition FAT32 with
	// mkfs.vfat -S 4096 too: 25,518 clusters, under FAT32's 65,525; OVMF
	// does not load GRUB from it (tried with Talos's mkfs.vfat + mcopy),
	// and builder/esp will not write such a file system. (Legacy BIOS does not boot 4Kn disks either: SeaBIOS
	// reports "block size 4096 is unsupported".)
	if bl == schematic.BootloaderGrub && p.schematic.Customization.DiskImage.SectorSize == 4096 {
		return &UnsupportedError{What: "grub disk images with 4096-byte sectors (their 100 MiB EFI partition cannot hold a valid FAT32 at that sector size; use dual-boot or sd-boot)"}
	}

	for _, platform := range grubPlatforms(bl, p.Output.Arch) {
		if err := p.boot.CheckGrub(ctx, platform); errors.Is(err, artifacts.ErrNotInRelease) {
			return &UnsupportedError{What: fmt.Sprintf("%s disk images of this release (%v)", bl, err)}
		} else if err != nil {
			return err
		}
	}

	return nil
}

// planISO decides an ISO's boot loader as Talos's imager does and refuses,
// before anything is built, a GRUB or dual-boot ISO from a release whose
// imager lacks the GRUB platform directories it needs: i386-pc for BIOS
// (on every architecture, as Talos's grub-mkrescue call), and the
// architecture's EFI platform for a GRUB-only ISO.
func (b *Builder) planISO(ctx context.Context, p *Plan) error {
	bl := selectBootloader(KindISO, p.Output.Arch, p.Version, p.schematic.Customization.Bootloader, p.Output.SecureBoot)
	p.Bootloader = bl.String()

	var platforms []string

	switch bl {
	case schematic.BootloaderDualBoot:
		platforms = []string{release.GrubPC}
	case schematic.BootloaderGrub:
		platforms = []string{release.GrubPC, release.GrubAMD64}
		if p.Output.Arch == "arm64" {
			platforms[1] = release.GrubARM64
		}
	}

	for _, platform := range platforms {
		if err := p.boot.CheckGrub(ctx, platform); errors.Is(err, artifacts.ErrNotInRelease) {
			return &UnsupportedError{What: fmt.Sprintf("%s ISOs of this release (%v)", bl, err)}
		} else if err != nil {
			return err
		}
	}

	return nil
}

// grubPlatforms are the GRUB platform directories a disk image needs:
// i386-pc for BIOS (amd64), and for a GRUB-only image the EFI platform.
func grubPlatforms(bl schematic.Bootloader, arch string) []string {
	var platforms []string

	if arch == "amd64" {
		platforms = append(platforms, release.GrubPC)
	}

	if bl == schematic.BootloaderGrub {
		if arch == "amd64" {
			platforms = append(platforms, release.GrubAMD64)
		} else {
			platforms = append(platforms, release.GrubARM64)
		}
	}

	return platforms
}

// diskSizes are a disk image's sizes for the plan's Talos version
// (Output.FillDefaults and quirks.PartitionSizes): the metal disk size
// before an image cache, the EFI and BOOT partition sizes.
func diskSizes(v release.Version, bl schematic.Bootloader) (size, efiSize, bootSize int64) {
	sizes := quirks.New(v.String()).PartitionSizes()
	bootSize = int64(sizes.GrubBootSize())
	size = disk.MinRAWDiskSize + bootSize - disk.LegacyBootSize

	switch bl {
	case schematic.BootloaderDualBoot:
		size += int64(sizes.GrubBIOSSize()) + bootSize
		efiSize = int64(sizes.UKIEFISize())
	case schematic.BootloaderGrub:
		efiSize = int64(sizes.GrubEFISize())
	default:
		efiSize = int64(sizes.UKIEFISize())
	}

	return size, efiSize, bootSize
}

// disk writes the raw disk image of the plan's boot loader (talos-formats
// §4): sd-boot (EFI, META), dual-boot (sd-boot's EFI, BIOS with GRUB's
// core.img, BOOT, META) or grub (GRUB's EFI image, BIOS, BOOT, META), and
// IMAGECACHE when the schematic asks; sparse, compressed while streaming
// for .xz and .zst.
func (j *job) disk(ctx context.Context, w storage.AssetWriter) error {
	p := j.p
	bl := schematic.Bootloader(0)

	if err := bl.UnmarshalText([]byte(p.Bootloader)); err != nil {
		return fmt.Errorf("plan boot loader %q: %w", p.Bootloader, err)
	}

	size, efiSize, bootSize := diskSizes(p.Version, bl)
	params := disk.Params{
		Bootloader: disk.Bootloader(bl.String()),
		SectorSize: int(p.schematic.Customization.DiskImage.SectorSize),
		Size:       size,
		EFISize:    efiSize,
	}

	values := metaValues(p)

	// The imager marks a dual-boot image so that Talos removes the boot
	// loader the machine did not boot with on its first boot (out.go
	// buildImage: amd64, not SecureBoot, UseSDBootForUEFI).
	if bl == schematic.BootloaderDualBoot && p.Output.Arch == "amd64" && !p.Output.SecureBoot && p.Version.AtLeast(1, 10) {
		values = append(values, meta.Value{Key: talosmeta.DiskImageBootloader, Value: bl.String()})
	}

	if len(values) > 0 {
		part, err := meta.Partition(values)
		if err != nil {
			return &invalidSchematicError{fmt.Sprintf("customization.meta: %v", err)}
		}

		params.META = bytes.NewReader(part)
	}

	if bl == schematic.BootloaderGrub {
		efi, err := j.grubESP(ctx)
		if err != nil {
			return err
		}

		params.EFI = efi
	} else {
		files, err := j.bootFiles(ctx, false)
		if err != nil {
			return err
		}

		params.EFI = disk.ESP(files, esp.Options{})
	}

	if bl != schematic.BootloaderSDBoot {
		if err := j.grubBoot(ctx, &params, bootSize); err != nil {
			return err
		}
	}

	// The image cache is an ext4 IMAGECACHE partition after META, sized
	// as Talos sizes it; the disk grows by as much (talos-formats §4.7).
	if cacheDir, err := j.imageCache(ctx); err != nil {
		return err
	} else if cacheDir != "" {
		part, err := ext4.Partition(cacheDir)
		if err != nil {
			return fmt.Errorf("image cache partition: %w", err)
		}

		params.Extra = append(params.Extra, part)
		params.Size += part.Size
	}

	// File() turns off the writer's streaming digest (the disk is written
	// at offsets), so only an uncompressed disk asks for it: a compressed
	// one reaches the asset through Write and is digested as it goes.
	var (
		raw *os.File
		err error
	)

	if p.Output.Compression == "" {
		raw = w.File()
	} else {
		if raw, err = os.Create(filepath.Join(j.tmp, "disk.raw")); err != nil {
			return err
		}
		defer raw.Close()
	}

	j.emit(Event{Phase: "assemble", Message: bl.String() + " disk image"})

	if err := disk.Write(ctx, raw, params); err != nil {
		return fmt.Errorf("write disk image: %w", err)
	}

	if p.Output.Compression == "" {
		return nil
	}

	if _, err := raw.Seek(0, io.SeekStart); err != nil {
		return err
	}

	j.emit(Event{Phase: "compress", Message: p.Output.Compression})

	return compress.Compress(ctx, w, raw, compress.Format(p.Output.Compression), compress.Options{})
}

// grubTree is a GRUB platform directory of the plan's release.
func (j *job) grubTree(ctx context.Context, platform string) (fs.FS, error) {
	j.emit(Event{Phase: "fetch", Artifact: j.p.Imager, Message: "GRUB " + platform})

	tree, err := j.p.boot.Grub(ctx, platform)
	if err != nil {
		return nil, fmt.Errorf("release GRUB: %w", err)
	}

	return tree, nil
}

// grubESP is the EFI partition of a GRUB-only image: GRUB's EFI image
// (grub-mkimage with Talos's modules and prefix) as the removable-media
// boot file, as bootloader/grub's generateGrubImage puts it there.
func (j *job) grubESP(ctx context.Context) (disk.Content, error) {
	platform, format, name := release.GrubAMD64, grub.FormatX86_64EFI, "EFI/boot/BOOTX64.efi"
	if j.p.Output.Arch == "arm64" {
		platform, format, name = release.GrubARM64, grub.FormatARM64EFI, "EFI/boot/BOOTAA64.efi"
	}

	tree, err := j.grubTree(ctx, platform)
	if err != nil {
		return nil, err
	}

	img, err := grub.MakeImage(tree, grub.Options{Format: format, Modules: grub.TalosModules, Prefix: grub.TalosPrefix})
	if err != nil {
		return nil, fmt.Errorf("GRUB %s image: %w", platform, err)
	}

	return disk.ESP([]esp.File{fileBytes(name, img, false)}, esp.Options{}), nil
}

// grubBoot adds what GRUB boots from: the BIOS boot code on amd64 (core.img
// with Talos's modules, boot.img) and the XFS BOOT partition holding the
// kernel, the initramfs with the schematic's extensions and Talos's
// grub.cfg (bootloader/grub generateAssets, entry A).
func (j *job) grubBoot(ctx context.Context, params *disk.Params, bootSize int64) error {
	p := j.p

	if p.Output.Arch == "amd64" {
		pc, err := j.grubTree(ctx, release.GrubPC)
		if err != nil {
			return err
		}

		core, err := grub.MakeImage(pc, grub.Options{
			Format: grub.FormatPC, Modules: append(append([]string(nil), grub.TalosModules...), grub.TalosBIOSModules...), Prefix: grub.TalosPrefix,
		})
		if err != nil {
			return fmt.Errorf("GRUB core.img: %w", err)
		}

		boot, err := grub.BootImage(pc)
		if err != nil {
			return err
		}

		params.BIOS = &disk.BIOSBoot{BootImage: boot, CoreImage: core}
	}

	initrd, err := j.initramfsImage(ctx)
	if err != nil {
		return err
	}

	kernel, err := j.bootFile(ctx, release.KernelAsset)
	if err != nil {
		return err
	}

	j.closeLater(kernel)

	line, err := kernelCmdline(p)
	if err != nil {
		return err
	}

	// Dual-boot images always carry the reset entry (dual's
	// grub.NewConfig), GRUB ones from 1.4 (SupportsResetGRUBOption).
	reset := params.Bootloader == disk.BootloaderDualBoot || grub.SupportsResetOption(p.Version)
	cfg := grub.DiskConfig(p.Version, line, reset)

	files := []xfs.File{
		{Path: "A/" + release.KernelAsset, Size: kernel.Size(), Open: func() (io.ReadCloser, error) {
			return io.NopCloser(io.NewSectionReader(kernel, 0, kernel.Size())), nil
		}},
		{Path: "A/" + release.InitramfsAsset, Size: initrd.Size, Open: func() (io.ReadCloser, error) { return io.NopCloser(initrd.Reader()), nil }},
		{Path: "grub/grub.cfg", Size: int64(len(cfg)), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(cfg)), nil }},
	}

	features, err := xfs.ForConfig(quirks.New(p.Version.String()).XFSMkfsConfig())
	if err != nil {
		return fmt.Errorf("BOOT partition: %w", err)
	}

	boot := xfs.Partition(bootSize, files, xfs.Options{Features: &features, Time: time.Unix(p.Epoch, 0)})
	params.Boot = &boot

	return nil
}
