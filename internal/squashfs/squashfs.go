// Package squashfs reads and writes squashfs 4.0 images.
//
// The writer makes the extension layers of a Talos initramfs in one
// streaming pass, zstd- or xz-compressed: the Talos kernel mounts nothing
// else (CONFIG_SQUASHFS_XZ=y, CONFIG_SQUASHFS_ZSTD=y, CONFIG_SQUASHFS_ZLIB
// unset in siderolabs/pkgs kernel/build/config-amd64 and config-arm64).
// It exists instead of go-diskfs's squashfs.Create because that writer
// (v1.9.4) needs the whole tree extracted into a workspace first, reads
// symlink targets and xattrs with workspace-relative paths (so both fail
// unless the process's working directory happens to be the workspace),
// stamps the superblock with time.Now(), gives empty files a fragment
// index of 0 instead of "none", which the kernel refuses (the schematic
// extension's only file is empty), and writes xz streams (CRC64, 8 MiB
// dictionary) the kernel cannot mount. This writer streams each file's
// data blocks straight into the image as it is added, keeps only the
// metadata (a few dozen bytes per inode) in memory, and writes the tables
// at Close.
//
// Writer scope: regular files, directories and symlinks; everything owned
// by root (mksquashfs -all-root, as Talos builds extension layers); one
// fixed mtime; xattrs (Talos keeps security.selinux); no fragments (a
// file's tail is a short block: a little less compression on small files,
// and no fragment-table code to get wrong); no NFS export table; 128 KiB
// blocks; no compressor options (the kernel ignores zstd's, and xz's
// defaults are what Talos's -Xdict-size 100% asks for).
//
// The reader (NewReader) is an fs.FS over any squashfs 4.0 image made by
// mksquashfs with gzip, xz or zstd, fragments, extended inodes and xattrs
// included: kiln reads the kernel module tree out of a release's
// rootfs.sqsh with it, and the tests read back what the writer made.
package squashfs

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
)

const (
	magic         = 0x73717368
	blockSize     = 128 << 10
	blockLog      = 17
	metadataSize  = 8192
	invalid64     = ^uint64(0)
	noFragment    = 0xffffffff
	noXattr       = 0xffffffff
	uncompressedB = 1 << 24 // data block size flag
	uncompressedM = 0x8000  // metadata block header flag
	superSize     = 96

	flagNoFragments = 0x0010
	flagNoXattrs    = 0x0200
)

// inode types.
const (
	typeDir      = 1
	typeFile     = 2
	typeSymlink  = 3
	typeLDir     = 8
	typeLFile    = 9
	typeLSymlink = 10
)

// Options are a Writer's settings.
type Options struct {
	// Compression is Zstd or XZ; the zero value is Zstd.
	Compression Compression
	// ZstdLevel is the zstd encoder level; the zero value is
	// zstd.SpeedBestCompression, the strongest (whose encoder allocates
	// 34 MiB of match tables: test fixtures that write many small images
	// may ask for less).
	ZstdLevel zstd.EncoderLevel
	// Encoder, when set, compresses instead of one of the Writer's own
	// (Compression and ZstdLevel are then ignored): writers made one after
	// another can share one, which saves each the strongest zstd level's
	// tables.
	Encoder *Encoder
	// ModTime is stored for every inode and in the superblock; the zero
	// value means the Unix epoch.
	ModTime time.Time
}

// Writer builds one image. Add entries in any order (parents are created
// as needed with mode 0755), then Close. Not safe for concurrent use.
type Writer struct {
	w     io.WriterAt
	seq   *bufio.Writer // everything after the superblock, written in order
	pos   int64         // next data byte
	mtime uint32
	root  *node
	comp  Compression
	c     compressor
	block []byte
	err   error
}

type node struct {
	name     string
	kind     int // typeDir, typeFile, typeSymlink
	perm     uint16
	xattrs   map[string]string
	children map[string]*node
	// regular files
	start  uint64
	size   uint64
	blocks []uint32
	// symlinks
	target string
	// assigned at Close
	inum       uint32
	ref        uint64 // inode table block << 16 | offset
	listBlock  uint32 // directories: listing position in the directory table
	listOffset uint16
	listSize   uint32
}

// Encoder compresses the blocks of one Writer at a time.
type Encoder struct {
	comp Compression
	c    compressor
}

// NewEncoder makes an Encoder for c (Zstd, the zero value, or XZ) at the
// given zstd level (zero: the strongest).
func NewEncoder(c Compression, level zstd.EncoderLevel) (*Encoder, error) {
	if c == 0 {
		c = Zstd
	}

	comp, err := newCompressor(c, level)
	if err != nil {
		return nil, err
	}

	return &Encoder{comp: c, c: comp}, nil
}

// NewWriter returns a Writer that writes the image to w from offset 0.
func NewWriter(w io.WriterAt, opts Options) (*Writer, error) {
	enc := opts.Encoder
	if enc == nil {
		var err error
		if enc, err = NewEncoder(opts.Compression, opts.ZstdLevel); err != nil {
			return nil, err
		}
	}

	var t int64
	if !opts.ModTime.IsZero() {
		t = opts.ModTime.Unix()
	}

	if t < 0 || t > 0xffffffff {
		return nil, fmt.Errorf("squashfs: mtime %v out of range", opts.ModTime)
	}

	return &Writer{
		w:     w,
		seq:   bufio.NewWriterSize(io.NewOffsetWriter(w, superSize), 1<<20),
		pos:   superSize,
		mtime: uint32(t),
		root:  &node{kind: typeDir, perm: 0o755, children: map[string]*node{}},
		comp:  enc.comp,
		c:     enc.c,
		block: make([]byte, blockSize),
	}, nil
}

// Mkdir records a directory; creating an existing one updates its mode.
func (w *Writer) Mkdir(name string, perm fs.FileMode, xattrs map[string]string) error {
	n, err := w.lookup(name, true)
	if err != nil {
		return err
	}

	if n.kind != typeDir {
		*n = node{name: n.name, kind: typeDir, children: map[string]*node{}}
	}

	n.perm, n.xattrs = uint16(perm&0o7777), xattrs

	return nil
}

// Symlink records a symbolic link.
func (w *Writer) Symlink(name, target string, xattrs map[string]string) error {
	if target == "" {
		return fmt.Errorf("squashfs: symlink %s has no target", name)
	}

	n, err := w.leaf(name)
	if err != nil {
		return err
	}

	n.kind, n.perm, n.target, n.xattrs = typeSymlink, 0o777, target, xattrs

	return nil
}

// Create records a regular file and writes its data, read from r to EOF,
// into the image.
func (w *Writer) Create(name string, perm fs.FileMode, r io.Reader, xattrs map[string]string) error {
	if w.err != nil {
		return w.err
	}

	n, err := w.leaf(name)
	if err != nil {
		return err
	}

	n.kind, n.perm, n.xattrs = typeFile, uint16(perm&0o7777), xattrs
	n.start, n.size, n.blocks = uint64(w.pos), 0, nil

	for {
		m, err := io.ReadFull(r, w.block)
		if m > 0 {
			size, werr := w.writeBlock(w.block[:m])
			if werr != nil {
				return werr
			}

			n.blocks = append(n.blocks, size)
			n.size += uint64(m)
		}

		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return nil
		}

		if err != nil {
			return fmt.Errorf("squashfs: %s: %w", name, err)
		}
	}
}

// writeBlock compresses one data block, keeping it raw when compression
// does not help, and returns its block-list entry.
func (w *Writer) writeBlock(p []byte) (uint32, error) {
	data, compressed, err := compressBlock(w.c, p)
	if err != nil {
		w.err = err
		return 0, err
	}

	if err := w.put(data); err != nil {
		w.err = err
		return 0, err
	}

	if !compressed {
		return uint32(len(data)) | uncompressedB, nil
	}

	return uint32(len(data)), nil
}

// compressBlock returns p compressed, or p itself and false when that is
// not smaller (the block is then stored raw, as mksquashfs does).
func compressBlock(c compressor, p []byte) ([]byte, bool, error) {
	z, err := c.compress(p)
	if err != nil {
		return nil, false, err
	}

	if len(z) >= len(p) {
		return p, false, nil
	}

	return z, true, nil
}

// leaf returns a fresh node for a non-directory at name.
func (w *Writer) leaf(name string) (*node, error) {
	n, err := w.lookup(name, true)
	if err != nil {
		return nil, err
	}

	if n == w.root || (n.kind == typeDir && len(n.children) > 0) {
		return nil, fmt.Errorf("squashfs: %s: is a non-empty directory", name)
	}

	*n = node{name: n.name}

	return n, nil
}

// lookup finds name, creating it and missing parents when create is set.
func (w *Writer) lookup(name string, create bool) (*node, error) {
	clean := path.Clean("/" + name)
	if clean == "/" {
		return w.root, nil
	}

	parts := strings.Split(clean[1:], "/")
	n := w.root

	for i, p := range parts {
		if n.kind != typeDir {
			return nil, fmt.Errorf("squashfs: %s: parent is not a directory", name)
		}

		c, ok := n.children[p]
		if !ok {
			if !create {
				return nil, fs.ErrNotExist
			}

			c = &node{name: p, kind: typeDir, perm: 0o755, children: map[string]*node{}}
			if i == len(parts)-1 {
				c.kind = 0 // set by the caller
			}

			n.children[p] = c
		}

		n = c
	}

	return n, nil
}

// Size is the number of bytes the image occupies so far (data only before
// Close, the whole padded image after it).
func (w *Writer) Size() int64 { return w.pos }

// Close writes the inode, directory, id and xattr tables and the
// superblock, pads the image to 4 KiB (the kernel reads whole pages of a
// loop device) and returns its size.
func (w *Writer) Close() (int64, error) {
	if w.err != nil {
		return 0, w.err
	}

	// Inode numbers in the same post-order as the inodes are written, so
	// that a directory's children have nearby numbers.
	var count uint32

	number(w.root, &count)

	xattrIdx := map[string]uint32{}

	var xattrSets []map[string]string

	inodes, dirs := w.md(), w.md()
	if err := w.writeDir(w.root, count+1, inodes, dirs, xattrIdx, &xattrSets); err != nil {
		return 0, err
	}

	inodeStart := uint64(w.pos)
	if err := w.putTable(inodes); err != nil {
		return 0, err
	}

	dirStart := uint64(w.pos)
	if err := w.putTable(dirs); err != nil {
		return 0, err
	}

	// One id: 0, everything is owned by root.
	ids := w.md()
	ids.write(le32(0))

	idBlock := uint64(w.pos)
	if err := w.putTable(ids); err != nil {
		return 0, err
	}

	idStart := uint64(w.pos)
	if err := w.put(le64(idBlock)); err != nil {
		return 0, err
	}

	flags := uint16(flagNoFragments)
	xattrStart := invalid64

	if len(xattrSets) > 0 {
		var err error
		if xattrStart, err = w.writeXattrs(xattrSets); err != nil {
			return 0, err
		}
	} else {
		flags |= flagNoXattrs
	}

	used := uint64(w.pos)

	if pad := (4096 - w.pos%4096) % 4096; pad > 0 {
		if err := w.put(make([]byte, pad)); err != nil {
			return 0, err
		}
	}

	if err := w.seq.Flush(); err != nil {
		return 0, fmt.Errorf("squashfs: write: %w", err)
	}

	sb := make([]byte, 0, superSize)
	sb = append(sb, le32(magic)...)
	sb = append(sb, le32(count)...)
	sb = append(sb, le32(w.mtime)...)
	sb = append(sb, le32(blockSize)...)
	sb = append(sb, le32(0)...) // fragments
	sb = append(sb, le16(uint16(w.comp))...)
	sb = append(sb, le16(blockLog)...)
	sb = append(sb, le16(flags)...)
	sb = append(sb, le16(1)...) // ids
	sb = append(sb, le16(4)...)
	sb = append(sb, le16(0)...)
	sb = append(sb, le64(w.root.ref)...)
	sb = append(sb, le64(used)...)
	sb = append(sb, le64(idStart)...)
	sb = append(sb, le64(xattrStart)...)
	sb = append(sb, le64(inodeStart)...)
	sb = append(sb, le64(dirStart)...)
	sb = append(sb, le64(invalid64)...) // fragment table
	sb = append(sb, le64(invalid64)...) // export table

	if _, err := w.w.WriteAt(sb, 0); err != nil {
		return 0, fmt.Errorf("squashfs: superblock: %w", err)
	}

	return w.pos, nil
}

func number(n *node, count *uint32) {
	for _, c := range sortedChildren(n) {
		if c.kind == typeDir {
			number(c, count)
		}
	}

	for _, c := range sortedChildren(n) {
		if c.kind != typeDir {
			*count++
			c.inum = *count
		}
	}

	*count++
	n.inum = *count
}

// writeDir writes the inodes of d's subtree, d's listing and d's inode, in
// that order: a listing needs its children's inode positions, a directory
// inode needs its listing's position.
func (w *Writer) writeDir(d *node, parent uint32, inodes, dirs *mdWriter, xidx map[string]uint32, xsets *[]map[string]string) error {
	children := sortedChildren(d)
	subdirs := 0

	for _, c := range children {
		if c.kind == typeDir {
			subdirs++

			if err := w.writeDir(c, d.inum, inodes, dirs, xidx, xsets); err != nil {
				return err
			}
		}
	}

	for _, c := range children {
		if c.kind != typeDir {
			c.ref = inodes.ref()
			inodes.write(w.inodeBytes(c, 0, 0, xattrIndex(c.xattrs, xidx, xsets)))
		}
	}

	d.listBlock, d.listOffset = dirs.pos()
	before := dirs.total()
	writeListing(dirs, children)
	d.listSize = uint32(dirs.total() - before)

	d.ref = inodes.ref()
	inodes.write(w.inodeBytes(d, uint32(2+subdirs), parent, xattrIndex(d.xattrs, xidx, xsets)))

	return nil
}

// inodeBytes encodes n's inode.
func (w *Writer) inodeBytes(n *node, nlink, parent, xattr uint32) []byte {
	extended := xattr != noXattr

	typ := n.kind
	if extended || (n.kind == typeDir && n.listSize+3 > 0xffff) ||
		(n.kind == typeFile && (n.start > 0xffffffff || n.size > 0xffffffff)) {
		typ += typeLDir - typeDir
		extended = true
	}

	b := make([]byte, 0, 64+4*len(n.blocks)+len(n.target))
	b = append(b, le16(uint16(typ))...)
	b = append(b, le16(n.perm)...)
	b = append(b, le16(0)...) // uid index
	b = append(b, le16(0)...) // gid index
	b = append(b, le32(w.mtime)...)
	b = append(b, le32(n.inum)...)

	switch typ {
	case typeDir:
		b = append(b, le32(n.listBlock)...)
		b = append(b, le32(nlink)...)
		b = append(b, le16(uint16(n.listSize+3))...)
		b = append(b, le16(n.listOffset)...)
		b = append(b, le32(parent)...)
	case typeLDir:
		b = append(b, le32(nlink)...)
		b = append(b, le32(n.listSize+3)...)
		b = append(b, le32(n.listBlock)...)
		b = append(b, le32(parent)...)
		b = append(b, le16(0)...) // no directory index
		b = append(b, le16(n.listOffset)...)
		b = append(b, le32(xattr)...)
	case typeFile:
		b = append(b, le32(uint32(n.start))...)
		b = append(b, le32(noFragment)...)
		b = append(b, le32(0)...)
		b = append(b, le32(uint32(n.size))...)

		for _, s := range n.blocks {
			b = append(b, le32(s)...)
		}
	case typeLFile:
		b = append(b, le64(n.start)...)
		b = append(b, le64(n.size)...)
		b = append(b, le64(0)...) // sparse bytes
		b = append(b, le32(1)...)
		b = append(b, le32(noFragment)...)
		b = append(b, le32(0)...)
		b = append(b, le32(xattr)...)

		for _, s := range n.blocks {
			b = append(b, le32(s)...)
		}
	case typeSymlink, typeLSymlink:
		b = append(b, le32(1)...)
		b = append(b, le32(uint32(len(n.target)))...)
		b = append(b, n.target...)

		if typ == typeLSymlink {
			b = append(b, le32(xattr)...)
		}
	}

	return b
}

// writeListing writes a directory's entries, sorted by name, in runs that
// share an inode metadata block and a base inode number (the on-disk
// header), at most 256 per run.
func writeListing(dirs *mdWriter, children []*node) {
	for i := 0; i < len(children); {
		block := uint32(children[i].ref >> 16)
		base := children[i].inum
		j := i

		for j < len(children) && j-i < 256 && uint32(children[j].ref>>16) == block &&
			int64(children[j].inum)-int64(base) >= -32768 && int64(children[j].inum)-int64(base) <= 32767 {
			j++
		}

		dirs.write(le32(uint32(j - i - 1)))
		dirs.write(le32(block))
		dirs.write(le32(base))

		for _, c := range children[i:j] {
			dirs.write(le16(uint16(c.ref & 0xffff)))
			dirs.write(le16(uint16(int16(int64(c.inum) - int64(base)))))
			dirs.write(le16(uint16(c.kind)))
			dirs.write(le16(uint16(len(c.name) - 1)))
			dirs.write([]byte(c.name))
		}

		i = j
	}
}

// xattrIndex returns the index of n's xattr set, adding it when new;
// identical sets share an index.
func xattrIndex(x map[string]string, idx map[string]uint32, sets *[]map[string]string) uint32 {
	if len(x) == 0 {
		return noXattr
	}

	keys := make([]string, 0, len(x))
	for k := range x {
		keys = append(keys, k)
	}

	sort.Strings(keys)

	var key strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&key, "%q=%q;", k, x[k])
	}

	if i, ok := idx[key.String()]; ok {
		return i
	}

	i := uint32(len(*sets))
	idx[key.String()] = i
	*sets = append(*sets, x)

	return i
}

// xattrPrefixes are the namespaces squashfs can store, by type number.
var xattrPrefixes = []string{"user.", "trusted.", "security."}

// writeXattrs writes the key/value table, the id table and its index, and
// returns the index position for the superblock.
func (w *Writer) writeXattrs(sets []map[string]string) (uint64, error) {
	kv, ids := w.md(), w.md()

	for _, set := range sets {
		keys := make([]string, 0, len(set))
		for k := range set {
			keys = append(keys, k)
		}

		sort.Strings(keys)

		ref := kv.ref()
		size := 0

		for _, k := range keys {
			typ := -1

			for t, p := range xattrPrefixes {
				if strings.HasPrefix(k, p) {
					typ = t
					k = strings.TrimPrefix(k, p)

					break
				}
			}

			if typ < 0 || k == "" {
				return 0, fmt.Errorf("squashfs: xattr %q: only user., trusted. and security. can be stored", k)
			}

			v := set[xattrPrefixes[typ]+k]
			entry := append(append(le16(uint16(typ)), le16(uint16(len(k)))...), k...)
			entry = append(append(entry, le32(uint32(len(v)))...), v...)
			kv.write(entry)
			size += len(entry)
		}

		ids.write(le64(ref))
		ids.write(le32(uint32(len(keys))))
		ids.write(le32(uint32(size)))
	}

	kvStart := uint64(w.pos)
	if err := w.putTable(kv); err != nil {
		return 0, err
	}

	idBlocks := ids.blockStarts(uint64(w.pos))
	if err := w.putTable(ids); err != nil {
		return 0, err
	}

	start := uint64(w.pos)
	table := append(le64(kvStart), le32(uint32(len(sets)))...)
	table = append(table, le32(0)...)

	for _, b := range idBlocks {
		table = append(table, le64(b)...)
	}

	return start, w.put(table)
}

// putTable appends a finished metadata table.
func (w *Writer) putTable(m *mdWriter) error {
	table, err := m.finish()
	if err != nil {
		return err
	}

	return w.put(table)
}

// put appends p; the 1 MiB buffer turns 128 KiB blocks and small tables
// into large writes.
func (w *Writer) put(p []byte) error {
	if _, err := w.seq.Write(p); err != nil {
		return fmt.Errorf("squashfs: write: %w", err)
	}

	w.pos += int64(len(p))

	return nil
}

func sortedChildren(n *node) []*node {
	out := make([]*node, 0, len(n.children))
	for _, c := range n.children {
		out = append(out, c)
	}

	// Byte order, as the kernel's directory lookup expects.
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })

	return out
}

// mdWriter accumulates a metadata table: 8 KiB blocks, each compressed
// on its own behind a two-byte header. The start of the block being
// filled is known before it is compressed (the bytes already emitted), so
// references can be handed out while writing.
type mdWriter struct {
	c       compressor
	out     bytes.Buffer
	cur     []byte
	written int // uncompressed bytes written
	starts  []uint64
	err     error // the first compression error, reported by finish
}

func (w *Writer) md() *mdWriter { return &mdWriter{c: w.c} }

// pos is where the next byte goes: the block's offset in the table and the
// offset inside the uncompressed block.
func (m *mdWriter) pos() (uint32, uint16) { return uint32(m.out.Len()), uint16(len(m.cur)) }

func (m *mdWriter) ref() uint64 {
	b, o := m.pos()
	return uint64(b)<<16 | uint64(o)
}

func (m *mdWriter) total() int { return m.written }

func (m *mdWriter) write(p []byte) {
	m.written += len(p)
	m.cur = append(m.cur, p...)

	for len(m.cur) >= metadataSize {
		m.flush(m.cur[:metadataSize])
		m.cur = append(m.cur[:0], m.cur[metadataSize:]...)
	}
}

func (m *mdWriter) flush(p []byte) {
	m.starts = append(m.starts, uint64(m.out.Len()))

	z, compressed, err := compressBlock(m.c, p)
	if err != nil && m.err == nil {
		m.err = err
	}

	if compressed {
		m.out.Write(le16(uint16(len(z))))
		m.out.Write(z)
	} else {
		m.out.Write(le16(uint16(len(p)) | uncompressedM))
		m.out.Write(p)
	}
}

// finish flushes the partial last block and returns the table.
func (m *mdWriter) finish() ([]byte, error) {
	if len(m.cur) > 0 {
		m.flush(m.cur)
		m.cur = nil
	}

	return m.out.Bytes(), m.err
}

// blockStarts returns where each block will be once the table is written
// at base; it must be called before finish for a table whose last block is
// still open, so it flushes that block first.
func (m *mdWriter) blockStarts(base uint64) []uint64 {
	if len(m.cur) > 0 {
		m.flush(m.cur)
		m.cur = nil
	}

	out := make([]uint64, len(m.starts))
	for i, s := range m.starts {
		out[i] = base + s
	}

	return out
}

func le16(v uint16) []byte { return binary.LittleEndian.AppendUint16(nil, v) }
func le32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }
func le64(v uint64) []byte { return binary.LittleEndian.AppendUint64(nil, v) }
