package demo

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/kiln-dev/kiln/release"
)

// HostGrubDir is where Debian's grub-pc-bin and grub-efi-amd64-bin put
// GRUB's platform directories.
const HostGrubDir = "/usr/lib/grub"

// GrubFrom returns an Options.Grub that reads GRUB platform directories
// from dir, a /usr/lib/grub: the host's (HostGrubDir) or one unpacked from
// another Debian suite (_e2e/grub/<suite>/root/usr/lib/grub). A platform
// whose directory has no kernel.img is fs.ErrNotExist. Only the regular
// files directly in the directory are taken, as GRUB's own trees hold no
// more (Debian's x86_64-efi/monolithic, signed prebuilt images, is left
// out).
func GrubFrom(dir string) func(platform string) (fs.FS, error) {
	return func(platform string) (fs.FS, error) {
		d := filepath.Join(dir, platform)
		if _, err := os.Stat(filepath.Join(d, "kernel.img")); err != nil {
			return nil, err
		}

		return os.DirFS(d), nil
	}
}

// grubLayer returns usr/lib/grub/<platform>/* of the imager: each platform
// Options.Grub supplies; without it, a synthetic i386-pc tree
// (syntheticGrubPC) and no EFI platform. The synthetic tree lets kiln build
// the dual-boot images a release defaults to on a machine with no GRUB; it
// does not boot.
func grubLayer(o *Options) ([]entry, error) {
	var entries []entry

	for _, platform := range release.GrubPlatforms {
		var (
			tree fs.FS
			err  error
		)

		if o.Grub != nil {
			tree, err = o.Grub(platform)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("GRUB %s: %w", platform, err)
			}
		}

		dir := release.GrubDir + "/" + platform + "/"

		if tree == nil {
			if platform == release.GrubPC {
				for name, data := range syntheticGrubPC() {
					entries = append(entries, file(dir+name, data))
				}
			}

			continue
		}

		des, err := fs.ReadDir(tree, ".")
		if err != nil {
			return nil, fmt.Errorf("GRUB %s: %w", platform, err)
		}

		for _, de := range des {
			if !de.Type().IsRegular() {
				continue
			}

			data, err := fs.ReadFile(tree, de.Name())
			if err != nil {
				return nil, fmt.Errorf("GRUB %s: %w", platform, err)
			}

			entries = append(entries, file(dir+de.Name(), data))
		}
	}

	return entries, nil
}

// syntheticModules are the modules a synthetic i386-pc tree has: what
// Talos's core.img (grub.TalosModules, TalosBIOSModules) and grub-mkrescue's
// El Torito image embed.
var syntheticModules = []string{
	"part_gpt", "ext2", "fat", "xfs", "normal", "configfile", "linux", "boot", "search",
	"search_fs_uuid", "search_fs_file", "ls", "cat", "echo", "test", "help", "reboot", "halt", "all_video",
	"biosdisk", "part_msdos", "iso9660",
}

// syntheticGrubPC is a stand-in i386-pc directory with the files
// builder/grub reads, shaped as GRUB's are (a kernel.img ELF executable
// linked at 0x9000, 512-byte boot sectors, diskboot.img's blocklist
// segment, moddep.lst), none of them GRUB: the boot sectors only halt.
func syntheticGrubPC() map[string][]byte {
	const sector = 512

	halt := []byte{0xfa, 0xf4, 0xeb, 0xfd} // cli; hlt; jmp $-3

	bootSector := func(what string) []byte {
		b := make([]byte, sector)
		copy(b, halt)
		copy(b[8:], "kiln synthetic placeholder: "+what)
		b[510], b[511] = 0x55, 0xaa

		return b
	}

	diskboot := make([]byte, sector)
	copy(diskboot, halt)
	// The blocklist's load segment GRUB's diskboot.img carries (0x820).
	binary.LittleEndian.PutUint16(diskboot[sector-2:], 0x820)

	cdboot := make([]byte, 2048)
	copy(cdboot, halt)

	decompressor := make([]byte, 512)
	copy(decompressor, halt)

	files := map[string][]byte{
		"kernel.img":          syntheticKernelImg([]byte("kiln synthetic placeholder: GRUB i386-pc kernel.img\n")),
		"lzma_decompress.img": decompressor,
		"diskboot.img":        diskboot,
		"cdboot.img":          cdboot,
		"boot.img":            bootSector("GRUB boot.img"),
		"boot_hybrid.img":     bootSector("GRUB boot_hybrid.img"),
		"partmap.lst":         []byte("part_gpt\npart_msdos\n"),
		"modinfo.sh":          []byte("grub_platform=\"pc\"\ngrub_target_cpu=\"i386\"\ngrub_version=\"kiln-synthetic\"\n"),
	}

	var moddep []byte
	for _, m := range syntheticModules {
		moddep = fmt.Appendf(moddep, "%s:\n", m)
		files[m+".mod"] = elfPlaceholder("GRUB i386-pc module " + m)
	}

	files["moddep.lst"] = moddep

	return files
}

// syntheticKernelImg is an ELF32 i386 executable with one .text section
// holding text at GRUB's link address 0x9000, as i386-pc's kernel.img is
// laid out.
func syntheticKernelImg(text []byte) []byte {
	const (
		ehdr     = 52
		shdr     = 40
		linkAddr = 0x9000
	)

	le := binary.LittleEndian
	shstrtab := []byte("\x00.text\x00.shstrtab\x00")
	textOff := uint32(ehdr)
	strOff := textOff + uint32(len(text))
	shOff := (strOff + uint32(len(shstrtab)) + 3) &^ 3

	b := make([]byte, shOff+3*shdr)
	copy(b, "\x7fELF\x01\x01\x01")
	le.PutUint16(b[16:], 2) // ET_EXEC
	le.PutUint16(b[18:], 3) // EM_386
	le.PutUint32(b[20:], 1)
	le.PutUint32(b[24:], linkAddr)
	le.PutUint32(b[32:], shOff)
	le.PutUint16(b[40:], ehdr)
	le.PutUint16(b[46:], shdr)
	le.PutUint16(b[48:], 3)
	le.PutUint16(b[50:], 2)
	copy(b[textOff:], text)
	copy(b[strOff:], shstrtab)

	section := func(i int, name, typ, flags, addr, off, size, align uint32) {
		h := b[shOff+uint32(i)*shdr:]
		le.PutUint32(h[0:], name)
		le.PutUint32(h[4:], typ)
		le.PutUint32(h[8:], flags)
		le.PutUint32(h[12:], addr)
		le.PutUint32(h[16:], off)
		le.PutUint32(h[20:], size)
		le.PutUint32(h[32:], align)
	}

	section(1, 1, 1, 0x6, linkAddr, textOff, uint32(len(text)), 1) // .text: PROGBITS, ALLOC|EXECINSTR
	section(2, 7, 3, 0, 0, strOff, uint32(len(shstrtab)), 1)       // .shstrtab: STRTAB

	return b
}
