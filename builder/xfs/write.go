package xfs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
)

// copyChunk is the file content copy granularity (style.md §5.9: ≥ 1 MiB).
const copyChunk = 4 << 20

// Size is the file system size in bytes (the given size rounded down to
// whole blocks, less a dropped runt AG).
func (p *Plan) Size() int64 { return int64(p.g.dblocks) * blockSize }

// DataBytes is the total size of the files' contents.
func (p *Plan) DataBytes() int64 { return p.data }

// Write writes the planned file system into w (see the package-level Write
// for what w must be): file contents first, then inodes,
// directories, AG headers and B+trees, the log and the superblocks.
func (p *Plan) Write(ctx context.Context, w io.WriterAt) error {
	if err := p.writeData(ctx, w); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	mw := &metaWriter{w: w}
	p.writeInodes(mw)
	p.writeDirs(mw)
	p.writeLog(mw)
	for ag := range p.g.agcount {
		p.writeAG(mw, ag)
	}
	return mw.err
}

type metaWriter struct {
	w   io.WriterAt
	err error
}

func (m *metaWriter) put(b []byte, off int64) {
	if m.err != nil {
		return
	}
	if _, err := m.w.WriteAt(b, off); err != nil {
		m.err = fmt.Errorf("xfs: writing metadata at %d: %w", off, err)
	}
}

// writeData streams every file into its extents.
func (p *Plan) writeData(ctx context.Context, w io.WriterAt) error {
	var biggest int64
	for _, n := range p.nodes {
		biggest = max(biggest, n.size)
	}
	buf := make([]byte, min(copyChunk, (biggest+blockSize-1)/blockSize*blockSize))
	for _, n := range p.nodes {
		if n.dir {
			continue
		}
		if err := p.copyFile(ctx, w, n, buf); err != nil {
			return err
		}
	}
	return nil
}

func (p *Plan) copyFile(ctx context.Context, w io.WriterAt, n *node, buf []byte) error {
	rc, err := n.open()
	if err != nil {
		return fmt.Errorf("xfs: opening %s: %w", n.path, err)
	}
	defer rc.Close()
	var done int64
	for _, e := range n.exts {
		left := int64(e.len) * blockSize
		off := p.g.offset(e.ag, e.bno)
		for left > 0 && done < n.size {
			if err := ctx.Err(); err != nil {
				return err
			}
			want := min(int64(len(buf)), left, n.size-done)
			m, err := io.ReadFull(rc, buf[:want])
			if err != nil {
				if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					return fmt.Errorf("%w: %s: content is %d bytes, shorter than its size %d", ErrInvalid, n.path, done+int64(m), n.size)
				}
				return fmt.Errorf("xfs: reading %s: %w", n.path, err)
			}
			if !allZero(buf[:m]) {
				if _, err := w.WriteAt(buf[:m], off); err != nil {
					return fmt.Errorf("xfs: writing %s: %w", n.path, err)
				}
			}
			off += int64(m)
			left -= int64(m)
			done += int64(m)
		}
	}
	var one [1]byte
	if m, _ := io.ReadFull(rc, one[:]); m > 0 {
		return fmt.Errorf("%w: %s: content is longer than its size %d", ErrInvalid, n.path, n.size)
	}
	return nil
}

var zeros = make([]byte, 64<<10)

func allZero(b []byte) bool {
	for len(b) > 0 {
		k := min(len(b), len(zeros))
		if !bytes.Equal(b[:k], zeros[:k]) {
			return false
		}
		b = b[k:]
	}
	return true
}

// ---- inodes ----

type inodeSpec struct {
	ino      uint64
	mode     uint16
	nlink    uint32
	size     int64
	nblocks  uint64
	format   byte
	flags    uint16
	nextents uint64
	fork     []byte
}

func (p *Plan) putInode(b []byte, s inodeSpec) {
	f := p.g.feat
	be.PutUint16(b[0:], dinodeMag)
	be.PutUint16(b[2:], s.mode)
	b[4] = 3
	b[5] = s.format
	be.PutUint32(b[16:], s.nlink)
	if f.Nrext64 {
		be.PutUint64(b[24:], s.nextents)
	} else {
		be.PutUint32(b[76:], uint32(s.nextents))
	}
	t := legacyTime(p.o.Time)
	if f.Bigtime {
		t = bigtime(p.o.Time)
	}
	for _, o := range []int{32, 40, 48, 144} { // atime, mtime, ctime, crtime
		be.PutUint64(b[o:], t)
	}
	be.PutUint64(b[56:], uint64(s.size))
	be.PutUint64(b[64:], s.nblocks)
	b[83] = fmtExtents // attribute fork format, as mkfs leaves it
	be.PutUint16(b[90:], s.flags)
	be.PutUint32(b[96:], nullAgino)
	be.PutUint64(b[104:], 2) // change count, as mkfs -p leaves it
	var fl2 uint64
	if f.Bigtime {
		fl2 |= diflag2Big
	}
	if f.Nrext64 {
		fl2 |= diflag2NX64
	}
	be.PutUint64(b[120:], fl2)
	p.inodeID(b, s.ino)
	copy(b[inodeCoreSize:inodeSize], s.fork)
	setCRC(b[:inodeSize], 100)
}

// inodeID fills the fields every inode (used or free) carries.
func (p *Plan) inodeID(b []byte, ino uint64) {
	be.PutUint16(b[0:], dinodeMag)
	b[4] = 3
	be.PutUint32(b[96:], nullAgino)
	be.PutUint64(b[152:], ino)
	copy(b[160:176], p.o.UUID[:])
}

func extentFork(g *geometry, exts []extent) []byte {
	b := make([]byte, 16*len(exts))
	for i, e := range exts {
		bmbtRec(b[16*i:], e.off, g.fsb(e.ag, e.bno), uint64(e.len))
	}
	return b
}

func (p *Plan) spec(n *node) inodeSpec {
	s := inodeSpec{ino: n.ino, size: n.size, nblocks: n.blocks, format: fmtExtents, nextents: uint64(len(n.exts))}
	mode := uint16(n.perm & fs.ModePerm)
	if n.perm&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if n.perm&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if n.perm&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	if n.dir {
		s.mode = 0o040000 | mode
		s.nlink = 2 + uint32(n.nsub)
		if n.form == formSF {
			s.format = fmtLocal
			s.fork = p.shortForm(n)
		} else {
			s.fork = extentFork(p.g, n.exts)
		}
	} else {
		s.mode = 0o100000 | mode
		s.nlink = 1
		s.fork = extentFork(p.g, n.exts)
	}
	return s
}

func (p *Plan) writeInodes(mw *metaWriter) {
	g := p.g
	chunk := make([]byte, chunkBlocks*blockSize)
	for c := range p.chunks {
		clear(chunk)
		for k := range inodesPerChunk {
			i := c*inodesPerChunk + k
			b := chunk[k*inodeSize : (k+1)*inodeSize]
			ino := p.inoAt(i)
			switch {
			case i == 0:
				p.putInode(b, p.spec(p.root))
			case i == 1: // realtime bitmap inode (no realtime section)
				p.putInode(b, inodeSpec{ino: ino, mode: 0o100000, nlink: 1, format: fmtExtents, flags: diflagNewRTBM})
			case i == 2: // realtime summary inode
				p.putInode(b, inodeSpec{ino: ino, mode: 0o100000, nlink: 1, format: fmtExtents})
			case i < p.inodes:
				p.putInode(b, p.spec(p.nodes[i-3]))
			default:
				p.inodeID(b, ino)
				setCRC(b, 100)
			}
		}
		mw.put(chunk, g.offset(0, g.rootBno+uint32(c*chunkBlocks)))
	}
}

// ---- directories ----

func ftype(n *node) byte {
	if n.dir {
		return ftypeDir
	}
	return ftypeReg
}

func (p *Plan) parentIno(d *node) uint64 {
	if d.parent == nil {
		return d.ino
	}
	return d.parent.ino
}

func (p *Plan) shortForm(d *node) []byte {
	b := make([]byte, 0, d.size)
	b = append(b, byte(len(d.kids)), 0)
	b = be.AppendUint32(b, uint32(p.parentIno(d)))
	off := dirFirstOff
	for _, k := range d.kids {
		b = append(b, byte(len(k.name)))
		b = be.AppendUint16(b, uint16(off))
		b = append(b, k.name...)
		b = append(b, ftype(k))
		b = be.AppendUint32(b, uint32(k.ino))
		off += dirEntSize(len(k.name))
	}
	return b
}

// phys returns the AG and block of logical block l of n's data fork. The
// plan allocated every block a directory uses, so a miss is a bug in this
// package; it returns block 0 of AG 0 (the superblock, whose later write
// wins) rather than panic, and the tests' readers catch it.
func phys(n *node, l uint64) (uint32, uint32) {
	for _, e := range n.exts {
		if l >= e.off && l < e.off+uint64(e.len) {
			return e.ag, e.bno + uint32(l-e.off)
		}
	}
	return 0, 0
}

type leafEnt struct{ hash, addr uint32 }

type dirEnt struct {
	name string
	ino  uint64
	ft   byte
}

// dataBlock lays out entries in a directory data block from offset 64 and
// returns the end of the entries; leaf entries are appended to leaves with
// addresses relative to block db.
func (p *Plan) dataBlock(b []byte, magic uint32, d *node, db int, ents []dirEnt, leaves []leafEnt) (int, []leafEnt) {
	ag, bno := phys(d, uint64(db))
	be.PutUint32(b[0:], magic)
	be.PutUint64(b[8:], p.g.daddr(ag, bno))
	copy(b[24:40], p.o.UUID[:])
	be.PutUint64(b[40:], d.ino)
	off := dirDataHdr
	for _, e := range ents {
		sz := dirEntSize(len(e.name))
		be.PutUint64(b[off:], e.ino)
		b[off+8] = byte(len(e.name))
		copy(b[off+9:], e.name)
		b[off+9+len(e.name)] = e.ft
		be.PutUint16(b[off+sz-2:], uint16(off))
		leaves = append(leaves, leafEnt{hash: hashName([]byte(e.name)), addr: uint32((db*blockSize + off) >> 3)})
		off += sz
	}
	return off, leaves
}

// freeRegion marks [start, end) of a data block unused and records it as
// the block's only best-free entry.
func freeRegion(b []byte, start, end int) {
	if end <= start {
		return
	}
	be.PutUint16(b[start:], 0xffff)
	be.PutUint16(b[start+2:], uint16(end-start))
	be.PutUint16(b[end-2:], uint16(start))
	be.PutUint16(b[48:], uint16(start))
	be.PutUint16(b[50:], uint16(end-start))
}

func sortLeaves(l []leafEnt) {
	slices.SortStableFunc(l, func(a, b leafEnt) int {
		switch {
		case a.hash < b.hash:
			return -1
		case a.hash > b.hash:
			return 1
		}
		return 0
	})
}

func (p *Plan) dotEnts(d *node) []dirEnt {
	return []dirEnt{{".", d.ino, ftypeDir}, {"..", p.parentIno(d), ftypeDir}}
}

func kidEnts(kids []*node) []dirEnt {
	e := make([]dirEnt, len(kids))
	for i, k := range kids {
		e[i] = dirEnt{k.name, k.ino, ftype(k)}
	}
	return e
}

func (p *Plan) writeDirs(mw *metaWriter) {
	b := make([]byte, blockSize)
	for _, d := range append([]*node{p.root}, p.nodes...) {
		if !d.dir {
			continue
		}
		switch d.form {
		case formBlock:
			clear(b)
			ents := append(p.dotEnts(d), kidEnts(d.kids)...)
			end, leaves := p.dataBlock(b, dirBlkMag, d, 0, ents, nil)
			sortLeaves(leaves)
			tail := blockSize - 8
			be.PutUint32(b[tail:], uint32(len(leaves)))
			ls := tail - 8*len(leaves)
			for i, l := range leaves {
				be.PutUint32(b[ls+8*i:], l.hash)
				be.PutUint32(b[ls+8*i+4:], l.addr)
			}
			freeRegion(b, end, ls)
			setCRC(b, 4)
			ag, bno := phys(d, 0)
			mw.put(b, p.g.offset(ag, bno))
		case formLeaf:
			var leaves []leafEnt
			bests := make([]uint16, d.dblocks)
			for db, kids := range d.place {
				clear(b)
				ents := kidEnts(kids)
				if db == 0 {
					ents = append(p.dotEnts(d), ents...)
				}
				var end int
				end, leaves = p.dataBlock(b, dirDataMag, d, db, ents, leaves)
				freeRegion(b, end, blockSize)
				bests[db] = uint16(blockSize - end)
				setCRC(b, 4)
				ag, bno := phys(d, uint64(db))
				mw.put(b, p.g.offset(ag, bno))
			}
			sortLeaves(leaves)
			clear(b)
			ag, bno := phys(d, dirLeafOffset)
			be.PutUint16(b[8:], dirLeafMag)
			be.PutUint64(b[16:], p.g.daddr(ag, bno))
			copy(b[32:48], p.o.UUID[:])
			be.PutUint64(b[48:], d.ino)
			be.PutUint16(b[56:], uint16(len(leaves)))
			for i, l := range leaves {
				be.PutUint32(b[dirLeafHdr+8*i:], l.hash)
				be.PutUint32(b[dirLeafHdr+8*i+4:], l.addr)
			}
			be.PutUint32(b[blockSize-4:], uint32(d.dblocks))
			bs := blockSize - 4 - 2*d.dblocks
			for i, v := range bests {
				be.PutUint16(b[bs+2*i:], v)
			}
			setCRC(b, 12)
			mw.put(b, p.g.offset(ag, bno))
		}
	}
}

// ---- log ----

// writeLog writes what mkfs leaves in a new log: one record at block 0
// holding an unmount record, cycle 1, so the kernel finds it clean. The
// rest of the log is zeros (holes).
func (p *Plan) writeLog(mw *metaWriter) {
	g := p.g
	bbs := 2 // record header + one data sector
	if g.sectSize == 4096 {
		bbs = 8
	}
	b := make([]byte, bbs*bbSize)
	lsn := uint64(1) << 32 // cycle 1, block 0
	be.PutUint32(b[0:], logMagic)
	be.PutUint32(b[4:], 1)
	be.PutUint32(b[8:], 2)
	be.PutUint32(b[12:], uint32((bbs-1)*bbSize))
	be.PutUint64(b[16:], lsn)
	be.PutUint64(b[24:], lsn)
	be.PutUint32(b[36:], 0xffffffff) // prev block
	be.PutUint32(b[40:], 1)          // one log op
	be.PutUint32(b[44:], logTID)     // first word of data sector 1, replaced by the cycle there
	be.PutUint32(b[300:], logFmtLinuxLE)
	copy(b[304:320], p.o.UUID[:])
	be.PutUint32(b[320:], logRecordSize)
	d := b[bbSize:]
	for i := 1; i < bbs; i++ {
		be.PutUint32(b[i*bbSize:], 1) // cycle stamped over the first word of every data sector
	}
	be.PutUint32(d[4:], 8) // op length: struct xfs_unmount_log_format
	d[8] = 0xaa            // XFS_LOG client
	d[9] = 0x20            // XLOG_UNMOUNT_TRANS
	d[12], d[13] = 0x6e, 0x55
	mw.put(b, g.offset(g.logAG, g.logStart))
}

// ---- allocation groups ----

func (p *Plan) counts() (icount, ifree, fdblocks uint64) {
	icount = uint64(p.chunks * inodesPerChunk)
	ifree = icount - uint64(p.inodes)
	for ag := range p.g.agcount {
		for _, f := range p.free[ag] {
			fdblocks += uint64(f.len)
		}
		fdblocks += uint64(p.g.flFill) + uint64(p.rmapExt[ag])
	}
	return
}

func (p *Plan) superblock(b []byte, ag uint32) {
	g := p.g
	be.PutUint32(b[0:], sbMagic)
	be.PutUint32(b[4:], blockSize)
	be.PutUint64(b[8:], g.dblocks)
	copy(b[32:48], p.o.UUID[:])
	be.PutUint64(b[48:], g.fsb(g.logAG, g.logStart))
	root, rbm, rsum := p.root.ino, p.inoAt(1), p.inoAt(2)
	if ag != 0 {
		// Secondary superblocks as mkfs leaves them: written before the
		// root existed, the root inode filled in only in the last and the
		// middle AG (rewrite_secondary_superblocks).
		rbm, rsum = nullFsino, nullFsino
		if ag != g.agcount-1 && (g.agcount <= 2 || ag != (g.agcount-1)/2) {
			root = nullFsino
		}
	}
	be.PutUint64(b[56:], root)
	be.PutUint64(b[64:], rbm)
	be.PutUint64(b[72:], rsum)
	be.PutUint32(b[80:], 1) // rextsize
	be.PutUint32(b[84:], g.agblocks)
	be.PutUint32(b[88:], g.agcount)
	be.PutUint32(b[96:], g.logBlocks)
	v := uint16(versionNum)
	if g.sectSize != 512 {
		v |= versionSec
	}
	be.PutUint16(b[100:], v)
	be.PutUint16(b[102:], uint16(g.sectSize))
	be.PutUint16(b[104:], inodeSize)
	be.PutUint16(b[106:], inoPerBlk)
	copy(b[108:120], p.o.Label)
	b[120] = blockLog
	b[121] = 9
	if g.sectSize == 4096 {
		b[121] = 12
	}
	b[122] = inodeLog
	b[123] = inoPerBLog
	b[124] = byte(g.agblklog)
	b[127] = 25 // imax_pct
	if ag == 0 {
		icount, ifree, fd := p.counts()
		be.PutUint64(b[128:], icount)
		be.PutUint64(b[136:], ifree)
		be.PutUint64(b[144:], fd)
	} else {
		b[126] = 1 // inprogress, as mkfs leaves the secondaries
		fd := uint64(0)
		for a := range g.agcount {
			fd += uint64(g.agLen(a) - g.prealloc)
		}
		be.PutUint64(b[144:], fd-uint64(g.logBlocks))
	}
	be.PutUint32(b[180:], g.inoAlign)
	if g.sectSize == 4096 {
		b[193] = 12
		be.PutUint16(b[194:], 4096)
		be.PutUint32(b[196:], 4096)
	} else {
		be.PutUint32(b[196:], 1)
	}
	be.PutUint32(b[200:], features2)
	be.PutUint32(b[204:], features2)
	be.PutUint32(b[212:], g.feat.roCompat())
	be.PutUint32(b[216:], g.feat.incompat())
	if g.feat.Sparse {
		be.PutUint32(b[228:], clusterBlocks)
	}
	setCRC(b[:g.sectSize], 224)
}

func (p *Plan) writeAG(mw *metaWriter, ag uint32) {
	g := p.g
	ss := g.sectSize
	hdr := make([]byte, g.hdrBlocks*blockSize)
	p.superblock(hdr[0:ss], ag)
	p.agf(hdr[ss:2*ss], ag)
	p.agi(hdr[2*ss:3*ss], ag)
	p.agfl(hdr[3*ss:4*ss], ag)
	mw.put(hdr, g.offset(ag, 0))

	b := make([]byte, blockSize)
	// Free space by block and by size.
	free := p.free[ag]
	p.shortLeaf(b, bnoMagic, ag, g.bnoRoot, len(free), func(r []byte, i int) {
		be.PutUint32(r, free[i].bno)
		be.PutUint32(r[4:], free[i].len)
	}, 8)
	mw.put(b, g.offset(ag, g.bnoRoot))
	bycnt := slices.Clone(free)
	slices.SortFunc(bycnt, func(a, b span) int {
		if a.len != b.len {
			return int(a.len) - int(b.len)
		}
		return int(a.bno) - int(b.bno)
	})
	p.shortLeaf(b, cntMagic, ag, g.cntRoot, len(bycnt), func(r []byte, i int) {
		be.PutUint32(r, bycnt[i].bno)
		be.PutUint32(r[4:], bycnt[i].len)
	}, 8)
	mw.put(b, g.offset(ag, g.cntRoot))

	// Inode chunks (all in AG 0) and those with free inodes.
	type rec struct {
		start uint32
		free  uint64
		nfree int
	}
	var recs, frecs []rec
	if ag == 0 {
		for c := range p.chunks {
			r := rec{start: uint32((g.rootBno + uint32(c*chunkBlocks)) << inoPerBLog)}
			for k := range inodesPerChunk {
				if c*inodesPerChunk+k >= p.inodes {
					r.free |= 1 << k
					r.nfree++
				}
			}
			recs = append(recs, r)
			if r.nfree > 0 {
				frecs = append(frecs, r)
			}
		}
	}
	inoRec := func(rs []rec) func(r []byte, i int) {
		return func(r []byte, i int) {
			be.PutUint32(r, rs[i].start)
			if g.feat.Sparse {
				be.PutUint16(r[4:], 0) // holemask: full chunk
				r[6] = inodesPerChunk
				r[7] = byte(rs[i].nfree)
			} else {
				be.PutUint32(r[4:], uint32(rs[i].nfree))
			}
			be.PutUint64(r[8:], rs[i].free)
		}
	}
	p.shortLeaf(b, inoMagic, ag, g.inoRoot, len(recs), inoRec(recs), 16)
	mw.put(b, g.offset(ag, g.inoRoot))
	if g.feat.Finobt {
		p.shortLeaf(b, finoMagic, ag, g.finoRoot, len(frecs), inoRec(frecs), 16)
		mw.put(b, g.offset(ag, g.finoRoot))
	}
	if g.feat.Reflink {
		p.shortLeaf(b, refcMagic, ag, g.refcRt, 0, nil, 12)
		mw.put(b, g.offset(ag, g.refcRt))
	}
	if g.feat.Rmapbt {
		p.writeRmap(mw, ag)
	}
}

// shortLeaf fills b with a level-0 short-form btree block of n records.
func (p *Plan) shortLeaf(b []byte, magic, ag, bno uint32, n int, put func(r []byte, i int), recLen int) {
	clear(b)
	btreeShortHdr(b, magic, 0, n, nullAgbno, nullAgbno, p.g.daddr(ag, bno), *p.o.UUID, ag)
	for i := range n {
		put(b[btShortHdr+i*recLen:], i)
	}
	setCRC(b, btShortCRC)
}

func putRmapRec(r []byte, s span) {
	be.PutUint32(r, s.bno)
	be.PutUint32(r[4:], s.len)
	be.PutUint64(r[8:], uint64(s.owner))
	be.PutUint64(r[16:], s.off)
}

// rmapHighKey is the highest key a record covers (xfs_rmapbt_init_high_key_from_rec).
func rmapHighKey(k []byte, s span) {
	be.PutUint32(k, s.bno+s.len-1)
	be.PutUint64(k[4:], uint64(s.owner))
	off := s.off
	if s.owner >= 0 {
		off += uint64(s.len) - 1
	}
	be.PutUint64(k[12:], off)
}

func (p *Plan) writeRmap(mw *metaWriter, ag uint32) {
	g := p.g
	recs := p.rmaps[ag]
	b := make([]byte, blockSize)
	nl := int(p.rmapExt[ag])
	if nl == 0 {
		p.shortLeaf(b, rmapMagic, ag, g.rmapRoot, len(recs), func(r []byte, i int) { putRmapRec(r, recs[i]) }, rmapRecLen)
		mw.put(b, g.offset(ag, g.rmapRoot))
		return
	}
	// Records spread evenly over nl leaves under one root node.
	maxKeys := (blockSize - btShortHdr) / (2*rmapKeyLen + 4)
	node := make([]byte, blockSize)
	btreeShortHdr(node, rmapMagic, 1, nl, nullAgbno, nullAgbno, g.daddr(ag, g.rmapRoot), *p.o.UUID, ag)
	for l := range nl {
		lo, hi := l*len(recs)/nl, (l+1)*len(recs)/nl
		bno := p.rmapAt[ag] + uint32(l)
		left, right := uint32(nullAgbno), uint32(nullAgbno)
		if l > 0 {
			left = bno - 1
		}
		if l < nl-1 {
			right = bno + 1
		}
		clear(b)
		btreeShortHdr(b, rmapMagic, 0, hi-lo, left, right, g.daddr(ag, bno), *p.o.UUID, ag)
		for i := lo; i < hi; i++ {
			putRmapRec(b[btShortHdr+(i-lo)*rmapRecLen:], recs[i])
		}
		setCRC(b, btShortCRC)
		mw.put(b, g.offset(ag, bno))
		k := node[btShortHdr+l*2*rmapKeyLen:]
		be.PutUint32(k, recs[lo].bno)
		be.PutUint64(k[4:], uint64(recs[lo].owner))
		be.PutUint64(k[12:], recs[lo].off)
		rmapHighKey(k[rmapKeyLen:], recs[hi-1])
		be.PutUint32(node[btShortHdr+maxKeys*2*rmapKeyLen+4*l:], bno)
	}
	setCRC(node, btShortCRC)
	mw.put(node, g.offset(ag, g.rmapRoot))
}

func (p *Plan) agfl(b []byte, ag uint32) {
	g := p.g
	be.PutUint32(b[0:], agflMagic)
	be.PutUint32(b[4:], ag)
	copy(b[8:24], p.o.UUID[:])
	for i := range g.agflSize {
		be.PutUint32(b[36+4*i:], nullAgbno)
	}
	first := g.prealloc
	if ag == g.logAG {
		first += g.logBlocks
	}
	// Slots 1..flFill, as mkfs leaves them.
	for i := range g.flFill {
		be.PutUint32(b[36+4*(1+int(i)):], first+i)
	}
	setCRC(b[:g.sectSize], 32)
}

func (p *Plan) agf(b []byte, ag uint32) {
	g := p.g
	be.PutUint32(b[0:], agfMagic)
	be.PutUint32(b[4:], 1)
	be.PutUint32(b[8:], ag)
	be.PutUint32(b[12:], g.agLen(ag))
	be.PutUint32(b[16:], g.bnoRoot)
	be.PutUint32(b[20:], g.cntRoot)
	be.PutUint32(b[28:], 1)
	be.PutUint32(b[32:], 1)
	if g.feat.Rmapbt {
		be.PutUint32(b[24:], g.rmapRoot)
		lvl := uint32(1)
		if p.rmapExt[ag] > 0 {
			lvl = 2
		}
		be.PutUint32(b[36:], lvl)
		be.PutUint32(b[80:], 1+p.rmapExt[ag])
	}
	be.PutUint32(b[40:], 1)
	be.PutUint32(b[44:], g.flFill)
	be.PutUint32(b[48:], g.flFill)
	var freeblks, longest uint32
	for _, f := range p.free[ag] {
		freeblks += f.len
		longest = max(longest, f.len)
	}
	be.PutUint32(b[52:], freeblks)
	be.PutUint32(b[56:], longest)
	be.PutUint32(b[60:], p.rmapExt[ag]) // btree blocks beyond the roots
	copy(b[64:80], p.o.UUID[:])
	if g.feat.Reflink {
		be.PutUint32(b[84:], 1)
		be.PutUint32(b[88:], g.refcRt)
		be.PutUint32(b[92:], 1)
	}
	setCRC(b[:g.sectSize], 216)
}

func (p *Plan) agi(b []byte, ag uint32) {
	g := p.g
	be.PutUint32(b[0:], agiMagic)
	be.PutUint32(b[4:], 1)
	be.PutUint32(b[8:], ag)
	be.PutUint32(b[12:], g.agLen(ag))
	newino := uint32(nullAgino)
	if ag == 0 {
		count := uint32(p.chunks * inodesPerChunk)
		be.PutUint32(b[16:], count)
		be.PutUint32(b[28:], count-uint32(p.inodes))
		newino = uint32((g.rootBno + uint32((p.chunks-1)*chunkBlocks)) << inoPerBLog)
	}
	be.PutUint32(b[20:], g.inoRoot)
	be.PutUint32(b[24:], 1)
	be.PutUint32(b[32:], newino)
	be.PutUint32(b[36:], nullAgino)
	for i := range 64 {
		be.PutUint32(b[40+4*i:], nullAgino)
	}
	copy(b[296:312], p.o.UUID[:])
	if g.feat.Finobt {
		be.PutUint32(b[328:], g.finoRoot)
		be.PutUint32(b[332:], 1)
	}
	if g.feat.Inobtcount {
		be.PutUint32(b[336:], 1)
		be.PutUint32(b[340:], 1)
	}
	setCRC(b[:g.sectSize], 312)
}
