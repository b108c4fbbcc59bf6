package demo

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io/fs"
	"maps"
	"path"
	"slices"
	"sort"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"

	"github.com/kiln-dev/kiln/internal/depmod"
	"github.com/kiln-dev/kiln/internal/squashfs"
	"github.com/kiln-dev/kiln/release"
)

// syntheticModule describes a stand-in kernel module: an ELF relocatable
// object with what depmod reads (exports in __ksymtab_strings, undefined
// symbols for what it needs, .modinfo) and no code.
type syntheticModule struct {
	name    string
	exports []string
	needs   []string
	info    []string // key=value, after name= and vermagic=
}

// baseModules is the module tree of the placeholder rootfs.sqsh, relative
// to usr/lib/modules/<kver>: one library the extension modules need, with
// modules.order, modules.builtin and modules.builtin.modinfo as a kernel
// build leaves them.
func baseModules() map[string]syntheticModule {
	return map[string]syntheticModule{
		"kernel/lib/libcrc32c.ko": {
			name: "libcrc32c", exports: []string{"crc32c", "crc32c_impl"}, needs: []string{"crypto_alloc_shash"},
			info: []string{"license=GPL", "description=CRC32c (Castagnoli) calculations", "softdep=pre: crc32c", "depends="},
		},
	}
}

// drbdModules are the synthetic modules of the kernel-module extension,
// relative to usr/lib/modules/<kver>: drbd needs libcrc32c from the base
// tree, its transport needs drbd.
func drbdModules() map[string]syntheticModule {
	return map[string]syntheticModule{
		"extras/drbd.ko": {
			name: "drbd", exports: []string{"drbd_register_transport", "drbd_unregister_transport"}, needs: []string{"crc32c", "printk"},
			info: []string{"license=GPL", "alias=block-major-147-*", "depends=libcrc32c"},
		},
		"extras/drbd_transport_tcp.ko": {
			name: "drbd_transport_tcp", needs: []string{"drbd_register_transport", "printk"},
			info: []string{"license=GPL", "depends=drbd"},
		},
	}
}

// moduleFiles renders modules for arch and kver.
func moduleFiles(mods map[string]syntheticModule, arch, kver string) map[string][]byte {
	out := map[string][]byte{}

	for p, m := range mods {
		out[p] = m.elf(arch, kver)
	}

	return out
}

// elf writes the module as a 64-bit little-endian ELF relocatable object:
// sections null, .text, __ksymtab_strings, .modinfo, .symtab, .strtab,
// .shstrtab.
func (m syntheticModule) elf(arch, kver string) []byte {
	machine := elf.EM_NONE

	switch arch {
	case "amd64":
		machine = elf.EM_X86_64
	case "arm64":
		machine = elf.EM_AARCH64
	}

	strs := stringTable{}
	shstrs := stringTable{}

	const (
		secText = iota + 1
		secKsymtab
		secModinfo
		secSymtab
		secStrtab
		secShstrtab
		secCount
	)

	var ksymtab, modinfo bytes.Buffer

	for _, e := range m.exports {
		ksymtab.WriteString(e + "\x00")
	}

	for _, kv := range append([]string{"name=" + m.name, "vermagic=" + kver + " SMP mod_unload "}, m.info...) {
		modinfo.WriteString(kv + "\x00")
	}

	// Symbols: the null one, then globals: each export defined in .text,
	// each need undefined.
	var symtab bytes.Buffer

	symtab.Write(make([]byte, 24))

	sym := func(name string, info byte, shndx uint16) {
		var e [24]byte

		binary.LittleEndian.PutUint32(e[0:], strs.add(name))
		e[4] = info
		binary.LittleEndian.PutUint16(e[6:], shndx)
		symtab.Write(e[:])
	}

	for _, e := range m.exports {
		sym(e, byte(elf.STB_GLOBAL)<<4|byte(elf.STT_FUNC), secText)
	}

	for _, n := range m.needs {
		sym(n, byte(elf.STB_GLOBAL)<<4|byte(elf.STT_NOTYPE), uint16(elf.SHN_UNDEF))
	}

	type section struct {
		name      string
		typ       elf.SectionType
		flags     elf.SectionFlag
		data      []byte
		link      uint32
		info      uint32
		entsize   uint64
		addralign uint64
	}

	secs := []section{
		{},
		{name: ".text", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC | elf.SHF_EXECINSTR, data: []byte{0xc3}, addralign: 16},
		{name: "__ksymtab_strings", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC, data: ksymtab.Bytes(), addralign: 1},
		{name: ".modinfo", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC, data: modinfo.Bytes(), addralign: 1},
		{name: ".symtab", typ: elf.SHT_SYMTAB, data: symtab.Bytes(), link: secStrtab, info: 1, entsize: 24, addralign: 8},
		{name: ".strtab", typ: elf.SHT_STRTAB, data: strs.bytes(), addralign: 1},
		{name: ".shstrtab", typ: elf.SHT_STRTAB, addralign: 1},
	}

	names := make([]uint32, secCount)
	for i := 1; i < secCount; i++ {
		names[i] = shstrs.add(secs[i].name)
	}

	secs[secShstrtab].data = shstrs.bytes()

	var body bytes.Buffer

	body.Write(make([]byte, 64)) // the ELF header, filled in below

	offsets := make([]uint64, secCount)

	for i := 1; i < secCount; i++ {
		for body.Len()%8 != 0 {
			body.WriteByte(0)
		}

		offsets[i] = uint64(body.Len())
		body.Write(secs[i].data)
	}

	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}

	shoff := uint64(body.Len())

	for i, s := range secs {
		var h [64]byte

		le := binary.LittleEndian
		le.PutUint32(h[0:], names[i])
		le.PutUint32(h[4:], uint32(s.typ))
		le.PutUint64(h[8:], uint64(s.flags))
		le.PutUint64(h[24:], offsets[i])
		le.PutUint64(h[32:], uint64(len(s.data)))
		le.PutUint32(h[40:], s.link)
		le.PutUint32(h[44:], s.info)
		le.PutUint64(h[48:], s.addralign)
		le.PutUint64(h[56:], s.entsize)
		body.Write(h[:])
	}

	out := body.Bytes()
	copy(out, []byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)})

	le := binary.LittleEndian
	le.PutUint16(out[16:], uint16(elf.ET_REL))
	le.PutUint16(out[18:], uint16(machine))
	le.PutUint32(out[20:], uint32(elf.EV_CURRENT))
	le.PutUint64(out[40:], shoff)
	le.PutUint16(out[52:], 64) // e_ehsize
	le.PutUint16(out[58:], 64) // e_shentsize
	le.PutUint16(out[60:], secCount)
	le.PutUint16(out[62:], secShstrtab)

	return out
}

// stringTable is an ELF string table: NUL first, each string once.
type stringTable struct {
	buf  bytes.Buffer
	seen map[string]uint32
}

func (s *stringTable) add(name string) uint32 {
	if s.buf.Len() == 0 {
		s.buf.WriteByte(0)
		s.seen = map[string]uint32{"": 0}
	}

	if off, ok := s.seen[name]; ok {
		return off
	}

	off := uint32(s.buf.Len())
	s.buf.WriteString(name + "\x00")
	s.seen[name] = off

	return off
}

func (s *stringTable) bytes() []byte {
	if s.buf.Len() == 0 {
		s.add("")
	}

	return s.buf.Bytes()
}

// placeholderRootfs is the placeholder release's rootfs.sqsh: a real
// squashfs (zstd from Talos 1.8, xz before, like Talos's own) holding a
// stand-in /usr/bin/init and the base module tree at the version's module
// path, with depmod's files, as Talos builds it (depmod -b in its
// Dockerfile), so that extensions with kernel modules can be built
// against it.
func placeholderRootfs(version release.Version, arch, kver string) ([]byte, error) {
	q := quirks.New(version.String())
	modDir := strings.TrimPrefix(q.KernelModulesPath(), "/") + "/" + kver

	tree := moduleFiles(baseModules(), arch, kver)
	tree["modules.order"] = []byte("kernel/lib/libcrc32c.ko\n")
	tree["modules.builtin"] = []byte("kernel/fs/ext4/ext4.ko\nkernel/drivers/block/loop.ko\n")
	tree["modules.builtin.modinfo"] = []byte("ext4.license=GPL\x00ext4.alias=fs-ext4\x00ext4.alias=ext3\x00loop.alias=devname:loop-control\x00loop.alias=char-major-10-237\x00")

	generated, err := depmodFiles(tree)
	if err != nil {
		return nil, err
	}

	maps.Copy(tree, generated)

	comp := squashfs.XZ
	if q.UseZSTDCompression() {
		comp = squashfs.Zstd
	}

	var img memWriterAt

	// The fastest zstd level: a release push makes one image per arch,
	// and the strongest level's encoder costs more than the tiny image.
	w, err := squashfs.NewWriter(&img, squashfs.Options{Compression: comp, ZstdLevel: zstd.SpeedFastest, ModTime: epoch()})
	if err != nil {
		return nil, err
	}

	init := elfPlaceholder(fmt.Sprintf("talos %s %s /usr/bin/init", version, arch))
	if err := w.Create("usr/bin/init", 0o755, bytes.NewReader(init), nil); err != nil {
		return nil, err
	}

	if err := w.Mkdir("usr/lib/firmware", 0o755, nil); err != nil {
		return nil, err
	}

	names := make([]string, 0, len(tree))
	for p := range tree {
		names = append(names, p)
	}

	sort.Strings(names)

	for _, p := range names {
		if err := w.Create(path.Join(modDir, p), fs.FileMode(0o644), bytes.NewReader(tree[p]), nil); err != nil {
			return nil, err
		}
	}

	if _, err := w.Close(); err != nil {
		return nil, err
	}

	return img.b, nil
}

// depmodFiles computes depmod's files for a module tree (paths relative to
// lib/modules/<kver>), read by depmod.Generate from a squashfs of it: the
// file system the release's own tree lives in.
func depmodFiles(tree map[string][]byte) (map[string][]byte, error) {
	var img memWriterAt

	w, err := squashfs.NewWriter(&img, squashfs.Options{ZstdLevel: zstd.SpeedFastest, ModTime: epoch()})
	if err != nil {
		return nil, err
	}

	for _, p := range slices.Sorted(maps.Keys(tree)) {
		if err := w.Create(p, 0o644, bytes.NewReader(tree[p]), nil); err != nil {
			return nil, err
		}
	}

	if _, err := w.Close(); err != nil {
		return nil, err
	}

	fsys, err := squashfs.NewReader(bytes.NewReader(img.b), int64(len(img.b)))
	if err != nil {
		return nil, err
	}

	return depmod.Generate(fsys, depmod.Options{Search: []string{"extras", depmod.BuiltIn}})
}

// memWriterAt is an in-memory io.WriterAt.
type memWriterAt struct{ b []byte }

func (w *memWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(w.b) {
		w.b = append(w.b, make([]byte, end-len(w.b))...)
	}

	return copy(w.b[off:], p), nil
}
