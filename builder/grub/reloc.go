package grub

import (
	"debug/elf"
	"errors"
	"fmt"
)

// symtab is kernel.img's (first) symbol table, values rewritten in place.
type symtab struct {
	f       *elfFile
	entries []byte // the SHT_SYMTAB section's bytes
	entsize uint64
	strtab  []byte
}

const sym64Size = 24

func (f *elfFile) symbols() (*symtab, error) {
	for i := range f.sections {
		s := &f.sections[i]
		if s.typ != shtSymtab {
			continue
		}

		if s.entsize < sym64Size {
			return nil, errors.New("symbol table entries too small")
		}

		if int(s.link) >= len(f.sections) || f.sections[s.link].typ == shtNobits {
			return nil, errors.New("symbol string table index out of range")
		}

		return &symtab{f: f, entries: f.bytesOf(s), entsize: s.entsize, strtab: f.bytesOf(&f.sections[s.link])}, nil
	}

	return nil, errors.New("no symbol table")
}

func (t *symtab) count() uint64 { return uint64(len(t.entries)) / t.entsize }

func (t *symtab) entry(i uint64) []byte { return t.entries[i*t.entsize : i*t.entsize+sym64Size] }

// value is symbol i's (relocated) value.
func (t *symtab) value(i uint64) (uint64, error) {
	if i >= t.count() {
		return 0, fmt.Errorf("symbol index %d out of range", i)
	}

	return le.Uint64(t.entry(i)[8:]), nil
}

// relocate moves every symbol to its section's place in the image
// (relocate_symbols): absolute symbols keep their value, __bss_start and
// _end are GRUB's bss start and image end, any other undefined name is an
// error. It returns the value of the first _start or start.
func (t *symtab) relocate(vaddrs []uint64, bssStart, end uint64) (uint64, error) {
	start, found := uint64(0), false

	for i := uint64(0); i < t.count(); i++ {
		e := t.entry(i)
		nameOff := le.Uint32(e[0:])
		shndx := le.Uint16(e[6:])

		if shndx == shnAbs {
			continue
		}

		name, err := cString(t.strtab, uint64(nameOff))
		if err != nil {
			return 0, fmt.Errorf("symbol %d name: %w", i, err)
		}

		var v uint64

		switch {
		case shndx == shnUndef:
			switch {
			case nameOff != 0 && name == "__bss_start":
				v = bssStart
			case nameOff != 0 && name == "_end":
				v = end
			case nameOff != 0:
				return 0, fmt.Errorf("undefined symbol %s", name)
			default:
				continue
			}
		case int(shndx) >= len(vaddrs):
			return 0, fmt.Errorf("section %d does not exist", shndx)
		default:
			v = le.Uint64(e[8:]) + vaddrs[shndx]
		}

		le.PutUint64(e[8:], v)

		if !found && (name == "_start" || name == "start") {
			start, found = v, true
		}
	}

	if !found {
		return 0, errors.New("start symbol is not defined")
	}

	return start, nil
}

// relocator applies kernel.img's relocations as grub-mkimage does for EFI
// (relocate_addrs, translate_relocation_pe): addresses are resolved in the
// image's virtual address space starting at the header, PC-relative ones
// completely, absolute ones again by the firmware's PE loader through the
// .reloc table.
type relocator struct {
	f       *elfFile
	syms    *symtab
	addrs   []uint64
	vaddrs  []uint64
	machine uint16
	got     []byte // arm64: the GOT grub-mkimage appends after .bss
	gotOff  uint64
	gotUsed uint64
}

type rela struct {
	offset, sym uint64
	typ         uint32
	addend      uint64
}

// entries decodes a REL/RELA section.
func (r *relocator) entries(s *elfSection) ([]rela, error) {
	min := uint64(16)
	if s.typ == shtRela {
		min = 24
	}

	if s.entsize < min {
		return nil, fmt.Errorf("relocation section %s: entry size %d", s.name, s.entsize)
	}

	b := r.f.bytesOf(s)
	n := uint64(len(b)) / s.entsize
	out := make([]rela, 0, n)

	for i := uint64(0); i < n; i++ {
		off := i * s.entsize
		e := rela{offset: le.Uint64(b[off:]), sym: le.Uint64(b[off+8:]) >> 32, typ: uint32(le.Uint64(b[off+8:]))}
		if s.typ == shtRela {
			e.addend = le.Uint64(b[off+16:])
		}

		out = append(out, e)
	}

	return out, nil
}

// target is the n bytes at offset off of the section a relocation section
// applies to.
func (r *relocator) target(s *elfSection, off, n uint64) ([]byte, error) {
	if int(s.info) >= len(r.f.sections) {
		return nil, fmt.Errorf("relocation section %s: target section %d out of range", s.name, s.info)
	}

	t := &r.f.sections[s.info]
	b := r.f.bytesOf(t)

	if off > uint64(len(b)) || n > uint64(len(b))-off {
		return nil, fmt.Errorf("relocation at 0x%x outside section %s", off, t.name)
	}

	return b[off : off+n], nil
}

func (r *relocator) apply(s *elfSection) error {
	rels, err := r.entries(s)
	if err != nil {
		return err
	}

	if int(s.info) >= len(r.addrs) {
		return fmt.Errorf("relocation section %s: target section %d out of range", s.name, s.info)
	}

	const vo = efiHeaderSize

	tsa := r.addrs[s.info]
	unmatchedGOT := 0

	for j, e := range rels {
		symAddr, err := r.syms.value(e.sym)
		if err != nil {
			return err
		}

		// pc is the relocated location's address in the image.
		pc := tsa + e.offset + vo

		switch r.machine {
		case emX86_64:
			switch elf.R_X86_64(e.typ) {
			case elf.R_X86_64_NONE:
			case elf.R_X86_64_64:
				t, err := r.target(s, e.offset, 8)
				if err != nil {
					return err
				}

				le.PutUint64(t, le.Uint64(t)+e.addend+symAddr)
			case elf.R_X86_64_PC32, elf.R_X86_64_PLT32:
				t, err := r.target(s, e.offset, 4)
				if err != nil {
					return err
				}

				le.PutUint32(t, uint32(uint64(le.Uint32(t))+e.addend+symAddr-pc))
			case elf.R_X86_64_PC64:
				t, err := r.target(s, e.offset, 8)
				if err != nil {
					return err
				}

				le.PutUint64(t, le.Uint64(t)+e.addend+symAddr-pc)
			case elf.R_X86_64_32, elf.R_X86_64_32S:
				t, err := r.target(s, e.offset, 4)
				if err != nil {
					return err
				}

				le.PutUint32(t, uint32(uint64(le.Uint32(t))+e.addend+symAddr))
			default:
				return fmt.Errorf("relocation 0x%x is not implemented yet", e.typ)
			}
		case emAarch64:
			symAddr += e.addend

			t, err := r.target(s, e.offset, 4)
			if err != nil && elf.R_AARCH64(e.typ) != elf.R_AARCH64_LD64_GOT_LO12_NC {
				return err
			}

			switch elf.R_AARCH64(e.typ) {
			case elf.R_AARCH64_ABS64:
				t, err := r.target(s, e.offset, 8)
				if err != nil {
					return err
				}

				le.PutUint64(t, le.Uint64(t)+symAddr)
			case elf.R_AARCH64_PREL32:
				le.PutUint32(t, uint32(uint64(le.Uint32(t))+symAddr-pc))
			case elf.R_AARCH64_ADD_ABS_LO12_NC:
				arm64SetAbsLo12(t, symAddr)
			case elf.R_AARCH64_LDST64_ABS_LO12_NC:
				arm64SetAbsLo12LdSt64(t, symAddr)
			case elf.R_AARCH64_JUMP26, elf.R_AARCH64_CALL26:
				off := int64(symAddr - pc)
				if off < -(1<<27) || off > 1<<27-1 {
					return errors.New("CALL26 Relocation out of range")
				}

				arm64SetXXXX26(t, off)
			case elf.R_AARCH64_ADR_GOT_PAGE:
				if r.gotUsed+8 > uint64(len(r.got)) {
					return errors.New("GOT overflow")
				}

				slot := r.gotOff + r.gotUsed + vo
				gpOffset := int64(slot&^0xfff) - int64(pc&^0xfff)

				le.PutUint64(r.got[r.gotUsed:], symAddr)

				unmatchedGOT++

				if gpOffset != int64(int32(gpOffset)) {
					return errors.New("HI21 out of range")
				}

				arm64SetHi21(t, gpOffset)

				matched := false

				for _, e2 := range rels[j+1:] {
					if e2.sym == e.sym && e2.addend == e.addend && elf.R_AARCH64(e2.typ) == elf.R_AARCH64_LD64_GOT_LO12_NC {
						t2, err := r.target(s, e2.offset, 4)
						if err != nil {
							return err
						}

						arm64SetAbsLo12LdSt64(t2, slot)

						matched = true

						break
					}
				}

				if !matched {
					return errors.New("ADR_GOT_PAGE without matching LD64_GOT_LO12_NC")
				}

				r.gotUsed += 8
			case elf.R_AARCH64_LD64_GOT_LO12_NC:
				if unmatchedGOT == 0 {
					return errors.New("LD64_GOT_LO12_NC without matching ADR_GOT_PAGE")
				}

				unmatchedGOT--
			case elf.R_AARCH64_ADR_PREL_PG_HI21:
				off := int64(symAddr&^0xfff) - int64(pc&^0xfff)
				if off != int64(int32(off)) {
					return errors.New("CALL26 Relocation out of range")
				}

				arm64SetHi21(t, off)
			default:
				return fmt.Errorf("relocation 0x%x is not implemented yet", e.typ)
			}
		}
	}

	return nil
}

// fixups adds the base relocations the PE loader must apply: the absolute
// 64-bit words.
func (r *relocator) fixups(s *elfSection, fx *fixups) error {
	rels, err := r.entries(s)
	if err != nil {
		return err
	}

	base := r.vaddrs[s.info]

	for _, e := range rels {
		addr := base + e.offset

		switch r.machine {
		case emX86_64:
			switch elf.R_X86_64(e.typ) {
			case elf.R_X86_64_32, elf.R_X86_64_32S:
				return errors.New("can't add fixup entry for R_X86_64_32(S)")
			case elf.R_X86_64_64:
				if err := fx.add(peRelBasedDir64, addr); err != nil {
					return err
				}
			}
		case emAarch64:
			switch elf.R_AARCH64(e.typ) {
			case elf.R_AARCH64_ABS64:
				if err := fx.add(peRelBasedDir64, addr); err != nil {
					return err
				}
			case elf.R_AARCH64_CALL26, elf.R_AARCH64_JUMP26, elf.R_AARCH64_PREL32,
				elf.R_AARCH64_ADR_PREL_PG_HI21, elf.R_AARCH64_ADD_ABS_LO12_NC, elf.R_AARCH64_LDST64_ABS_LO12_NC,
				elf.R_AARCH64_ADR_GOT_PAGE, elf.R_AARCH64_LD64_GOT_LO12_NC:
			default:
				return fmt.Errorf("relocation 0x%x is not implemented yet", e.typ)
			}
		}
	}

	return nil
}

// AArch64 instruction field updates (grub-core/kern/arm64/dl_helper.c).

func arm64Patch(t []byte, keep uint32, val uint32) {
	le.PutUint32(t, le.Uint32(t)&keep|val&^keep)
}

func arm64SetXXXX26(t []byte, off int64) { arm64Patch(t, 0xfc000000, uint32(off>>2)) }

func arm64SetHi21(t []byte, off int64) {
	off >>= 12
	arm64Patch(t, 0x9f00001f, uint32((off&3)<<29|((off>>2)&0x7ffff)<<5))
}

func arm64SetAbsLo12(t []byte, v uint64) { arm64Patch(t, 0xffc003ff, uint32(v<<10)) }

func arm64SetAbsLo12LdSt64(t []byte, v uint64) { arm64Patch(t, 0xfff803ff, uint32(v<<7)) }

// fixups builds a PE base relocation table the way grub-mkimage's
// add_fixup_entry does: a block per 4 KiB page run of ascending addresses,
// blocks padded to 8 bytes, the last one padded so the table ends on a page.
type fixups struct {
	out     []byte
	active  bool
	page    uint64
	entries []uint16
}

func (fx *fixups) add(typ uint16, addr uint64) error {
	if addr >= 1<<32 {
		return fmt.Errorf("fixup address 0x%x beyond 4 GiB", addr)
	}

	if fx.active && (addr < fx.page || fx.page+0x1000 <= addr) {
		fx.flush(false)
	}

	if !fx.active {
		fx.active, fx.page, fx.entries = true, addr&^0xfff, fx.entries[:0]
	}

	if len(fx.entries) >= 0x1000 {
		return errors.New("too many fixup entries")
	}

	fx.entries = append(fx.entries, typ<<12|uint16(addr-fx.page))

	return nil
}

func (fx *fixups) flush(last bool) {
	size := uint64(8 + 2*len(fx.entries))

	if last {
		next := uint64(len(fx.out)) + size
		for pad := (alignUp(next, peAlign) - next) >> 1; pad > 0; pad-- {
			fx.entries = append(fx.entries, 0)
		}
	} else {
		for ; size%8 != 0; size += 2 {
			fx.entries = append(fx.entries, 0)
		}
	}

	fx.out = le.AppendUint32(fx.out, uint32(fx.page))
	fx.out = le.AppendUint32(fx.out, uint32(8+2*len(fx.entries)))

	for _, e := range fx.entries {
		fx.out = le.AppendUint16(fx.out, e)
	}

	fx.active = false
}

func (fx *fixups) finish() []byte {
	if fx.active {
		fx.flush(true)
	}

	return fx.out
}
