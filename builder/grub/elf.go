package grub

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ELF constants used here (elf.h).
const (
	shtProgbits = 1
	shtSymtab   = 2
	shtRela     = 4
	shtNobits   = 8
	shtRel      = 9

	shfAlloc     = 0x2
	shfExecinstr = 0x4

	emI386    = 3
	emX86_64  = 62
	emAarch64 = 183

	shnUndef = 0
	shnAbs   = 0xfff1
)

var le = binary.LittleEndian

type elfSection struct {
	name    string
	typ     uint32
	flags   uint64
	addr    uint64
	offset  uint64
	size    uint64
	link    uint32
	info    uint32
	align   uint64
	entsize uint64
}

// elfFile is a little-endian ELF file's section table over its bytes. GRUB's
// kernel.img is read through it; the bytes are GRUB's own build output, but
// every offset is still checked before it is used.
type elfFile struct {
	data     []byte
	is64     bool
	machine  uint16
	sections []elfSection
}

func parseELF(data []byte) (*elfFile, error) {
	if len(data) < 52 || string(data[:4]) != "\x7fELF" {
		return nil, errors.New("not an ELF file")
	}

	f := &elfFile{data: data}

	switch data[4] {
	case 1:
	case 2:
		f.is64 = true
	default:
		return nil, fmt.Errorf("unknown ELF class %d", data[4])
	}

	if data[5] != 1 {
		return nil, errors.New("not a little-endian ELF file")
	}

	if data[6] != 1 {
		return nil, errors.New("invalid ELF header")
	}

	var (
		shoff                    uint64
		shentsize, shnum, strndx uint16
		minEntsize               uint16
	)

	if f.is64 {
		if len(data) < 64 {
			return nil, errors.New("truncated ELF header")
		}

		f.machine = le.Uint16(data[18:])
		if le.Uint32(data[20:]) != 1 {
			return nil, errors.New("invalid ELF header")
		}

		shoff = le.Uint64(data[40:])
		shentsize, shnum, strndx = le.Uint16(data[58:]), le.Uint16(data[60:]), le.Uint16(data[62:])
		minEntsize = 64
	} else {
		f.machine = le.Uint16(data[18:])
		if le.Uint32(data[20:]) != 1 {
			return nil, errors.New("invalid ELF header")
		}

		shoff = uint64(le.Uint32(data[32:]))
		shentsize, shnum, strndx = le.Uint16(data[46:]), le.Uint16(data[48:]), le.Uint16(data[50:])
		minEntsize = 40
	}

	if shnum == 0 || shentsize < minEntsize {
		return nil, errors.New("ELF file has no usable section table")
	}

	if shoff > uint64(len(data)) || uint64(shnum)*uint64(shentsize) > uint64(len(data))-shoff {
		return nil, errors.New("ELF section table is outside the file")
	}

	f.sections = make([]elfSection, shnum)
	for i := range f.sections {
		h := data[shoff+uint64(i)*uint64(shentsize):]
		s := &f.sections[i]

		if f.is64 {
			s.typ, s.flags, s.addr = le.Uint32(h[4:]), le.Uint64(h[8:]), le.Uint64(h[16:])
			s.offset, s.size = le.Uint64(h[24:]), le.Uint64(h[32:])
			s.link, s.info = le.Uint32(h[40:]), le.Uint32(h[44:])
			s.align, s.entsize = le.Uint64(h[48:]), le.Uint64(h[56:])
		} else {
			s.typ, s.flags, s.addr = le.Uint32(h[4:]), uint64(le.Uint32(h[8:])), uint64(le.Uint32(h[12:]))
			s.offset, s.size = uint64(le.Uint32(h[16:])), uint64(le.Uint32(h[20:]))
			s.link, s.info = le.Uint32(h[24:]), le.Uint32(h[28:])
			s.align, s.entsize = uint64(le.Uint32(h[32:])), uint64(le.Uint32(h[36:]))
		}

		if s.typ != shtNobits && (s.offset > uint64(len(data)) || s.size > uint64(len(data))-s.offset) {
			return nil, fmt.Errorf("ELF section %d is outside the file", i)
		}

		if s.align > 1<<16 || s.align&(s.align-1) != 0 {
			return nil, fmt.Errorf("ELF section %d has alignment %d", i, s.align)
		}
	}

	if int(strndx) >= len(f.sections) {
		return nil, errors.New("ELF section name table index out of range")
	}

	names := f.sections[strndx]
	if names.typ == shtNobits {
		return nil, errors.New("ELF section name table has no data")
	}

	strtab := data[names.offset : names.offset+names.size]
	for i := range f.sections {
		n, err := cString(strtab, uint64(le.Uint32(data[shoff+uint64(i)*uint64(shentsize):])))
		if err != nil {
			return nil, fmt.Errorf("ELF section %d name: %w", i, err)
		}

		f.sections[i].name = n
	}

	return f, nil
}

// cString is the NUL-terminated string at off in tab.
func cString(tab []byte, off uint64) (string, error) {
	if off >= uint64(len(tab)) {
		return "", errors.New("string offset out of range")
	}

	for i := off; i < uint64(len(tab)); i++ {
		if tab[i] == 0 {
			return string(tab[off:i]), nil
		}
	}

	return "", errors.New("unterminated string")
}

// bytesOf is the file bytes of section s (nil for SHT_NOBITS).
func (f *elfFile) bytesOf(s *elfSection) []byte {
	if s.typ == shtNobits {
		return nil
	}

	return f.data[s.offset : s.offset+s.size]
}

func alignUp(x, a uint64) uint64 {
	if a == 0 {
		return x
	}

	return (x + a - 1) &^ (a - 1)
}
