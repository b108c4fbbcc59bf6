package depmod

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"strings"
)

// maxSection bounds a section read into memory (the .symtab of the
// largest Debian module is under 2 MiB).
const maxSection = 64 << 20

// module is what depmod reads from one .ko, with libkmod-elf.c's rules.
type module struct {
	// exports are the symbols the module provides: the names of its
	// __crc_<name> symbols (CONFIG_MODVERSIONS), or else the strings of
	// __ksymtab_strings (kmod_elf_get_symbols).
	exports []string
	// needs are its undefined symbols in .symtab order, then the
	// __versions entries no undefined symbol named (module_layout, ...)
	// (kmod_elf_get_dependency_symbols).
	needs []string
	// info is .modinfo as key=value pairs, in order.
	info []keyValue
}

type keyValue struct{ key, value string }

// sectionReader finds sections by name, first match from index 1, and
// reads their bytes as stored in the file, as kmod_elf_get_section does
// (no decompression of SHF_COMPRESSED sections: kmod reads them raw too).
type sectionReader struct {
	f    *elf.File
	r    io.ReaderAt
	size int64
}

func (s sectionReader) data(name string) ([]byte, bool, error) {
	for _, sec := range s.f.Sections[min(1, len(s.f.Sections)):] {
		if sec.Name != name {
			continue
		}

		if sec.Type == elf.SHT_NOBITS {
			return nil, true, nil
		}

		if sec.FileSize > maxSection || sec.Offset > uint64(s.size) || sec.FileSize > uint64(s.size)-sec.Offset {
			return nil, true, fmt.Errorf("section %s of %d bytes at %d in a file of %d", name, sec.FileSize, sec.Offset, s.size)
		}

		b := make([]byte, sec.FileSize)
		if _, err := s.r.ReadAt(b, int64(sec.Offset)); err != nil {
			return nil, true, fmt.Errorf("section %s: %w", name, err)
		}

		return b, true, nil
	}

	return nil, false, nil
}

// readModule parses a module. An error means libkmod could not open it as
// ELF at all; depmod then lists the module with no dependencies, aliases
// or symbols, and so does Generate.
func readModule(r io.ReaderAt, size int64) (*module, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, err
	}

	s := sectionReader{f: f, r: r, size: size}
	m := &module{}

	syms, symErr := s.symbols(f)

	m.exports, err = s.exports(syms, symErr)
	if err != nil {
		return nil, err
	}

	if symErr == nil {
		if m.needs, err = s.needs(f, syms); err != nil {
			return nil, err
		}
	}

	modinfo, _, err := s.data(".modinfo")
	if err != nil {
		return nil, err
	}

	for _, kv := range splitStrings(modinfo) {
		k, v, _ := strings.Cut(kv, "=")
		m.info = append(m.info, keyValue{key: k, value: v})
	}

	return m, nil
}

type symbol struct {
	name  string
	shndx uint16
	info  byte
}

var errNoSymtab = errors.New("no usable .symtab/.strtab")

// symbols reads .symtab (from index 1) with names from the section named
// .strtab.
func (s sectionReader) symbols(f *elf.File) ([]symbol, error) {
	strtab, ok, err := s.data(".strtab")
	if err != nil {
		return nil, err
	}

	if !ok {
		return nil, errNoSymtab
	}

	symtab, ok, err := s.data(".symtab")
	if err != nil {
		return nil, err
	}

	if !ok {
		return nil, errNoSymtab
	}

	size := 24
	if f.Class == elf.ELFCLASS32 {
		size = 16
	}

	if len(symtab)%size != 0 {
		return nil, errNoSymtab
	}

	bo := f.ByteOrder
	out := make([]symbol, 0, len(symtab)/size)

	for off := size; off < len(symtab); off += size {
		e := symtab[off : off+size]

		var sym symbol

		nameOff := bo.Uint32(e[0:])
		if f.Class == elf.ELFCLASS32 {
			sym.info, sym.shndx = e[12], bo.Uint16(e[14:])
		} else {
			sym.info, sym.shndx = e[4], bo.Uint16(e[6:])
		}

		if uint64(nameOff) >= uint64(len(strtab)) {
			return nil, errNoSymtab
		}

		sym.name = cString(strtab[nameOff:])
		out = append(out, sym)
	}

	return out, nil
}

func (s sectionReader) exports(syms []symbol, symErr error) ([]string, error) {
	var out []string

	if symErr == nil {
		for _, sym := range syms {
			if name, ok := strings.CutPrefix(sym.name, "__crc_"); ok {
				out = append(out, name)
			}
		}
	}

	if len(out) > 0 {
		return out, nil
	}

	strs, _, err := s.data("__ksymtab_strings")
	if err != nil {
		return nil, err
	}

	return splitStrings(strs), nil
}

func (s sectionReader) needs(f *elf.File, syms []symbol) ([]string, error) {
	versions, _, err := s.data("__versions")
	if err != nil {
		return nil, err
	}

	const verLen = 64

	crcLen := 8
	if f.Class == elf.ELFCLASS32 {
		crcLen = 4
	}

	if len(versions)%verLen != 0 {
		versions = nil
	}

	var names []string

	for i := 0; i+verLen <= len(versions); i += verLen {
		names = append(names, cString(versions[i+crcLen:i+verLen]))
	}

	visited := make([]bool, len(names))
	registers := f.Machine == elf.EM_SPARC || f.Machine == elf.EM_SPARCV9

	var out []string

	for _, sym := range syms {
		if sym.shndx != uint16(elf.SHN_UNDEF) || sym.name == "" {
			continue
		}

		// Not really undefined: sparc gcc 3.3 creates U references for
		// global asm variables (module-init-tools' STT_REGISTER).
		if registers && sym.info&0xf == 13 {
			continue
		}

		for i, n := range names {
			if n == sym.name {
				visited[i] = true
				break
			}
		}

		out = append(out, sym.name)
	}

	for i, n := range names {
		if !visited[i] {
			out = append(out, n)
		}
	}

	return out, nil
}

// splitStrings splits a string section as kmod_elf_get_strings does:
// leading zero padding skipped, runs of NULs separate strings.
func splitStrings(b []byte) []string {
	var out []string

	for _, s := range bytes.Split(b, []byte{0}) {
		if len(s) > 0 {
			out = append(out, string(s))
		}
	}

	return out
}

func cString(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}

	return string(b)
}
