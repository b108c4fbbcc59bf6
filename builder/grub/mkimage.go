package grub

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
)

// Format is a grub-mkimage output format (its -O argument).
type Format string

// The formats Talos's imager and grub-mkrescue use.
const (
	FormatPC         Format = "i386-pc"
	FormatPCElTorito Format = "i386-pc-eltorito"
	FormatX86_64EFI  Format = "x86_64-efi"
	FormatARM64EFI   Format = "arm64-efi"
)

// Options are grub-mkimage's arguments: -O, the module list, -p and -c.
type Options struct {
	Format  Format
	Modules []string
	// Prefix is where GRUB looks for grub.cfg and further modules, e.g.
	// TalosPrefix. grub-mkimage requires one; an empty prefix is embedded as
	// `-p ''` embeds it.
	Prefix string
	// Config is an embedded configuration run before grub.cfg (-c); nil
	// for none. Talos's images have none; grub-mkrescue's El Torito image has
	// one (MkrescueElTorito).
	Config []byte
}

// MkrescueElTorito returns the options grub-mkrescue (2.06–2.14, which
// Talos's ISOs are made with) makes boot/grub/i386-pc/eltorito.img with:
// biosdisk and iso9660, prefix /boot/grub, and an embedded configuration that
// loads each partition map partmap.lst lists. dir is the i386-pc directory.
func MkrescueElTorito(dir fs.FS) (Options, error) {
	cfg, err := partmapConfig(dir)
	if err != nil {
		return Options{}, err
	}

	return Options{Format: FormatPCElTorito, Modules: []string{"biosdisk", "iso9660"}, Prefix: "/boot/grub", Config: cfg}, nil
}

// MkrescueEFI returns the options grub-mkrescue (Debian's 2.06, run
// without --compress) makes its EFI image of format (FormatX86_64EFI or
// FormatARM64EFI) with, efi/boot/bootx64.efi or bootaa64.efi in its
// efi.img: make_image_fwdisk_abs's prefix "()/boot/grub" (the device the
// firmware loaded GRUB from: the whole CD under El Torito) and iso9660 after
// the modules pushed for EFI (part_gpt, part_msdos, and Debian's
// mkrescue_efi_modules patch's fat and part_apple), with the same embedded
// configuration as the El Torito image. --compress=xz would add xzio and
// gcry_crc, which modules stored uncompressed do not need. dir is the
// platform directory.
func MkrescueEFI(dir fs.FS, format Format) (Options, error) {
	if format != FormatX86_64EFI && format != FormatARM64EFI {
		return Options{}, fmt.Errorf("grub: %q is not an EFI format", format)
	}

	cfg, err := partmapConfig(dir)
	if err != nil {
		return Options{}, err
	}

	return Options{
		Format:  format,
		Modules: []string{"part_gpt", "part_msdos", "fat", "part_apple", "iso9660"},
		Prefix:  "()/boot/grub",
		Config:  cfg,
	}, nil
}

// partmapConfig is grub-mkrescue's write_part: each line of the platform's
// partmap.lst, trailing CR/LF removed, as "insmod <line>"; fgets' 256-byte
// reads split longer lines, which no GRUB has.
func partmapConfig(dir fs.FS) ([]byte, error) {
	b, err := readFile(dir, "partmap.lst", 1<<20)
	if err != nil {
		return nil, err
	}

	var cfg []byte

	for line := range strings.SplitAfterSeq(string(b), "\n") {
		if line == "" {
			continue
		}

		if len(line) > 255 {
			return nil, fmt.Errorf("grub: partmap.lst line longer than 255 bytes")
		}

		cfg = fmt.Appendf(cfg, "insmod %s\n", strings.TrimRight(line, "\r\n"))
	}

	return cfg, nil
}

// MakeImage does what `grub-mkimage -d <dir> -O <format> -p <prefix>
// <modules>` does. dir is the platform directory: /usr/lib/grub/i386-pc for
// both i386-pc formats, x86_64-efi or arm64-efi for the EFI ones.
func MakeImage(dir fs.FS, o Options) ([]byte, error) {
	switch o.Format {
	case FormatPC:
		return makePC(dir, o, false)
	case FormatPCElTorito:
		return makePC(dir, o, true)
	case FormatX86_64EFI:
		return makeEFI(dir, o, emX86_64)
	case FormatARM64EFI:
		return makeEFI(dir, o, emAarch64)
	default:
		return nil, fmt.Errorf("grub: unsupported image format %q", o.Format)
	}
}

// i386-pc constants (include/grub/offsets.h, include/grub/i386/pc/boot.h).
const (
	pcLinkAddr            = 0x9000
	pcCompressedSizeOff   = 0x08
	pcUncompressedSizeOff = 0x0c
	pcMaxDecompressor     = pcLinkAddr - 0x8200
	pcKernelSeg           = 0x800

	// grub-mkimage's limits: core.img (decompressor and stream) must fit
	// below 0x78000 when counted from the link address, the decompressed
	// kernel with its bss below 0x68000.
	pcMaxCoreEnd   = 0x78000
	pcMaxKernelEnd = 0x68000
	sectorSize     = 512

	// blocklist at the end of diskboot.img: start u64, len u16, segment u16.
	blocklistOff    = sectorSize - 12
	blocklistLenOff = blocklistOff + 8
	blocklistSegOff = blocklistOff + 10
)

func makePC(dir fs.FS, o Options, eltorito bool) ([]byte, error) {
	kb, err := readFile(dir, "kernel.img", maxFileSize)
	if err != nil {
		return nil, err
	}

	kernel, memEnd, err := loadPCKernel(kb)
	if err != nil {
		return nil, fmt.Errorf("grub: kernel.img: %w", err)
	}

	mods, err := moduleArea(dir, o, 4)
	if err != nil {
		return nil, err
	}

	payload := append(kernel, mods...)

	dec, err := readFile(dir, "lzma_decompress.img", maxFileSize)
	if err != nil {
		return nil, err
	}

	if len(dec) > pcMaxDecompressor {
		return nil, errors.New("grub: lzma_decompress.img: decompressor is too big")
	}

	if len(dec) < pcUncompressedSizeOff+4 {
		return nil, errors.New("grub: lzma_decompress.img is too small")
	}

	tooBig := fmt.Errorf("grub: core image is too big (more than 0x%x)", pcMaxCoreEnd)

	compressed, err := compressLZMA(payload, pcMaxCoreEnd-pcLinkAddr-len(dec))
	if errors.Is(err, errTooBig) {
		return nil, tooBig
	}

	if err != nil {
		return nil, err
	}

	le.PutUint32(dec[pcCompressedSizeOff:], uint32(len(compressed)))
	le.PutUint32(dec[pcUncompressedSizeOff:], uint32(len(payload)))

	coreSize := len(dec) + len(compressed)
	if pcLinkAddr+coreSize > pcMaxCoreEnd || coreSize > 0xffff*sectorSize || uint64(memEnd)+pcLinkAddr > pcMaxKernelEnd {
		return nil, tooBig
	}

	diskboot, err := readFile(dir, "diskboot.img", sectorSize)
	if err != nil {
		return nil, err
	}

	if len(diskboot) != sectorSize {
		return nil, fmt.Errorf("grub: diskboot.img size must be %d bytes", sectorSize)
	}

	if le.Uint16(diskboot[blocklistSegOff:]) != pcKernelSeg+sectorSize>>4 {
		return nil, errors.New("grub: diskboot.img: unexpected blocklist segment")
	}

	le.PutUint16(diskboot[blocklistLenOff:], uint16((coreSize+sectorSize-1)/sectorSize))

	var out []byte

	if eltorito {
		cdboot, err := readFile(dir, "cdboot.img", 64<<10)
		if err != nil {
			return nil, err
		}

		out = append(out, cdboot...)
	}

	out = append(out, diskboot...)
	out = append(out, dec...)

	return append(out, compressed...), nil
}

// loadPCKernel lays out i386-pc's kernel.img (a linked ELF32 executable) as
// grub-mkimage does for a non-relocatable target: each .text and .data-like
// PROGBITS section at its address minus the link address, the image ending
// where the last such data section ends. memEnd is where the last NOBITS
// section ends (grub-mkimage's kernel_size + bss_size), for its size check.
func loadPCKernel(b []byte) (img []byte, memEnd uint32, err error) {
	f, err := parseELF(b)
	if err != nil {
		return nil, 0, err
	}

	if f.is64 || f.machine != emI386 {
		return nil, 0, errors.New("not an i386 ELF32 file")
	}

	var (
		kernelSize uint64
		kept       []*elfSection
	)

	place := func(s *elfSection) error {
		if s.addr < pcLinkAddr || s.addr+s.size > pcMaxKernelEnd {
			return fmt.Errorf("section %s at 0x%x is outside GRUB's kernel space", s.name, s.addr)
		}

		kernelSize = s.addr - pcLinkAddr + s.size

		return nil
	}

	for i := range f.sections {
		s := &f.sections[i]
		if s.typ == shtProgbits && s.flags&(shfAlloc|shfExecinstr) == shfAlloc|shfExecinstr {
			if s.addr != pcLinkAddr {
				return nil, 0, fmt.Errorf("its start address is 0x%x instead of 0x%x", s.addr, pcLinkAddr)
			}

			if err := place(s); err != nil {
				return nil, 0, err
			}

			kept = append(kept, s)
		}
	}

	for i := range f.sections {
		s := &f.sections[i]
		if s.typ == shtProgbits && s.flags&(shfAlloc|shfExecinstr) == shfAlloc {
			if err := place(s); err != nil {
				return nil, 0, err
			}

			kept = append(kept, s)
		}
	}

	end := kernelSize

	for i := range f.sections {
		s := &f.sections[i]
		if s.typ == shtNobits {
			if s.addr < pcLinkAddr || s.addr+s.size > pcMaxKernelEnd {
				return nil, 0, fmt.Errorf("section %s at 0x%x is outside GRUB's kernel space", s.name, s.addr)
			}

			end = s.addr - pcLinkAddr + s.size
		}
	}

	img = make([]byte, kernelSize)

	for _, s := range kept {
		off := s.addr - pcLinkAddr
		if off+s.size > kernelSize {
			return nil, 0, fmt.Errorf("section %s ends after the image", s.name)
		}

		copy(img[off:], f.bytesOf(s))
	}

	return img, uint32(end), nil
}
