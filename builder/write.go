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

	"github.com/kiln-dev/kiln/builder/cmdline"
	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/grub"
	"github.com/kiln-dev/kiln/builder/initramfs"
	"github.com/kiln-dev/kiln/builder/internal/kcopy"
	"github.com/kiln-dev/kiln/builder/iso"
	"github.com/kiln-dev/kiln/builder/meta"
	"github.com/kiln-dev/kiln/builder/uki"
	"github.com/kiln-dev/kiln/internal/iox"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/storage"
)

// job is one asset being written: the plan, its verified release pieces
// and a private scratch directory removed when the job ends.
type job struct {
	b    *Builder
	p    *Plan
	tmp  string
	emit func(Event)
	// open are release files read until the job ends.
	open []io.Closer
	// initrd is the initramfs with extensions once assembled
	// (initramfsImage), initrdBase the release initramfs it starts with.
	initrd     *initramfs.Image
	initrdBase storage.Asset
}

// closeLater keeps c open until the job ends.
func (j *job) closeLater(c io.Closer) { j.open = append(j.open, c) }

// bootFile opens a boot file of the plan's release (release.KernelAsset,
// ...), checked against the digest it was stored with; the caller closes
// it.
func (j *job) bootFile(ctx context.Context, file string) (storage.Asset, error) {
	a, err := j.p.boot.Open(ctx, file)
	if err != nil {
		return nil, fmt.Errorf("release %s: %w", file, err)
	}

	return a, nil
}

// scratchDir is the builds' scratch space under the data directory; what a
// crash leaves there is removed when the next builder starts.
const scratchDir = "tmp"

// scratch makes a new directory under the data directory's tmp/, for the
// caller to remove.
func (b *Builder) scratch(prefix string) (string, error) {
	dir := filepath.Join(b.cfg.DataDir, scratchDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}

	return os.MkdirTemp(dir, prefix)
}

// write assembles the asset of p into w.
func (b *Builder) write(ctx context.Context, p *Plan, w storage.AssetWriter, emit func(Event)) error {
	tmp, err := b.scratch("build-")
	if err != nil {
		return err
	}

	defer os.RemoveAll(tmp) //nolint:errcheck // scratch space

	j := &job{b: b, p: p, tmp: tmp, emit: emit}

	defer func() {
		for _, c := range j.open {
			c.Close()
		}
	}()

	if p.Output.Kind != KindCmdline {
		emit(Event{Phase: "fetch", Artifact: p.Imager, Message: "boot assets from the imager"})
	}

	switch p.Output.Kind {
	case KindKernel:
		kernel, err := j.bootFile(ctx, release.KernelAsset)
		if err != nil {
			return err
		}
		defer kernel.Close()

		emit(Event{Phase: "assemble", Message: "kernel"})

		_, err = iox.Copy(ctx, w, kernel)

		return err
	case KindCmdline:
		line, err := kernelCmdline(p)
		if err != nil {
			return err
		}

		_, err = w.Write([]byte(line))

		return err
	case KindInitramfs:
		return j.initramfs(ctx, w)
	case KindUKI:
		_, err := j.uki(ctx, w)

		return err
	case KindISO:
		return j.iso(ctx, w.File())
	case KindDisk:
		return j.disk(ctx, w)
	case KindInstaller:
		return j.installerTarball(ctx, w)
	default:
		return &UnsupportedError{What: string(p.Output.Kind) + " assets"}
	}
}

// initramfs writes the release initramfs with the schematic's extensions,
// the schematic's virtual extension and, if any, the embedded machine
// configuration (talos-formats §2).
func (j *job) initramfs(ctx context.Context, out io.Writer) error {
	exts, err := j.extensions(ctx)
	if err != nil {
		return err
	}

	base, err := j.bootFile(ctx, release.InitramfsAsset)
	if err != nil {
		return err
	}
	defer base.Close()

	j.emitInitramfs()

	return initramfs.Build(ctx, base, exts, j.initramfsOptions(), out)
}

// uki writes the unified kernel image to out: in place, its release pieces
// copied in the kernel, when out is a file (the installer's scratch copy).
func (j *job) uki(ctx context.Context, out io.Writer) (int64, error) {
	u, err := j.ukiPieces(ctx)
	if err != nil {
		return 0, err
	}

	j.emit(Event{Phase: "assemble", Message: "UKI"})

	if f, ok := out.(*os.File); ok {
		return u.size, u.writeAt(ctx, f, 0)
	}

	res, err := uki.Assemble(ctx, u.stub, u.secs, out, ukiOptions)
	if err != nil {
		return 0, fmt.Errorf("assemble UKI: %w", err)
	}

	return res.Size, nil
}

// ukiFile is the index of the UKI in bootFiles' list.
const ukiFile = 1

// bootFiles are the systemd-boot files of an ISO or a disk's ESP. The UKI
// (files[ukiFile]) is written straight into its clusters (esp.File.WriteAt);
// for an ISO j.iso copies it from the ISO tree instead.
func (j *job) bootFiles(ctx context.Context, forISO bool) ([]esp.File, error) {
	p := j.p

	u, err := j.ukiPieces(ctx)
	if err != nil {
		return nil, err
	}

	bootName := "BOOTX64.EFI"
	if p.Output.Arch == "arm64" {
		bootName = "BOOTAA64.EFI"
	}

	loader := "# systemd-boot configuration\n\ntimeout 10\n"
	if forISO {
		loader += "\nsecure-boot-enroll off\n"
	}

	sdboot, err := j.bootFile(ctx, release.SDBootAsset)
	if err != nil {
		return nil, err
	}

	// Read again (from the start) each time the file system is written;
	// the entry stays readable while the build holds it, evicted or not.
	j.closeLater(sdboot)

	files := []esp.File{
		{Path: "EFI/BOOT/" + bootName, Size: sdboot.Size(), Open: func() (io.ReadCloser, error) {
			return kcopy.SectionCloser{SectionReader: io.NewSectionReader(sdboot, 0, sdboot.Size())}, nil
		}},
		{Path: "EFI/Linux/Talos-" + p.Version.String() + ".efi", Size: u.size, WriteAt: func(ctx context.Context, out *os.File, off int64) error {
			j.emit(Event{Phase: "assemble", Message: "UKI"})

			return u.writeAt(ctx, out, off)
		}},
		fileBytes("loader/loader.conf", []byte(loader), false),
	}

	if forISO {
		files = append(files, fileBytes("loader/random-seed", make([]byte, 32), true))
	}

	return files, nil
}

// iso writes the ISO of the boot loader Talos's imager picks
// (selectBootloader): the systemd-boot files in the ISO tree and in an ESP
// image that is both the El Torito EFI entry and partition 2, so the same
// file boots as a CD and from a USB stick; for dual-boot also GRUB for
// BIOS, as grub-mkrescue lays it out (j.dualBoot); for grub GRUB alone, its
// EFI image in that ESP in place of systemd-boot (j.grubOnly). The ESP is
// built in place, at its offset in the ISO, not written aside and copied.
func (j *job) iso(ctx context.Context, out *os.File) error {
	p := j.p
	bl := selectBootloader(KindISO, p.Output.Arch, p.Version, p.schematic.Customization.Bootloader, p.Output.SecureBoot)

	var (
		files   []esp.File
		espOpts esp.Options
		tree    []iso.File
		mk      iso.Mkrescue
		err     error
	)

	switch bl {
	case schematic.BootloaderSDBoot, schematic.BootloaderDualBoot:
		if files, err = j.bootFiles(ctx, true); err != nil {
			return err
		}

		var size int64
		for _, f := range files {
			size += roundMiB(f.Size)
		}

		espOpts = esp.Options{MinSize: 10<<20 + size}

		for _, f := range files {
			tree = append(tree, iso.File{Path: f.Path, Size: f.Size, Open: f.Open, WriteAt: f.WriteAt})
		}

		// The UKI is assembled at its extent in the ISO tree, which
		// iso.Write writes before the ESP; the ESP's copy comes from there.
		var (
			written *os.File
			at      int64
		)

		u := files[ukiFile]
		tree[ukiFile].WriteAt = func(ctx context.Context, out *os.File, off int64) error {
			if err := u.WriteAt(ctx, out, off); err != nil {
				return err
			}

			written, at = out, off

			return nil
		}
		files[ukiFile].WriteAt = nil
		files[ukiFile].Open = func() (io.ReadCloser, error) {
			if written == nil {
				return nil, errors.New("the UKI is not in the ISO tree yet")
			}

			return kcopy.SectionCloser{SectionReader: io.NewSectionReader(written, at, u.Size)}, nil
		}
	case schematic.BootloaderGrub:
		if mk, err = j.grubOnly(ctx); err != nil {
			return err
		}

		// grub-mkrescue's efi.img holds the GRUB EFI images only; they are
		// not in the ISO tree.
		for _, e := range mk.EFI {
			files = append(files, fileBytes(e.Path, e.Image, false))
		}

	default: // secure boot: supportedSchematic refuses it
		return &UnsupportedError{What: "ISOs with boot loader " + bl.String()}
	}

	espSize, ok := mk.FATSize()
	if bl != schematic.BootloaderGrub || !ok {
		if espSize, err = esp.RequiredSize(files, espOpts); err != nil {
			return fmt.Errorf("build ESP: %w", err)
		}
	}

	// The image cache goes under /imagecache/ of a volume labelled TALOS_*,
	// where Talos looks for it (talos-formats §3.6, §5.2).
	if cacheDir, err := j.imageCache(ctx); err != nil {
		return err
	} else if cacheDir != "" {
		cached, err := treeFiles(cacheDir, "imagecache/")
		if err != nil {
			return err
		}

		tree = append(tree, cached...)
	}

	if bl == schematic.BootloaderDualBoot {
		if mk, err = j.dualBoot(ctx); err != nil {
			return err
		}
	}

	tree = append(tree, mk.Files...)

	j.emit(Event{Phase: "assemble", Message: "ISO (" + bl.String() + ")"})

	if _, err := iso.Write(ctx, out, iso.Params{
		VolumeID: iso.VolumeID(j.p.Version.String()), VolumeSetID: iso.Label(j.p.Version.String()), Files: tree,
		Dirs: mk.Dirs, BIOS: mk.BIOS,
		ESPSize: espSize,
		BuildESP: func(ctx context.Context, out *os.File, offset, size int64) error {
			j.emit(Event{Phase: "assemble", Message: "ESP"})

			_, err := esp.BuildAt(ctx, out, offset, size, files, espOpts)

			return err // iso.Write says "build ESP"
		},
		ModTime: time.Unix(j.p.Epoch, 0), TempDir: j.tmp,
	}); err != nil {
		return fmt.Errorf("write ISO: %w", err)
	}

	return nil
}

// dualBoot is what Talos's dual-boot ISO adds to the sd-boot one
// (pkg/imager/iso/hybrid.go): boot/vmlinuz, boot/initramfs.xz (the UKI's
// initramfs, copied from its pieces), Talos's ISO
// grub.cfg with the ISO command line (the UKI's), and what grub-mkrescue
// adds from the release's i386-pc GRUB directory.
func (j *job) dualBoot(ctx context.Context) (iso.Mkrescue, error) {
	mk, err := j.mkrescue(ctx, release.GrubPC)
	if err != nil {
		return iso.Mkrescue{}, err
	}

	return j.grubBootFiles(ctx, mk)
}

// grubOnly is Talos's GRUB-only ISO (pkg/imager/iso/grub.go): boot/vmlinuz,
// boot/initramfs.xz and Talos's ISO grub.cfg, no systemd-boot and no UKI,
// and what grub-mkrescue without --directory adds from the release's GRUB:
// i386-pc for BIOS and the architecture's EFI platform, whose GRUB image
// boots UEFI from the FAT image. Talos's grub-mkrescue also adds the other
// architecture's EFI platform, which the imager carries too; kiln adds only
// the one the ISO is for.
func (j *job) grubOnly(ctx context.Context) (iso.Mkrescue, error) {
	efi := release.GrubAMD64
	if j.p.Output.Arch == "arm64" {
		efi = release.GrubARM64
	}

	mk, err := j.mkrescue(ctx, release.GrubPC, efi)
	if err != nil {
		return iso.Mkrescue{}, err
	}

	return j.grubBootFiles(ctx, mk)
}

// mkrescue is what grub-mkrescue adds from the release's GRUB platform
// directories: i386-pc for BIOS, an EFI platform for the GRUB EFI image.
func (j *job) mkrescue(ctx context.Context, platforms ...string) (iso.Mkrescue, error) {
	var all iso.Mkrescue

	for _, platform := range platforms {
		j.emit(Event{Phase: "fetch", Artifact: j.p.Imager, Message: "GRUB " + platform})

		dir, err := j.p.boot.Grub(ctx, platform)
		if err != nil {
			return iso.Mkrescue{}, err
		}

		var mk iso.Mkrescue
		if platform == release.GrubPC {
			mk, err = iso.MkrescueBIOS(dir)
		} else {
			mk, err = iso.MkrescueEFI(dir, grub.Format(platform))
		}

		if err != nil {
			return iso.Mkrescue{}, fmt.Errorf("release GRUB %s: %w", platform, err)
		}

		all.Files = append(all.Files, mk.Files...)
		all.Dirs = append(all.Dirs, mk.Dirs...)
		all.EFI = append(all.EFI, mk.EFI...)

		if mk.BIOS != nil {
			all.BIOS = mk.BIOS
		}
	}

	return all, nil
}

// grubBootFiles adds what Talos's imager puts in the scratch tree of a GRUB
// ISO to mk: the kernel, the initramfs with extensions (from its pieces,
// the release's part copied in the kernel) and Talos's ISO grub.cfg with
// the ISO command line.
func (j *job) grubBootFiles(ctx context.Context, mk iso.Mkrescue) (iso.Mkrescue, error) {
	p := j.p

	line, err := kernelCmdline(p)
	if err != nil {
		return iso.Mkrescue{}, err
	}

	kernel, err := j.bootFile(ctx, release.KernelAsset)
	if err != nil {
		return iso.Mkrescue{}, err
	}

	j.closeLater(kernel)

	initrd, err := j.initramfsImage(ctx)
	if err != nil {
		return iso.Mkrescue{}, err
	}

	cfg := grub.ISOConfig(p.Version, line)
	mk.Files = append(mk.Files,
		iso.File{Path: "boot/vmlinuz", Size: kernel.Size(), Open: func() (io.ReadCloser, error) {
			return kcopy.SectionCloser{SectionReader: io.NewSectionReader(kernel, 0, kernel.Size())}, nil
		}},
		iso.File{Path: "boot/initramfs.xz", Size: initrd.Size, WriteAt: j.writeInitramfs},
		iso.File{Path: "boot/grub/grub.cfg", Size: int64(len(cfg)), Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(cfg)), nil
		}},
	)

	return mk, nil
}

// imageCache writes the plan's image cache tree into the scratch directory
// and returns it, or "" when the schematic asks for none.
func (j *job) imageCache(ctx context.Context) (string, error) {
	p := j.p
	if p.cachePlan == nil {
		return "", nil
	}

	dir := filepath.Join(j.tmp, "imagecache")

	j.emit(Event{Phase: "fetch", Message: fmt.Sprintf("image cache of %d images", len(p.cachePlan.Images()))})

	if err := writeCacheTree(ctx, p.cachePlan, p.cacheOpts, dir, j.emit); err != nil {
		return "", fmt.Errorf("image cache: %w", err)
	}

	return dir, nil
}

// treeFiles lists the regular files under root as ISO files under prefix.
func treeFiles(root, prefix string) ([]iso.File, error) {
	var files []iso.File

	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}

		info, err := d.Info()
		if err != nil {
			return err
		}

		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}

		files = append(files, iso.File{Path: prefix + filepath.ToSlash(rel), Size: info.Size(), Source: path})

		return nil
	})

	return files, err
}

func metaValues(p *Plan) []meta.Value {
	c := p.schematic.Customization

	values := make([]meta.Value, len(c.Meta))
	for i, m := range c.Meta {
		values[i] = meta.Value{Key: m.Key, Value: m.Value}
	}

	return values
}

// ukiContents returns the main command line and the profiles of the plan's
// UKI, as Talos's imager chooses them by output kind (pkg/imager buildUKI):
// the ISO's gets the reset profile, the disk image's and the installer's
// reset-maintenance (the installer's with cmdline.ForInstaller), a UKI
// download the main profile only and, like an installer,
// cmdline.ForInstaller's line, the rule the public factory gives both. No
// profiles before Talos 1.10.
func ukiContents(p *Plan) (string, []uki.Profile, error) {
	var (
		line  string
		err   error
		reset uki.Reset
	)

	switch p.Output.Kind {
	case KindISO:
		line, err = kernelCmdline(p)
		reset = uki.ResetSystemDisk
	case KindDisk:
		line, err = kernelCmdline(p)
		reset = uki.ResetToMaintenance
	case KindInstaller:
		line, err = cmdline.ForInstaller(cmdlineOptions(p))
		reset = uki.ResetToMaintenance
	default:
		line, err = cmdline.ForInstaller(cmdlineOptions(p))
		reset = uki.NoReset
	}

	if err != nil {
		return "", nil, err
	}

	profiles, err := uki.TalosProfiles(p.Version, line, reset)
	if err != nil {
		return "", nil, err
	}

	return line, profiles, nil
}

// kernelCmdline is the command line of the plan's output: extra kernel
// args for every kind that has a command line, META as an environment
// argument where there is no META partition to hold it (§7.1, §4.5).
func kernelCmdline(p *Plan) (string, error) {
	return cmdline.Build(cmdlineOptions(p))
}

func cmdlineOptions(p *Plan) cmdline.Options {
	c := p.schematic.Customization
	values := metaValues(p)

	return cmdline.Options{
		Platform:     p.Output.Platform,
		Arch:         p.Output.Arch,
		TalosVersion: p.Version,
		ISO:          p.Output.Kind == KindISO,
		SecureBoot:   p.Output.SecureBoot,
		ExtraArgs:    c.ExtraKernelArgs,
		Meta:         values,
		IncludeMeta:  p.Output.Kind != KindDisk && len(values) > 0,
	}
}

func fileBytes(path string, data []byte, readOnly bool) esp.File {
	return esp.File{Path: path, Size: int64(len(data)), ReadOnly: readOnly,
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil }}
}

func roundMiB(n int64) int64 { return (n + 1<<20 - 1) &^ (1<<20 - 1) }

func extensionCount(n int) string {
	switch n {
	case 0:
		return "no extensions"
	case 1:
		return "1 extension"
	}

	return fmt.Sprintf("%d extensions", n)
}
