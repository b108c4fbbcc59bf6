package grub

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"strconv"
	"strings"
)

// EFI layout constants (include/grub/efi/pe32.h, util/mkimage.c): sections
// and file contents are page aligned, and the 64-bit header (DOS stub, PE
// signature, COFF and optional headers, four section headers) rounded up to
// a page is both the header size and the offset of kernel.img's first byte
// in memory (vaddr_offset).
const (
	peAlign       = 4096
	efiHeaderSize = 4096

	// 2015-01-01T00:00:00Z, grub-mkimage's fixed COFF time stamp.
	peTimeStamp = 1420070400

	peMachineX86_64 = 0x8664
	peMachineARM64  = 0xaa64

	peRelBasedDir64 = 10
	peNXCompat      = 0x0100
)

// dosStub is the MS-DOS header and "This program cannot be run in DOS mode"
// stub every PE linker writes (e_lfanew = 0x80), as grub-mkimage writes it.
var dosStub = []byte{
	0x4d, 0x5a, 0x90, 0x00, 0x03, 0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00,
	0xb8, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00,
	0x0e, 0x1f, 0xba, 0x0e, 0x00, 0xb4, 0x09, 0xcd, 0x21, 0xb8, 0x01, 0x4c, 0xcd, 0x21, 0x54, 0x68,
	0x69, 0x73, 0x20, 0x70, 0x72, 0x6f, 0x67, 0x72, 0x61, 0x6d, 0x20, 0x63, 0x61, 0x6e, 0x6e, 0x6f,
	0x74, 0x20, 0x62, 0x65, 0x20, 0x72, 0x75, 0x6e, 0x20, 0x69, 0x6e, 0x20, 0x44, 0x4f, 0x53, 0x20,
	0x6d, 0x6f, 0x64, 0x65, 0x2e, 0x0d, 0x0d, 0x0a, 0x24, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
}

func makeEFI(dir fs.FS, o Options, machine uint16) ([]byte, error) {
	version, err := Version(dir)
	if err != nil {
		return nil, err
	}

	nx, err := setsNXCompat(version)
	if err != nil {
		return nil, err
	}

	kb, err := readFile(dir, "kernel.img", maxFileSize)
	if err != nil {
		return nil, err
	}

	k, err := loadEFIKernel(kb, machine)
	if err != nil {
		return nil, fmt.Errorf("grub: kernel.img: %w", err)
	}

	mods, err := moduleArea(dir, o, 8)
	if err != nil {
		return nil, err
	}

	return writePE(k, mods, machine, nx), nil
}

// setsNXCompat says whether grub-mkimage of this version marks EFI images
// NX-compatible: 2.14 does, 2.06 and 2.12 do not. The version comes from the
// platform directory's modinfo.sh; without it the image's header cannot be
// matched to the tool that built the modules.
func setsNXCompat(version string) (bool, error) {
	major, rest, _ := strings.Cut(version, ".")
	digits := strings.IndexFunc(rest, func(r rune) bool { return r < '0' || r > '9' })
	if digits < 0 {
		digits = len(rest)
	}

	maj, err1 := strconv.Atoi(major)
	minor, err2 := strconv.Atoi(rest[:digits])

	if err1 != nil || err2 != nil {
		return false, fmt.Errorf("grub: cannot tell the GRUB version of the EFI platform directory (modinfo.sh grub_version %q)", version)
	}

	return maj > 2 || (maj == 2 && minor >= 14), nil
}

// efiKernel is kernel.img laid out and relocated as grub-mkimage lays it out
// for EFI (grub_mkimage_load_image64 with IMAGE_EFI).
type efiKernel struct {
	img      []byte // kernel_size bytes: .text, .data, .bss[, GOT], page aligned
	execSize uint64
	start    uint64
	reloc    []byte // the .reloc section contents
}

func loadEFIKernel(kb []byte, machine uint16) (*efiKernel, error) {
	// Symbol values and relocated words are rewritten in place, as GRUB
	// does in its copy of the file.
	f, err := parseELF(bytes.Clone(kb))
	if err != nil {
		return nil, err
	}

	if !f.is64 || f.machine != machine {
		return nil, fmt.Errorf("ELF machine %d, want %d", f.machine, machine)
	}

	const vo = efiHeaderSize

	n := len(f.sections)
	addrs := make([]uint64, n)
	vaddrs := make([]uint64, n)

	isText := func(s *elfSection) bool { return s.flags&(shfExecinstr|shfAlloc) == shfExecinstr|shfAlloc }
	isData := func(s *elfSection) bool {
		return s.flags&(shfExecinstr|shfAlloc) == shfAlloc && s.typ != shtNobits
	}
	isBSS := func(s *elfSection) bool { return s.flags&(shfExecinstr|shfAlloc) == shfAlloc && s.typ == shtNobits }
	isKept := func(s *elfSection) bool { return isText(s) || isData(s) || isBSS(s) }

	for i := range f.sections {
		if s := &f.sections[i]; isKept(s) && s.size > maxImageSize {
			return nil, fmt.Errorf("section %s is %d bytes", s.name, s.size)
		}
	}

	put := func(i int, cur uint64) uint64 {
		s := &f.sections[i]
		if s.align != 0 {
			cur = alignUp(cur+vo, s.align) - vo
		}

		addrs[i] = cur

		return cur + s.size
	}

	var size uint64
	for i := range f.sections {
		if isText(&f.sections[i]) {
			size = put(i, size)
		}
	}

	size = alignUp(size+vo, peAlign) - vo
	execSize := size

	for i := range f.sections {
		if isData(&f.sections[i]) {
			size = put(i, size)
		}
	}

	bssStart, end := size, size

	for i := range f.sections {
		if isBSS(&f.sections[i]) {
			end = put(i, end)
		}

		vaddrs[i] = addrs[i] + vo
	}

	end = alignUp(end+vo, peAlign) - vo
	size = end

	if size > maxImageSize {
		return nil, errors.New("image too large")
	}

	var gotOff, gotSize uint64

	if machine == emAarch64 {
		size = alignUp(size, 16)
		gotOff = size

		for i := range f.sections {
			s := &f.sections[i]
			if s.typ != shtRel && s.typ != shtRela || s.entsize == 0 {
				continue
			}

			b := f.bytesOf(s)
			for i := uint64(0); i < uint64(len(b))/s.entsize; i++ {
				if off := i * s.entsize; off+16 <= uint64(len(b)) && uint32(le.Uint64(b[off+8:])) == uint32(elf.R_AARCH64_ADR_GOT_PAGE) {
					gotSize += 8
				}
			}
		}

		size += alignUp(gotSize, 16)
	}

	size = alignUp(size, peAlign)

	if size > maxImageSize {
		return nil, errors.New("image too large")
	}

	// kept reloc sections: .rela.X / .rel.X for a kept X, or any other name.
	keptReloc := func(s *elfSection) bool {
		var target string

		switch {
		case strings.HasPrefix(s.name, ".rela."):
			target = s.name[5:]
		case strings.HasPrefix(s.name, ".rel."):
			target = s.name[4:]
		default:
			return true
		}

		for i := range f.sections {
			if f.sections[i].name == target {
				return isKept(&f.sections[i])
			}
		}

		return false
	}

	syms, err := f.symbols()
	if err != nil {
		return nil, err
	}

	start, err := syms.relocate(vaddrs, bssStart, end)
	if err != nil {
		return nil, err
	}

	k := &efiKernel{img: make([]byte, size), execSize: execSize, start: start}
	r := &relocator{
		f: f, syms: syms, addrs: addrs, vaddrs: vaddrs, machine: machine,
		got: k.img[gotOff : gotOff+gotSize], gotOff: gotOff,
	}

	for i := range f.sections {
		s := &f.sections[i]
		if (s.typ == shtRel || s.typ == shtRela) && keptReloc(s) {
			if err := r.apply(s); err != nil {
				return nil, err
			}
		}
	}

	var fx fixups

	for i := range f.sections {
		s := &f.sections[i]
		if (s.typ == shtRel || s.typ == shtRela) && keptReloc(s) {
			if err := r.fixups(s, &fx); err != nil {
				return nil, err
			}
		}
	}

	for i := uint64(0); i < gotSize/8; i++ {
		if err := fx.add(peRelBasedDir64, gotOff+vo+8*i); err != nil {
			return nil, err
		}
	}

	k.reloc = fx.finish()

	for i := range f.sections {
		s := &f.sections[i]
		if !isKept(s) || s.typ == shtNobits {
			continue
		}

		if addrs[i]+s.size > uint64(len(k.img)) {
			return nil, fmt.Errorf("section %s ends after the image", s.name)
		}

		copy(k.img[addrs[i]:], f.bytesOf(s))
	}

	return k, nil
}

// writePE wraps the kernel and module area in grub-mkimage's PE32+ header.
func writePE(k *efiKernel, mods []byte, machine uint16, nx bool) []byte {
	coreSize := uint64(len(k.img) + len(mods))
	relocSize := uint64(len(k.reloc))
	peSize := alignUp(efiHeaderSize+coreSize, peAlign) + alignUp(relocSize, peAlign)

	pe := make([]byte, peSize)
	copy(pe, dosStub)
	copy(pe[0x80:], "PE\x00\x00")
	copy(pe[efiHeaderSize:], k.img)
	copy(pe[efiHeaderSize+uint64(len(k.img)):], mods)

	peMachine := uint16(peMachineX86_64)
	if machine == emAarch64 {
		peMachine = peMachineARM64
	}

	coff := pe[0x84:]
	le.PutUint16(coff[0:], peMachine)
	le.PutUint16(coff[2:], 4)
	le.PutUint32(coff[4:], peTimeStamp)
	le.PutUint16(coff[16:], 240)
	// executable, line numbers, local symbols and debug info stripped
	le.PutUint16(coff[18:], 0x0002|0x0004|0x0008|0x0200)

	opt := pe[0x98:]
	le.PutUint16(opt[0:], 0x20b)

	if nx {
		le.PutUint16(opt[70:], peNXCompat)
	}

	le.PutUint32(opt[60:], efiHeaderSize)
	le.PutUint32(opt[16:], uint32(k.start))
	le.PutUint32(opt[56:], uint32(peSize))
	le.PutUint32(opt[32:], peAlign)
	le.PutUint32(opt[36:], peAlign)
	le.PutUint16(opt[68:], 10) // EFI application

	for _, off := range []int{72, 80, 88, 96} {
		le.PutUint64(opt[off:], 0x10000)
	}

	le.PutUint32(opt[108:], 16)

	vma, raw := uint32(efiHeaderSize), uint32(efiHeaderSize)
	le.PutUint32(opt[20:], vma)
	le.PutUint32(opt[4:], uint32(k.execSize))

	sec := pe[0x98+240:]
	section := func(name string, vsize, rsize, chars uint32) {
		copy(sec[0:8], name)
		le.PutUint32(sec[8:], vsize)
		le.PutUint32(sec[12:], vma)
		le.PutUint32(sec[16:], rsize)
		le.PutUint32(sec[20:], raw)
		le.PutUint32(sec[36:], chars)
		vma = uint32(alignUp(uint64(vma)+uint64(vsize), peAlign))
		raw += rsize
		sec = sec[40:]
	}

	const (
		code, initData            = 0x20, 0x40
		discardable, exec, rd, wr = 0x02000000, 0x20000000, 0x40000000, 0x80000000
	)

	section(".text", uint32(k.execSize), uint32(k.execSize), code|exec|rd)

	// grub-mkimage's sizes agree between versions (2.06 as Debian patches
	// it and upstream 2.12/2.14) because .data and the reloc table always
	// end on a page here.
	dataSize := uint64(len(k.img)) - k.execSize
	le.PutUint32(opt[8:], uint32(alignUp(dataSize, peAlign)+alignUp(uint64(len(mods)), peAlign)))
	section(".data", uint32(alignUp(dataSize, peAlign)), uint32(dataSize), initData|rd|wr)

	modsRaw := peSize - relocSize - uint64(raw)
	section("mods", uint32(alignUp(modsRaw, peAlign)), uint32(modsRaw), initData|rd|wr)

	relocScn := alignUp(relocSize, peAlign)
	le.PutUint32(opt[112+5*8:], vma)
	le.PutUint32(opt[112+5*8+4:], uint32(relocScn))
	copy(pe[raw:], k.reloc)
	section(".reloc", uint32(relocScn), uint32(relocSize), initData|discardable|rd)

	return pe
}
