package iso

import (
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"

	"github.com/kiln-dev/kiln/builder/grub"
)

// GrubDir is where grub-mkrescue puts GRUB's files on an ISO.
const GrubDir = "boot/grub"

// mkrescueCopies are the files besides the modules (*.mod) that
// grub-mkrescue copies from a platform directory (grub-install-common.c's
// grub_install_copy_files: the listed .lst files, modinfo.sh and the efiemu
// objects); images, config.h and fdt.lst stay behind.
var mkrescueCopies = map[string]bool{
	"command.lst": true, "crypto.lst": true, "fs.lst": true, "moddep.lst": true, "partmap.lst": true,
	"parttool.lst": true, "terminal.lst": true, "video.lst": true, "modinfo.sh": true,
	"efiemu32.o": true, "efiemu64.o": true,
}

// maxGrubFiles bounds what a platform directory may hand us; GRUB 2.06–2.14
// have about 300 files in i386-pc.
const maxGrubFiles = 2048

// MkrescueBIOS returns what grub-mkrescue --directory=<dir> adds to an ISO
// for BIOS, from dir, a release's /usr/lib/grub/i386-pc: the module tree
// under boot/grub/i386-pc and the BIOS boot (El Torito image
// boot/grub/i386-pc/eltorito.img, boot_hybrid.img for the MBR).
//
// Unlike Talos's grub-mkrescue --compress=xz, the modules are stored as
// they are (GRUB loads either; compressing them with xz costs about 2 s and
// saves about 2 MiB), so the El Torito image needs no xzio and gcry_crc.
// grub-mkrescue's fonts (unicode.pf2) and translations (locale/*.mo) come
// from /usr/share, which a release does not carry; Talos's menu uses the
// console terminal and no translations.
func MkrescueBIOS(dir fs.FS) (Mkrescue, error) {
	opts, err := grub.MkrescueElTorito(dir)
	if err != nil {
		return Mkrescue{}, fmt.Errorf("iso: %w", err)
	}
	img, err := grub.MakeImage(dir, opts)
	if err != nil {
		return Mkrescue{}, fmt.Errorf("iso: El Torito image: %w", err)
	}
	mbr, err := grub.HybridBootImage(dir)
	if err != nil {
		return Mkrescue{}, fmt.Errorf("iso: %w", err)
	}
	files, err := platformFiles(dir, path.Join(GrubDir, string(grub.FormatPC)))
	if err != nil {
		return Mkrescue{}, err
	}
	return Mkrescue{
		Files: files,
		Dirs:  []string{path.Join(GrubDir, "roms")}, // grub-mkrescue's, for --rom-directory
		BIOS:  &BIOS{ImagePath: path.Join(GrubDir, string(grub.FormatPC), "eltorito.img"), Image: img, MBR: mbr},
	}, nil
}

// Mkrescue is what grub-mkrescue adds to an ISO: Params.Files, Params.Dirs
// and Params.BIOS; for a GRUB-only ISO also the GRUB EFI images of its FAT
// image (EFI).
type Mkrescue struct {
	Files []File
	Dirs  []string
	BIOS  *BIOS
	EFI   []EFIImage
}

// EFIImage is a GRUB EFI image and its path in the FAT image of a GRUB-only
// ISO (the El Torito EFI entry and GPT partition 2).
type EFIImage struct {
	Path  string // e.g. "EFI/BOOT/BOOTX64.EFI"
	Image []byte
}

// MkrescueFATSize is the size of grub-mkrescue's efi.img (mformat -C -f
// 2880: a 2.88 MB FAT12 floppy), the least a GRUB-only ISO's FAT image is.
const MkrescueFATSize = 2880 << 10

// FATSize is the size of the FAT image of a GRUB-only ISO holding m.EFI:
// grub-mkrescue's MkrescueFATSize (FAT12) when the images fit it with room
// for the FATs and directories; ok is false when they do not, and the
// image must be sized for its contents (esp.RequiredSize).
func (m Mkrescue) FATSize() (size int64, ok bool) {
	var n int64
	for _, e := range m.EFI {
		n += roundUp(int64(len(e.Image)), 4096)
	}

	return MkrescueFATSize, n <= MkrescueFATSize-128<<10
}

// MkrescueEFI returns what grub-mkrescue (without --directory, as Talos's
// GRUB-only ISO runs it) adds to an ISO for one EFI platform from dir, a
// release's /usr/lib/grub/x86_64-efi or arm64-efi: the module tree under
// boot/grub/<platform> and the GRUB EFI image (grub.MkrescueEFI's options,
// modules stored uncompressed as in MkrescueBIOS) as the removable-media
// boot path of the FAT image, EFI/BOOT/BOOTX64.EFI or BOOTAA64.EFI
// (grub-mkrescue's efi/boot/bootx64.efi; FAT names are case-insensitive).
func MkrescueEFI(dir fs.FS, format grub.Format) (Mkrescue, error) {
	var name string

	switch format {
	case grub.FormatX86_64EFI:
		name = "BOOTX64.EFI"
	case grub.FormatARM64EFI:
		name = "BOOTAA64.EFI"
	default:
		return Mkrescue{}, fmt.Errorf("iso: %q is not a GRUB EFI platform", format)
	}

	opts, err := grub.MkrescueEFI(dir, format)
	if err != nil {
		return Mkrescue{}, fmt.Errorf("iso: %w", err)
	}

	img, err := grub.MakeImage(dir, opts)
	if err != nil {
		return Mkrescue{}, fmt.Errorf("iso: GRUB EFI image: %w", err)
	}

	files, err := platformFiles(dir, path.Join(GrubDir, string(format)))
	if err != nil {
		return Mkrescue{}, err
	}

	return Mkrescue{Files: files, EFI: []EFIImage{{Path: "EFI/BOOT/" + name, Image: img}}}, nil
}

// platformFiles lists the files grub-mkrescue copies from dir into the ISO
// directory to, as grub-mkrescue leaves them (executable; mkisofs -r makes
// them r-xr-xr-x).
func platformFiles(dir fs.FS, to string) ([]File, error) {
	ents, err := fs.ReadDir(dir, ".")
	if err != nil {
		return nil, fmt.Errorf("iso: GRUB directory: %w", err)
	}
	var files []File
	for _, e := range ents {
		name := e.Name()
		if !e.Type().IsRegular() || !(strings.HasSuffix(name, ".mod") || mkrescueCopies[name]) {
			continue
		}
		if len(files) == maxGrubFiles {
			return nil, fmt.Errorf("iso: GRUB directory has more than %d files", maxGrubFiles)
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("iso: GRUB directory: %w", err)
		}
		files = append(files, File{
			Path: path.Join(to, name),
			Size: info.Size(),
			Mode: 0o755,
			Open: func() (io.ReadCloser, error) { return openSized(dir, name, info.Size()) },
		})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("iso: GRUB directory has no modules")
	}
	sort.Slice(files, func(i, j int) bool { return files[i].Path < files[j].Path })
	return files, nil
}

// openSized opens name and checks it still has the size listed.
func openSized(dir fs.FS, name string, size int64) (io.ReadCloser, error) {
	f, err := dir.Open(name)
	if err != nil {
		return nil, err
	}
	if st, err := f.Stat(); err != nil || st.Size() != size {
		f.Close()
		return nil, fmt.Errorf("iso: GRUB file %s changed size", name)
	}
	return f, nil
}
