package squashfs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"sort"
	"strings"
	"sync"
	"time"
)

// ErrFormat is wrapped by every error about a malformed image.
var ErrFormat = errors.New("squashfs: malformed image")

func formatError(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrFormat}, args...)...)
}

// Superblock flags the reader looks at (squashfs_fs.h).
const (
	flagCompressorOptions = 0x0400
	metadataHeaderSize    = 2
	maxSymlinkHops        = 40
	// maxBlocks bounds a file's block list (16 MiB of metadata): 512 GiB
	// in 128 KiB blocks, far beyond anything in a boot image.
	maxBlocks = 1 << 22
	// mdCacheBlocks bounds the decompressed metadata kept (8 KiB each).
	mdCacheBlocks = 1024
)

// more inode types the reader accepts but the writer never makes.
const (
	typeBlk   = 4
	typeChr   = 5
	typeFifo  = 6
	typeSock  = 7
	typeLBlk  = 11
	typeLChr  = 12
	typeLFifo = 13
	typeLSock = 14
)

type superblock struct {
	inodes       uint32
	mtime        uint32
	blockSize    uint32
	fragments    uint32
	compression  Compression
	blockLog     uint16
	flags        uint16
	ids          uint16
	rootInode    uint64
	bytesUsed    uint64
	idTable      uint64
	xattrTable   uint64
	inodeTable   uint64
	dirTable     uint64
	fragTable    uint64
	exportTable  uint64
	versionMajor uint16
	versionMinor uint16
}

// Reader reads a squashfs 4.0 image. It implements fs.FS, fs.ReadDirFS,
// fs.StatFS and fs.ReadLinkFS; Open follows symbolic links, Lstat and
// ReadDir do not. It is safe for concurrent use.
type Reader struct {
	r   io.ReaderAt
	sb  superblock
	dec decompressor

	mu      sync.Mutex
	mdCache map[uint64]mdBlock
	// the last fragment block read: small files share one, and a walk
	// reads them one after another
	fragIdx  uint32
	fragData []byte
}

type mdBlock struct {
	data []byte
	next uint64 // position of the following block
}

// NewReader reads the superblock of the image in r, size bytes long.
func NewReader(r io.ReaderAt, size int64) (*Reader, error) {
	var b [superSize]byte
	if _, err := r.ReadAt(b[:], 0); err != nil {
		return nil, formatError("superblock: %v", err)
	}

	le := binary.LittleEndian
	if le.Uint32(b[0:]) != magic {
		return nil, formatError("no squashfs magic")
	}

	sb := superblock{
		inodes:       le.Uint32(b[4:]),
		mtime:        le.Uint32(b[8:]),
		blockSize:    le.Uint32(b[12:]),
		fragments:    le.Uint32(b[16:]),
		compression:  Compression(le.Uint16(b[20:])),
		blockLog:     le.Uint16(b[22:]),
		flags:        le.Uint16(b[24:]),
		ids:          le.Uint16(b[26:]),
		versionMajor: le.Uint16(b[28:]),
		versionMinor: le.Uint16(b[30:]),
		rootInode:    le.Uint64(b[32:]),
		bytesUsed:    le.Uint64(b[40:]),
		idTable:      le.Uint64(b[48:]),
		xattrTable:   le.Uint64(b[56:]),
		inodeTable:   le.Uint64(b[64:]),
		dirTable:     le.Uint64(b[72:]),
		fragTable:    le.Uint64(b[80:]),
		exportTable:  le.Uint64(b[88:]),
	}

	switch {
	case sb.versionMajor != 4 || sb.versionMinor != 0:
		return nil, formatError("version %d.%d, want 4.0", sb.versionMajor, sb.versionMinor)
	case sb.blockSize < 4096 || sb.blockSize > 1<<20 || sb.blockSize&(sb.blockSize-1) != 0 || 1<<sb.blockLog != sb.blockSize:
		return nil, formatError("block size %d (log %d)", sb.blockSize, sb.blockLog)
	case size < 0 || sb.bytesUsed > uint64(size):
		return nil, formatError("image claims %d bytes, has %d", sb.bytesUsed, size)
	case sb.inodeTable >= sb.bytesUsed || sb.dirTable >= sb.bytesUsed || sb.inodeTable > sb.dirTable:
		return nil, formatError("inode table at %d, directory table at %d", sb.inodeTable, sb.dirTable)
	}

	dec, err := newDecompressor(sb.compression)
	if err != nil {
		return nil, err
	}

	return &Reader{r: r, sb: sb, dec: dec, mdCache: map[uint64]mdBlock{}, fragIdx: noFragment}, nil
}

// Compression is the image's compressor.
func (r *Reader) Compression() Compression { return r.sb.compression }

// BlockSize is the image's data block size.
func (r *Reader) BlockSize() int { return int(r.sb.blockSize) }

// ModTime is the superblock's modification time.
func (r *Reader) ModTime() time.Time { return time.Unix(int64(r.sb.mtime), 0) }

// readAt reads exactly len(p) bytes that must lie inside the image.
func (r *Reader) readAt(p []byte, off uint64) error {
	if off > r.sb.bytesUsed || uint64(len(p)) > r.sb.bytesUsed-off {
		return formatError("read of %d bytes at %d beyond the image end (%d)", len(p), off, r.sb.bytesUsed)
	}

	if _, err := r.r.ReadAt(p, int64(off)); err != nil {
		return fmt.Errorf("squashfs: read at %d: %w", off, err)
	}

	return nil
}

// metadata returns the decompressed metadata block at pos.
func (r *Reader) metadata(pos uint64) (mdBlock, error) {
	r.mu.Lock()
	b, ok := r.mdCache[pos]
	r.mu.Unlock()

	if ok {
		return b, nil
	}

	var h [metadataHeaderSize]byte
	if err := r.readAt(h[:], pos); err != nil {
		return b, err
	}

	hdr := binary.LittleEndian.Uint16(h[:])
	n := int(hdr &^ uncompressedM)

	if n == 0 || n > metadataSize {
		return b, formatError("metadata block at %d of %d bytes", pos, n)
	}

	raw := make([]byte, n)
	if err := r.readAt(raw, pos+metadataHeaderSize); err != nil {
		return b, err
	}

	data := raw
	if hdr&uncompressedM == 0 {
		var err error
		if data, err = r.dec.decompress(raw, metadataSize); err != nil {
			return b, fmt.Errorf("metadata block at %d: %w", pos, err)
		}
	}

	b = mdBlock{data: data, next: pos + metadataHeaderSize + uint64(n)}

	r.mu.Lock()
	if len(r.mdCache) >= mdCacheBlocks {
		clear(r.mdCache)
	}
	r.mdCache[pos] = b
	r.mu.Unlock()

	return b, nil
}

// cursor reads a metadata stream that may cross blocks.
type cursor struct {
	r   *Reader
	blk mdBlock
	off int
}

func (r *Reader) cursorAt(pos uint64, off int) (*cursor, error) {
	b, err := r.metadata(pos)
	if err != nil {
		return nil, err
	}

	if off > len(b.data) {
		return nil, formatError("offset %d beyond metadata block at %d (%d bytes)", off, pos, len(b.data))
	}

	return &cursor{r: r, blk: b, off: off}, nil
}

// read returns the next n bytes.
func (c *cursor) read(n int) ([]byte, error) {
	out := make([]byte, 0, n)

	for len(out) < n {
		if c.off == len(c.blk.data) {
			b, err := c.r.metadata(c.blk.next)
			if err != nil {
				return nil, err
			}

			c.blk, c.off = b, 0
		}

		m := min(n-len(out), len(c.blk.data)-c.off)
		out = append(out, c.blk.data[c.off:c.off+m]...)
		c.off += m
	}

	return out, nil
}

func (c *cursor) u32() (uint32, error) {
	b, err := c.read(4)
	if err != nil {
		return 0, err
	}

	return binary.LittleEndian.Uint32(b), nil
}

func (c *cursor) u64() (uint64, error) {
	b, err := c.read(8)
	if err != nil {
		return 0, err
	}

	return binary.LittleEndian.Uint64(b), nil
}

// inode is a decoded inode of any type.
type inode struct {
	typ    uint16
	perm   uint16
	uid    uint16
	gid    uint16
	mtime  uint32
	number uint32
	nlink  uint32
	xattr  uint32

	// directories
	dirBlock  uint32
	dirOffset uint16
	dirSize   uint32 // listing bytes + 3, as stored
	parent    uint32

	// regular files
	start      uint64
	size       uint64
	fragment   uint32
	fragOffset uint32
	blocks     []uint32

	// symlinks
	target string

	// devices
	rdev uint32
}

// basic returns the basic type (1-7) of an extended one.
func (in *inode) basic() uint16 {
	if in.typ > typeSock {
		return in.typ - (typeLDir - typeDir)
	}

	return in.typ
}

func (r *Reader) readInode(ref uint64) (*inode, error) {
	block, off := ref>>16, int(ref&0xffff)
	if off >= metadataSize || block > r.sb.dirTable-r.sb.inodeTable {
		return nil, formatError("inode reference %#x", ref)
	}

	c, err := r.cursorAt(r.sb.inodeTable+block, off)
	if err != nil {
		return nil, err
	}

	hdr, err := c.read(16)
	if err != nil {
		return nil, err
	}

	le := binary.LittleEndian
	in := &inode{
		typ: le.Uint16(hdr[0:]), perm: le.Uint16(hdr[2:]), uid: le.Uint16(hdr[4:]), gid: le.Uint16(hdr[6:]),
		mtime: le.Uint32(hdr[8:]), number: le.Uint32(hdr[12:]), nlink: 1, xattr: noXattr,
	}

	if err := r.readInodeBody(c, in); err != nil {
		return nil, fmt.Errorf("inode %d: %w", in.number, err)
	}

	return in, nil
}

func (r *Reader) readInodeBody(c *cursor, in *inode) error {
	le := binary.LittleEndian

	switch in.typ {
	case typeDir:
		b, err := c.read(16)
		if err != nil {
			return err
		}

		in.dirBlock, in.nlink = le.Uint32(b[0:]), le.Uint32(b[4:])
		in.dirSize, in.dirOffset, in.parent = uint32(le.Uint16(b[8:])), le.Uint16(b[10:]), le.Uint32(b[12:])
	case typeLDir:
		b, err := c.read(24)
		if err != nil {
			return err
		}

		in.nlink, in.dirSize, in.dirBlock, in.parent = le.Uint32(b[0:]), le.Uint32(b[4:]), le.Uint32(b[8:]), le.Uint32(b[12:])
		in.dirOffset, in.xattr = le.Uint16(b[18:]), le.Uint32(b[20:])
		// The directory index after it is only a lookup aid.
	case typeFile:
		b, err := c.read(16)
		if err != nil {
			return err
		}

		in.start, in.fragment, in.fragOffset, in.size = uint64(le.Uint32(b[0:])), le.Uint32(b[4:]), le.Uint32(b[8:]), uint64(le.Uint32(b[12:]))

		return r.readBlockList(c, in)
	case typeLFile:
		b, err := c.read(40)
		if err != nil {
			return err
		}

		in.start, in.size = le.Uint64(b[0:]), le.Uint64(b[8:])
		in.nlink, in.fragment, in.fragOffset, in.xattr = le.Uint32(b[24:]), le.Uint32(b[28:]), le.Uint32(b[32:]), le.Uint32(b[36:])

		return r.readBlockList(c, in)
	case typeSymlink, typeLSymlink:
		b, err := c.read(8)
		if err != nil {
			return err
		}

		in.nlink = le.Uint32(b[0:])

		n := le.Uint32(b[4:])
		if n == 0 || n > 4096 {
			return formatError("symlink target of %d bytes", n)
		}

		t, err := c.read(int(n))
		if err != nil {
			return err
		}

		in.target = string(t)

		if in.typ == typeLSymlink {
			if in.xattr, err = c.u32(); err != nil {
				return err
			}
		}
	case typeBlk, typeChr, typeLBlk, typeLChr:
		b, err := c.read(8)
		if err != nil {
			return err
		}

		in.nlink, in.rdev = le.Uint32(b[0:]), le.Uint32(b[4:])

		if in.typ >= typeLBlk {
			if in.xattr, err = c.u32(); err != nil {
				return err
			}
		}
	case typeFifo, typeSock, typeLFifo, typeLSock:
		var err error
		if in.nlink, err = c.u32(); err != nil {
			return err
		}

		if in.typ >= typeLFifo {
			if in.xattr, err = c.u32(); err != nil {
				return err
			}
		}
	default:
		return formatError("inode type %d", in.typ)
	}

	return nil
}

// readBlockList reads a regular file's data block sizes: one per full
// block, plus one for the tail unless the tail is in a fragment.
func (r *Reader) readBlockList(c *cursor, in *inode) error {
	bs := uint64(r.sb.blockSize)

	n := in.size / bs
	if in.fragment == noFragment && in.size%bs != 0 {
		n++
	}

	if n > maxBlocks {
		return formatError("file of %d bytes (%d blocks)", in.size, n)
	}

	b, err := c.read(int(n) * 4)
	if err != nil {
		return err
	}

	in.blocks = make([]uint32, n)
	for i := range in.blocks {
		in.blocks[i] = binary.LittleEndian.Uint32(b[4*i:])
	}

	return nil
}

// tableEntry reads entry i (of size bytes each) of an indexed table: the
// superblock points to a list of metadata block positions, the entries
// are packed in those blocks.
func (r *Reader) tableEntry(table uint64, count uint32, i uint32, size int) ([]byte, error) {
	if i >= count || table == invalid64 {
		return nil, formatError("table entry %d of %d", i, count)
	}

	byteOff := uint64(i) * uint64(size)
	var p [8]byte

	if err := r.readAt(p[:], table+8*(byteOff/metadataSize)); err != nil {
		return nil, err
	}

	c, err := r.cursorAt(binary.LittleEndian.Uint64(p[:]), int(byteOff%metadataSize))
	if err != nil {
		return nil, err
	}

	return c.read(size)
}

// dirent is one entry of a directory listing.
type dirent struct {
	name string
	typ  uint16
	ref  uint64
}

func (r *Reader) readDir(in *inode) ([]dirent, error) {
	if in.basic() != typeDir {
		return nil, formatError("inode %d is not a directory", in.number)
	}

	if in.dirSize < 3 {
		return nil, formatError("directory %d listing size %d", in.number, in.dirSize)
	}

	remaining := int(in.dirSize) - 3
	if remaining == 0 {
		return nil, nil
	}

	if uint64(in.dirBlock) >= r.sb.bytesUsed-r.sb.dirTable {
		return nil, formatError("directory %d listing at block %d", in.number, in.dirBlock)
	}

	c, err := r.cursorAt(r.sb.dirTable+uint64(in.dirBlock), int(in.dirOffset))
	if err != nil {
		return nil, err
	}

	var out []dirent

	for remaining > 0 {
		h, err := c.read(12)
		if err != nil {
			return nil, err
		}

		remaining -= 12

		le := binary.LittleEndian
		count, start := le.Uint32(h[0:])+1, le.Uint32(h[4:])

		if count > 256 {
			return nil, formatError("directory %d: run of %d entries", in.number, count)
		}

		for range count {
			e, err := c.read(8)
			if err != nil {
				return nil, err
			}

			nameLen := int(le.Uint16(e[6:])) + 1
			if nameLen > 256 {
				return nil, formatError("directory %d: name of %d bytes", in.number, nameLen)
			}

			name, err := c.read(nameLen)
			if err != nil {
				return nil, err
			}

			remaining -= 8 + nameLen

			n := string(name)
			if n == "." || n == ".." || strings.ContainsAny(n, "/\x00") {
				return nil, formatError("directory %d: entry name %q", in.number, n)
			}

			out = append(out, dirent{name: n, typ: le.Uint16(e[4:]), ref: uint64(start)<<16 | uint64(le.Uint16(e[0:]))})
		}
	}

	if remaining != 0 {
		return nil, formatError("directory %d: listing overruns its size", in.number)
	}

	return out, nil
}

// lookup resolves name (an fs.ValidPath) to an inode, following symbolic
// links in every component but the last, and in the last too if follow.
func (r *Reader) lookup(op, name string, follow bool) (*inode, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}

	root, err := r.readInode(r.sb.rootInode)
	if err != nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: err}
	}

	var parts []string
	if name != "." {
		parts = strings.Split(name, "/")
	}

	stack := []*inode{root}
	hops := 0

	for len(parts) > 0 {
		p := parts[0]
		parts = parts[1:]

		switch p {
		case "", ".":
			continue
		case "..":
			if len(stack) > 1 {
				stack = stack[:len(stack)-1]
			}

			continue
		}

		dir := stack[len(stack)-1]
		if dir.basic() != typeDir {
			return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
		}

		ents, err := r.readDir(dir)
		if err != nil {
			return nil, &fs.PathError{Op: op, Path: name, Err: err}
		}

		i := sort.Search(len(ents), func(i int) bool { return ents[i].name >= p })
		if i == len(ents) || ents[i].name != p {
			return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
		}

		in, err := r.readInode(ents[i].ref)
		if err != nil {
			return nil, &fs.PathError{Op: op, Path: name, Err: err}
		}

		if in.basic() == typeSymlink && (len(parts) > 0 || follow) {
			if hops++; hops > maxSymlinkHops {
				return nil, &fs.PathError{Op: op, Path: name, Err: errors.New("too many levels of symbolic links")}
			}

			if strings.HasPrefix(in.target, "/") {
				stack = stack[:1]
			}

			parts = append(strings.Split(in.target, "/"), parts...)

			continue
		}

		stack = append(stack, in)
	}

	return stack[len(stack)-1], nil
}

// Open opens name, following symbolic links.
func (r *Reader) Open(name string) (fs.File, error) {
	in, err := r.lookup("open", name, true)
	if err != nil {
		return nil, err
	}

	fi := r.info(path.Base(name), in)

	switch in.basic() {
	case typeDir:
		return &dirFile{r: r, in: in, fi: fi}, nil
	case typeFile:
		return &regFile{r: r, in: in, fi: fi}, nil
	}

	return &otherFile{fi: fi}, nil
}

// ReadDir lists a directory by name, sorted by name (the image's order).
func (r *Reader) ReadDir(name string) ([]fs.DirEntry, error) {
	in, err := r.lookup("readdir", name, true)
	if err != nil {
		return nil, err
	}

	ents, err := r.readDir(in)
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}

	out := make([]fs.DirEntry, len(ents))
	for i, e := range ents {
		out[i] = dirEntry{r: r, e: e}
	}

	return out, nil
}

// Stat describes name, following symbolic links.
func (r *Reader) Stat(name string) (fs.FileInfo, error) {
	in, err := r.lookup("stat", name, true)
	if err != nil {
		return nil, err
	}

	return r.info(path.Base(name), in), nil
}

// Lstat describes name without following a final symbolic link.
func (r *Reader) Lstat(name string) (fs.FileInfo, error) {
	in, err := r.lookup("lstat", name, false)
	if err != nil {
		return nil, err
	}

	return r.info(path.Base(name), in), nil
}

// ReadLink returns a symbolic link's target.
func (r *Reader) ReadLink(name string) (string, error) {
	in, err := r.lookup("readlink", name, false)
	if err != nil {
		return "", err
	}

	if in.basic() != typeSymlink {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}

	return in.target, nil
}

// Xattrs returns name's extended attributes (without following a final
// symbolic link), full names such as "security.selinux" as keys.
func (r *Reader) Xattrs(name string) (map[string]string, error) {
	in, err := r.lookup("xattrs", name, false)
	if err != nil {
		return nil, err
	}

	x, err := r.xattrs(in.xattr)
	if err != nil {
		return nil, &fs.PathError{Op: "xattrs", Path: name, Err: err}
	}

	return x, nil
}

func (r *Reader) xattrs(idx uint32) (map[string]string, error) {
	if idx == noXattr {
		return nil, nil
	}

	if r.sb.xattrTable == invalid64 {
		return nil, formatError("xattr index %d without an xattr table", idx)
	}

	var h [16]byte
	if err := r.readAt(h[:], r.sb.xattrTable); err != nil {
		return nil, err
	}

	le := binary.LittleEndian
	kvStart, count := le.Uint64(h[0:]), le.Uint32(h[8:])

	id, err := r.tableEntry(r.sb.xattrTable+16, count, idx, 16)
	if err != nil {
		return nil, err
	}

	ref, n := le.Uint64(id[0:]), le.Uint32(id[8:])
	if n > 1024 {
		return nil, formatError("%d xattrs on one inode", n)
	}

	c, err := r.cursorAt(kvStart+ref>>16, int(ref&0xffff))
	if err != nil {
		return nil, err
	}

	out := map[string]string{}

	for range n {
		kh, err := c.read(4)
		if err != nil {
			return nil, err
		}

		typ, nameLen := le.Uint16(kh[0:]), le.Uint16(kh[2:])
		if int(typ&0xff) >= len(xattrPrefixes) {
			return nil, formatError("xattr type %d", typ)
		}

		key, err := c.read(int(nameLen))
		if err != nil {
			return nil, err
		}

		vlen, err := c.u32()
		if err != nil {
			return nil, err
		}

		var val []byte

		if typ&0x100 != 0 { // value stored out of line, by reference
			if vlen != 8 {
				return nil, formatError("out-of-line xattr reference of %d bytes", vlen)
			}

			vref, err := c.u64()
			if err != nil {
				return nil, err
			}

			vc, err := r.cursorAt(kvStart+vref>>16, int(vref&0xffff))
			if err != nil {
				return nil, err
			}

			if vlen, err = vc.u32(); err != nil {
				return nil, err
			}

			if vlen > 1<<16 {
				return nil, formatError("xattr value of %d bytes", vlen)
			}

			if val, err = vc.read(int(vlen)); err != nil {
				return nil, err
			}
		} else {
			if vlen > 1<<16 {
				return nil, formatError("xattr value of %d bytes", vlen)
			}

			if val, err = c.read(int(vlen)); err != nil {
				return nil, err
			}
		}

		out[xattrPrefixes[typ&0xff]+string(key)] = string(val)
	}

	return out, nil
}

func (r *Reader) info(name string, in *inode) fileInfo {
	if name == "." || name == "/" {
		name = "."
	}

	return fileInfo{name: name, in: in}
}

// fileInfo is fs.FileInfo of an inode; Sys returns nil.
type fileInfo struct {
	name string
	in   *inode
}

func (fi fileInfo) Name() string { return fi.name }

func (fi fileInfo) Size() int64 {
	switch fi.in.basic() {
	case typeFile:
		return int64(fi.in.size)
	case typeSymlink:
		return int64(len(fi.in.target))
	}

	return 0
}

func (fi fileInfo) Mode() fs.FileMode {
	m := fs.FileMode(fi.in.perm & 0o777)
	if fi.in.perm&0o4000 != 0 {
		m |= fs.ModeSetuid
	}

	if fi.in.perm&0o2000 != 0 {
		m |= fs.ModeSetgid
	}

	if fi.in.perm&0o1000 != 0 {
		m |= fs.ModeSticky
	}

	switch fi.in.basic() {
	case typeDir:
		m |= fs.ModeDir
	case typeSymlink:
		m |= fs.ModeSymlink
	case typeBlk:
		m |= fs.ModeDevice
	case typeChr:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case typeFifo:
		m |= fs.ModeNamedPipe
	case typeSock:
		m |= fs.ModeSocket
	}

	return m
}

func (fi fileInfo) ModTime() time.Time { return time.Unix(int64(fi.in.mtime), 0) }
func (fi fileInfo) IsDir() bool        { return fi.in.basic() == typeDir }
func (fi fileInfo) Sys() any           { return nil }

type dirEntry struct {
	r *Reader
	e dirent
}

func (d dirEntry) Name() string { return d.e.name }
func (d dirEntry) IsDir() bool  { return d.e.typ == typeDir }

func (d dirEntry) Type() fs.FileMode {
	return fileInfo{in: &inode{typ: d.e.typ}}.Mode().Type()
}

func (d dirEntry) Info() (fs.FileInfo, error) {
	in, err := d.r.readInode(d.e.ref)
	if err != nil {
		return nil, err
	}

	return fileInfo{name: d.e.name, in: in}, nil
}

type dirFile struct {
	r    *Reader
	in   *inode
	fi   fileInfo
	ents []dirent
	read bool
}

func (f *dirFile) Stat() (fs.FileInfo, error) { return f.fi, nil }
func (f *dirFile) Close() error               { return nil }

func (f *dirFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: f.fi.name, Err: errors.New("is a directory")}
}

func (f *dirFile) ReadDir(n int) ([]fs.DirEntry, error) {
	if !f.read {
		ents, err := f.r.readDir(f.in)
		if err != nil {
			return nil, err
		}

		f.ents, f.read = ents, true
	}

	if n <= 0 {
		n = len(f.ents)
	} else if len(f.ents) == 0 {
		return nil, io.EOF
	}

	n = min(n, len(f.ents))
	out := make([]fs.DirEntry, n)

	for i := range out {
		out[i] = dirEntry{r: f.r, e: f.ents[i]}
	}

	f.ents = f.ents[n:]

	return out, nil
}

type otherFile struct{ fi fileInfo }

func (f *otherFile) Stat() (fs.FileInfo, error) { return f.fi, nil }
func (f *otherFile) Close() error               { return nil }

func (f *otherFile) Read([]byte) (int, error) {
	return 0, &fs.PathError{Op: "read", Path: f.fi.name, Err: fs.ErrInvalid}
}

// regFile reads a regular file block by block.
type regFile struct {
	r   *Reader
	in  *inode
	fi  fileInfo
	pos uint64 // next byte of the file to return
	// the decompressed block holding pos
	buf      []byte
	bufStart uint64
	// diskPos is where block i starts on disk, filled as blocks are read
	diskPos []uint64
}

func (f *regFile) Stat() (fs.FileInfo, error) { return f.fi, nil }
func (f *regFile) Close() error               { return nil }

func (f *regFile) Read(p []byte) (int, error) {
	if f.pos >= f.in.size {
		return 0, io.EOF
	}

	if f.buf == nil || f.pos < f.bufStart || f.pos >= f.bufStart+uint64(len(f.buf)) {
		if err := f.load(f.pos / uint64(f.r.sb.blockSize)); err != nil {
			return 0, err
		}
	}

	n := copy(p, f.buf[f.pos-f.bufStart:])
	f.pos += uint64(n)

	return n, nil
}

// load decompresses block i (the fragment tail when i is past the block
// list) into f.buf.
func (f *regFile) load(i uint64) error {
	bs := uint64(f.r.sb.blockSize)
	want := min(bs, f.in.size-i*bs)

	if i < uint64(len(f.in.blocks)) {
		if f.diskPos == nil {
			f.diskPos = make([]uint64, 0, len(f.in.blocks)+1)
			f.diskPos = append(f.diskPos, f.in.start)
		}

		for uint64(len(f.diskPos)) <= i {
			j := len(f.diskPos) - 1
			f.diskPos = append(f.diskPos, f.diskPos[j]+uint64(f.in.blocks[j]&^uncompressedB))
		}

		data, err := f.r.dataBlock(f.diskPos[i], f.in.blocks[i], int(want))
		if err != nil {
			return fmt.Errorf("%s: block %d: %w", f.fi.name, i, err)
		}

		f.buf, f.bufStart = data, i*bs

		return nil
	}

	if f.in.fragment == noFragment {
		return formatError("%s: no block %d", f.fi.name, i)
	}

	frag, err := f.r.fragment(f.in.fragment)
	if err != nil {
		return fmt.Errorf("%s: %w", f.fi.name, err)
	}

	if uint64(f.in.fragOffset)+want > uint64(len(frag)) {
		return formatError("%s: tail of %d bytes at %d in a fragment of %d", f.fi.name, want, f.in.fragOffset, len(frag))
	}

	f.buf, f.bufStart = frag[f.in.fragOffset:uint64(f.in.fragOffset)+want], i*bs

	return nil
}

// dataBlock reads one data block of want bytes stored at pos with the
// given block-list entry.
func (r *Reader) dataBlock(pos uint64, entry uint32, want int) ([]byte, error) {
	size := entry &^ uncompressedB
	if size == 0 { // sparse
		return make([]byte, want), nil
	}

	if size > r.sb.blockSize {
		return nil, formatError("data block of %d bytes", size)
	}

	raw := make([]byte, size)
	if err := r.readAt(raw, pos); err != nil {
		return nil, err
	}

	data := raw
	if entry&uncompressedB == 0 {
		var err error
		if data, err = r.dec.decompress(raw, int(r.sb.blockSize)); err != nil {
			return nil, err
		}
	}

	if len(data) != want {
		return nil, formatError("data block holds %d bytes, want %d", len(data), want)
	}

	return data, nil
}

// fragment returns fragment block i, decompressed.
func (r *Reader) fragment(i uint32) ([]byte, error) {
	r.mu.Lock()
	if r.fragIdx == i {
		data := r.fragData
		r.mu.Unlock()

		return data, nil
	}
	r.mu.Unlock()

	data, err := r.readFragment(i)
	if err != nil {
		return nil, err
	}

	r.mu.Lock()
	r.fragIdx, r.fragData = i, data
	r.mu.Unlock()

	return data, nil
}

func (r *Reader) readFragment(i uint32) ([]byte, error) {
	e, err := r.tableEntry(r.sb.fragTable, r.sb.fragments, i, 16)
	if err != nil {
		return nil, fmt.Errorf("fragment %d: %w", i, err)
	}

	start, entry := binary.LittleEndian.Uint64(e[0:]), binary.LittleEndian.Uint32(e[8:])

	size := entry &^ uncompressedB
	if size == 0 || size > r.sb.blockSize {
		return nil, formatError("fragment %d of %d bytes", i, size)
	}

	raw := make([]byte, size)
	if err := r.readAt(raw, start); err != nil {
		return nil, err
	}

	if entry&uncompressedB != 0 {
		return raw, nil
	}

	return r.dec.decompress(raw, int(r.sb.blockSize))
}
