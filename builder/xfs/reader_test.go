package xfs

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
)

// readFS is an independent, minimal reader of what this package writes: it
// checks every CRC it meets, the AG headers against the free space and inode
// B+trees, and returns each path's content hash ("dir" for directories).
// The fuzz test relies on it where running xfs_repair on every input would
// be too slow; the real readers (xfs_repair, xfs_db, the kernel) are in the
// other tests.
func readFS(r io.ReaderAt, size int64) (map[string]string, error) {
	rd := &fsReader{r: r}
	sb, err := rd.read(0, 512)
	if err != nil {
		return nil, err
	}
	if binary.BigEndian.Uint32(sb) != sbMagic {
		return nil, fmt.Errorf("no superblock magic")
	}
	rd.sect = int(binary.BigEndian.Uint16(sb[102:]))
	if sb, err = rd.read(0, rd.sect); err != nil {
		return nil, err
	}
	if err := checkCRC(sb, 224); err != nil {
		return nil, fmt.Errorf("superblock: %w", err)
	}
	rd.agblocks = binary.BigEndian.Uint32(sb[84:])
	rd.agcount = binary.BigEndian.Uint32(sb[88:])
	rd.agblklog = uint(sb[124])
	rd.nrext64 = binary.BigEndian.Uint32(sb[216:])&inNrext64 != 0
	rd.sparse = binary.BigEndian.Uint32(sb[216:])&inSpinodes != 0
	dblocks := binary.BigEndian.Uint64(sb[8:])
	if int64(dblocks)*blockSize > size {
		return nil, fmt.Errorf("dblocks %d beyond the image", dblocks)
	}
	var fd, icount, ifree uint64
	for ag := range rd.agcount {
		f, ic, fr, err := rd.checkAG(ag)
		if err != nil {
			return nil, fmt.Errorf("AG %d: %w", ag, err)
		}
		fd, icount, ifree = fd+f, icount+ic, ifree+fr
	}
	if got := binary.BigEndian.Uint64(sb[144:]); got != fd {
		return nil, fmt.Errorf("sb fdblocks %d, counted %d", got, fd)
	}
	if binary.BigEndian.Uint64(sb[128:]) != icount || binary.BigEndian.Uint64(sb[136:]) != ifree {
		return nil, fmt.Errorf("sb icount/ifree %d/%d, counted %d/%d", binary.BigEndian.Uint64(sb[128:]), binary.BigEndian.Uint64(sb[136:]), icount, ifree)
	}
	out := map[string]string{}
	root := binary.BigEndian.Uint64(sb[56:])
	if err := rd.walk(root, root, "", out, 0); err != nil {
		return nil, err
	}
	return out, nil
}

type fsReader struct {
	r        io.ReaderAt
	sect     int
	agblocks uint32
	agcount  uint32
	agblklog uint
	nrext64  bool
	sparse   bool
	seen     int
}

// inoCounts returns an inobt record's inode and free counts (the sparse
// record format keeps them in bytes 6 and 7, the old one has a 32-bit free
// count and always 64 inodes).
func inoCounts(r []byte, sparse bool) (count, free uint32) {
	if sparse {
		return uint32(r[6]), uint32(r[7])
	}
	return inodesPerChunk, binary.BigEndian.Uint32(r[4:])
}

func (rd *fsReader) read(off int64, n int) ([]byte, error) {
	b := make([]byte, n)
	if _, err := rd.r.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("read %d at %d: %w", n, off, err)
	}
	return b, nil
}

func (rd *fsReader) block(ag, bno uint32) ([]byte, error) {
	if ag >= rd.agcount || bno >= rd.agblocks {
		return nil, fmt.Errorf("block %d/%d out of range", ag, bno)
	}
	return rd.read((int64(ag)*int64(rd.agblocks)+int64(bno))*blockSize, blockSize)
}

func checkCRC(b []byte, off int) error {
	want := binary.LittleEndian.Uint32(b[off:])
	c := append([]byte(nil), b...)
	clear(c[off : off+4])
	if got := crc32.Checksum(c, castagnoli); got != want {
		return fmt.Errorf("bad CRC %08x (computed %08x)", want, got)
	}
	return nil
}

// btree reads a short-form btree of the given magic rooted at root and
// returns its leaf records.
func (rd *fsReader) btree(ag, root uint32, magic uint32, recLen, keyLen int) ([][]byte, error) {
	b, err := rd.block(ag, root)
	if err != nil {
		return nil, err
	}
	if binary.BigEndian.Uint32(b) != magic {
		return nil, fmt.Errorf("btree block %d: magic %08x, want %08x", root, binary.BigEndian.Uint32(b), magic)
	}
	if err := checkCRC(b, btShortCRC); err != nil {
		return nil, fmt.Errorf("btree block %d: %w", root, err)
	}
	if binary.BigEndian.Uint32(b[48:]) != ag {
		return nil, fmt.Errorf("btree block %d: owner %d", root, binary.BigEndian.Uint32(b[48:]))
	}
	level := binary.BigEndian.Uint16(b[4:])
	n := int(binary.BigEndian.Uint16(b[6:]))
	if level == 0 {
		if btShortHdr+n*recLen > blockSize {
			return nil, fmt.Errorf("btree block %d: %d records overflow", root, n)
		}
		var recs [][]byte
		for i := range n {
			recs = append(recs, b[btShortHdr+i*recLen:btShortHdr+(i+1)*recLen])
		}
		return recs, nil
	}
	if level > 2 {
		return nil, fmt.Errorf("btree block %d: level %d", root, level)
	}
	maxr := (blockSize - btShortHdr) / (keyLen + 4)
	if n > maxr {
		return nil, fmt.Errorf("btree node %d: %d pointers", root, n)
	}
	var recs [][]byte
	for i := range n {
		ptr := binary.BigEndian.Uint32(b[btShortHdr+maxr*keyLen+4*i:])
		sub, err := rd.btree(ag, ptr, magic, recLen, keyLen)
		if err != nil {
			return nil, err
		}
		recs = append(recs, sub...)
	}
	return recs, nil
}

func (rd *fsReader) checkAG(ag uint32) (fd, icount, ifree uint64, err error) {
	hdr, err := rd.read(int64(ag)*int64(rd.agblocks)*blockSize, 4*rd.sect)
	if err != nil {
		return 0, 0, 0, err
	}
	s := rd.sect
	agf, agi, agfl := hdr[s:2*s], hdr[2*s:3*s], hdr[3*s:4*s]
	for i, c := range []struct {
		b     []byte
		magic uint32
		crc   int
	}{{hdr[:s], sbMagic, 224}, {agf, agfMagic, 216}, {agi, agiMagic, 312}, {agfl, agflMagic, 32}} {
		if binary.BigEndian.Uint32(c.b) != c.magic {
			return 0, 0, 0, fmt.Errorf("header %d: bad magic", i)
		}
		if err := checkCRC(c.b, c.crc); err != nil {
			return 0, 0, 0, fmt.Errorf("header %d: %w", i, err)
		}
	}
	be := binary.BigEndian
	bno, err := rd.btree(ag, be.Uint32(agf[16:]), bnoMagic, 8, 8)
	if err != nil {
		return 0, 0, 0, err
	}
	cnt, err := rd.btree(ag, be.Uint32(agf[20:]), cntMagic, 8, 8)
	if err != nil {
		return 0, 0, 0, err
	}
	if len(bno) != len(cnt) {
		return 0, 0, 0, fmt.Errorf("bnobt has %d records, cntbt %d", len(bno), len(cnt))
	}
	var free, longest uint32
	var prevEnd uint32
	for i, r := range bno {
		st, ln := be.Uint32(r), be.Uint32(r[4:])
		if ln == 0 || (i > 0 && st <= prevEnd) || st+ln > be.Uint32(agf[12:]) {
			return 0, 0, 0, fmt.Errorf("bnobt record %d [%d,%d] out of order", i, st, ln)
		}
		prevEnd = st + ln
		free += ln
		longest = max(longest, ln)
	}
	if !sort.SliceIsSorted(cnt, func(i, j int) bool {
		a, b := cnt[i], cnt[j]
		if be.Uint32(a[4:]) != be.Uint32(b[4:]) {
			return be.Uint32(a[4:]) < be.Uint32(b[4:])
		}
		return be.Uint32(a) < be.Uint32(b)
	}) {
		return 0, 0, 0, fmt.Errorf("cntbt out of order")
	}
	if be.Uint32(agf[52:]) != free || be.Uint32(agf[56:]) != longest {
		return 0, 0, 0, fmt.Errorf("agf freeblks/longest %d/%d, counted %d/%d", be.Uint32(agf[52:]), be.Uint32(agf[56:]), free, longest)
	}
	ino, err := rd.btree(ag, be.Uint32(agi[20:]), inoMagic, 16, 4)
	if err != nil {
		return 0, 0, 0, err
	}
	sparse := rd.sparse
	var count, nfree uint32
	for _, r := range ino {
		c, f := inoCounts(r, sparse)
		count += c
		nfree += f
	}
	if be.Uint32(agi[16:]) != count || be.Uint32(agi[28:]) != nfree {
		return 0, 0, 0, fmt.Errorf("agi count/freecount %d/%d, counted %d/%d", be.Uint32(agi[16:]), be.Uint32(agi[28:]), count, nfree)
	}
	if fr := be.Uint32(agi[328:]); fr != 0 {
		fino, err := rd.btree(ag, fr, finoMagic, 16, 4)
		if err != nil {
			return 0, 0, 0, err
		}
		var ff uint32
		for _, r := range fino {
			_, f := inoCounts(r, sparse)
			ff += f
		}
		if ff != nfree {
			return 0, 0, 0, fmt.Errorf("finobt counts %d free inodes, inobt %d", ff, nfree)
		}
	}
	if rr := be.Uint32(agf[24:]); rr != 0 {
		recs, err := rd.btree(ag, rr, rmapMagic, rmapRecLen, 2*rmapKeyLen)
		if err != nil {
			return 0, 0, 0, err
		}
		// Every block is either free or mapped exactly once.
		var mapped uint64
		prev := uint32(0)
		for i, r := range recs {
			st, ln := be.Uint32(r), be.Uint32(r[4:])
			if i > 0 && st < prev {
				return 0, 0, 0, fmt.Errorf("rmap record %d overlaps", i)
			}
			prev = st + ln
			mapped += uint64(ln)
		}
		if mapped+uint64(free) != uint64(be.Uint32(agf[12:])) {
			return 0, 0, 0, fmt.Errorf("rmapbt maps %d blocks, %d free, AG has %d", mapped, free, be.Uint32(agf[12:]))
		}
	}
	fd = uint64(free) + uint64(be.Uint32(agf[48:])) + uint64(be.Uint32(agf[60:]))
	return fd, uint64(count), uint64(nfree), nil
}

func (rd *fsReader) inode(ino uint64) ([]byte, error) {
	inoBits := rd.agblklog + inoPerBLog
	ag := uint32(ino >> inoBits)
	agino := ino & (1<<inoBits - 1)
	if ag >= rd.agcount {
		return nil, fmt.Errorf("inode %d: bad AG", ino)
	}
	b, err := rd.read((int64(ag)*int64(rd.agblocks))*blockSize+int64(agino)*inodeSize, inodeSize)
	if err != nil {
		return nil, err
	}
	if binary.BigEndian.Uint16(b) != dinodeMag || b[4] != 3 {
		return nil, fmt.Errorf("inode %d: bad magic/version", ino)
	}
	if err := checkCRC(b, 100); err != nil {
		return nil, fmt.Errorf("inode %d: %w", ino, err)
	}
	if binary.BigEndian.Uint64(b[152:]) != ino {
		return nil, fmt.Errorf("inode %d: records number %d", ino, binary.BigEndian.Uint64(b[152:]))
	}
	return b, nil
}

type rext struct{ off, fsb, n uint64 }

func (rd *fsReader) extents(b []byte) []rext {
	n := uint64(binary.BigEndian.Uint32(b[76:]))
	if rd.nrext64 {
		n = binary.BigEndian.Uint64(b[24:])
	}
	var out []rext
	for i := range min(n, maxInlineExts) {
		r := b[inodeCoreSize+16*i:]
		hi, lo := binary.BigEndian.Uint64(r), binary.BigEndian.Uint64(r[8:])
		out = append(out, rext{off: hi >> 9 & (1<<54 - 1), fsb: (hi&0x1ff)<<43 | lo>>21, n: lo & (1<<21 - 1)})
	}
	return out
}

func (rd *fsReader) fsbBlock(fsb uint64) ([]byte, error) {
	return rd.block(uint32(fsb>>rd.agblklog), uint32(fsb&(1<<rd.agblklog-1)))
}

func (rd *fsReader) walk(ino, parent uint64, path string, out map[string]string, depth int) error {
	if depth > 64 || rd.seen > MaxEntries+3 {
		return fmt.Errorf("%s: directory loop", path)
	}
	rd.seen++
	b, err := rd.inode(ino)
	if err != nil {
		return err
	}
	mode := binary.BigEndian.Uint16(b[2:])
	size := int64(binary.BigEndian.Uint64(b[56:]))
	if mode&0o170000 == 0o100000 {
		h := sha256.New()
		left := size
		var next uint64
		for _, e := range rd.extents(b) {
			if e.off != next {
				return fmt.Errorf("%s: extent at %d, want %d", path, e.off, next)
			}
			ag, bno := uint32(e.fsb>>rd.agblklog), uint32(e.fsb&(1<<rd.agblklog-1))
			if ag >= rd.agcount || uint64(bno)+e.n > uint64(rd.agblocks) {
				return fmt.Errorf("%s: extent %d/%d+%d out of range", path, ag, bno, e.n)
			}
			for i := uint64(0); i < e.n; i += 256 {
				k := min(e.n-i, 256)
				buf, err := rd.read((int64(ag)*int64(rd.agblocks)+int64(bno)+int64(i))*blockSize, int(k)*blockSize)
				if err != nil {
					return fmt.Errorf("%s: %w", path, err)
				}
				take := min(left, int64(len(buf)))
				h.Write(buf[:take])
				left -= take
			}
			next += e.n
		}
		if left != 0 {
			return fmt.Errorf("%s: extents hold %d bytes less than its size", path, left)
		}
		out[path] = fmt.Sprintf("%x", h.Sum(nil))
		return nil
	}
	if mode&0o170000 != 0o040000 {
		return fmt.Errorf("%s: mode %o", path, mode)
	}
	if path != "" {
		out[path] = "dir"
	}
	type ent struct {
		name string
		ino  uint64
		ft   byte
	}
	var ents []ent
	switch b[5] {
	case fmtLocal:
		d := b[inodeCoreSize:]
		n := int(d[0])
		if p := uint64(binary.BigEndian.Uint32(d[2:])); p != parent {
			return fmt.Errorf("%s: sf parent %d, want %d", path, p, parent)
		}
		o := 6
		for range n {
			l := int(d[o])
			if o+3+l+5 > litSize {
				return fmt.Errorf("%s: short-form directory overflows", path)
			}
			ents = append(ents, ent{string(d[o+3 : o+3+l]), uint64(binary.BigEndian.Uint32(d[o+4+l:])), d[o+3+l]})
			o += 3 + l + 5
		}
		if int64(o) != size {
			return fmt.Errorf("%s: sf size %d, entries end at %d", path, size, o)
		}
	case fmtExtents:
		for _, e := range rd.extents(b) {
			for i := range e.n {
				blk, err := rd.fsbBlock(e.fsb + i)
				if err != nil {
					return err
				}
				lb := e.off + i
				if lb >= dirLeafOffset {
					if binary.BigEndian.Uint16(blk[8:]) != dirLeafMag {
						return fmt.Errorf("%s: leaf magic", path)
					}
					if err := checkCRC(blk, 12); err != nil {
						return fmt.Errorf("%s: leaf: %w", path, err)
					}
					continue
				}
				magic := binary.BigEndian.Uint32(blk)
				if magic != dirBlkMag && magic != dirDataMag {
					return fmt.Errorf("%s: dir block magic %08x", path, magic)
				}
				if err := checkCRC(blk, 4); err != nil {
					return fmt.Errorf("%s: dir block: %w", path, err)
				}
				if binary.BigEndian.Uint64(blk[40:]) != ino {
					return fmt.Errorf("%s: dir block owner", path)
				}
				end := blockSize
				if magic == dirBlkMag {
					cnt := int(binary.BigEndian.Uint32(blk[blockSize-8:]))
					end = blockSize - 8 - 8*cnt
					var prev uint32
					for j := range cnt {
						h := binary.BigEndian.Uint32(blk[end+8*j:])
						if h < prev {
							return fmt.Errorf("%s: block leaf hashes out of order", path)
						}
						prev = h
					}
				}
				for o := dirDataHdr; o < end; {
					if binary.BigEndian.Uint16(blk[o:]) == 0xffff {
						l := int(binary.BigEndian.Uint16(blk[o+2:]))
						if l < 8 || o+l > end {
							return fmt.Errorf("%s: bad free entry", path)
						}
						o += l
						continue
					}
					l := int(blk[o+8])
					if o+dirEntSize(l) > end {
						return fmt.Errorf("%s: entry overflows", path)
					}
					name := string(blk[o+9 : o+9+l])
					if int(binary.BigEndian.Uint16(blk[o+dirEntSize(l)-2:])) != o {
						return fmt.Errorf("%s: entry tag", path)
					}
					if name != "." && name != ".." {
						ents = append(ents, ent{name, binary.BigEndian.Uint64(blk[o:]), blk[o+9+l]})
					} else if name == ".." && binary.BigEndian.Uint64(blk[o:]) != parent {
						return fmt.Errorf("%s: .. is %d, want %d", path, binary.BigEndian.Uint64(blk[o:]), parent)
					}
					o += dirEntSize(l)
				}
			}
		}
	default:
		return fmt.Errorf("%s: directory format %d", path, b[5])
	}
	nsub := 0
	for _, e := range ents {
		p := e.name
		if path != "" {
			p = path + "/" + e.name
		}
		if _, dup := out[p]; dup {
			return fmt.Errorf("%s: duplicate entry", p)
		}
		if e.ft == ftypeDir {
			nsub++
		}
		if err := rd.walk(e.ino, ino, p, out, depth+1); err != nil {
			return err
		}
	}
	if nl := binary.BigEndian.Uint32(b[16:]); nl != uint32(2+nsub) {
		return fmt.Errorf("%s: nlink %d, want %d", path, nl, 2+nsub)
	}
	return nil
}
