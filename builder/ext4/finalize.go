package ext4

import (
	"encoding/binary"
	"fmt"
	"io"
	"time"

	"github.com/kiln-dev/kiln/builder/disk"
)

// On-disk offsets used by finalize (ext4 superblock, group descriptor and
// inode layouts, Documentation/filesystems/ext4).
const (
	sbOffset = 1024
	sbSize   = 1024

	sbBlocksCountLo  = 0x04
	sbFirstDataBlock = 0x14
	sbLogBlockSize   = 0x18
	sbBlocksPerGroup = 0x20
	sbInodesPerGroup = 0x28
	sbMtime          = 0x2c
	sbWtime          = 0x30
	sbMagic          = 0x38
	sbLastcheck      = 0x40
	sbInodeSize      = 0x58
	sbBlockGroupNr   = 0x5a
	sbFeatureCompat  = 0x5c
	sbFeatureIncompa = 0x60
	sbFeatureRoCompa = 0x64
	sbHashSeed       = 0xec
	sbDescSize       = 0xfe
	sbMkfsTime       = 0x108
	sbBlocksCountHi  = 0x150
	sbWtimeHi        = 0x274
	sbMtimeHi        = 0x275
	sbMkfsTimeHi     = 0x276
	sbLastcheckHi    = 0x277

	ext4Magic        = 0xef53
	compatSparseSup2 = 0x200
	roCompatSparse   = 0x1
	roCompatMetaCsum = 0x400
	incompat64Bit    = 0x80

	gdInodeTableLo   = 0x08
	gdFreeInodesLo   = 0x0e
	gdInodeTableHi   = 0x28
	gdFreeInodesHi   = 0x2e
	inMode           = 0x00
	inAtime          = 0x08
	inCtime          = 0x0c
	inMtime          = 0x10
	inLinksCount     = 0x1a
	inChecksumLo     = 0x7c
	inExtraIsize     = 0x80
	inChecksumHi     = 0x82
	inCtimeExtra     = 0x84
	inMtimeExtra     = 0x88
	inAtimeExtra     = 0x8c
	inCrtime         = 0x90
	inCrtimeExtra    = 0x94
	goodOldInodeSize = 128
)

type rw interface {
	io.ReaderAt
	io.WriterAt
}

// finalize makes the file system at offset reproducible: it replaces the
// random directory hash seed go-diskfs generates with guid (as mke2fs -E
// hash_seed=<guid> does in Talos) and every time.Now() it wrote (superblock
// times, inode a/c/m/crtimes) with t; s_mtime (last mount) becomes 0, as
// after mke2fs. All superblock copies are patched. It refuses file systems
// with metadata checksums, which it would invalidate.
func finalize(f rw, offset int64, guid disk.GUID, t time.Time) error {
	sb := make([]byte, sbSize)
	if _, err := f.ReadAt(sb, offset+sbOffset); err != nil {
		return fmt.Errorf("reading superblock: %w", err)
	}
	if binary.LittleEndian.Uint16(sb[sbMagic:]) != ext4Magic {
		return fmt.Errorf("no ext4 superblock at %d", offset+sbOffset)
	}
	if binary.LittleEndian.Uint32(sb[sbFeatureRoCompa:])&roCompatMetaCsum != 0 {
		return fmt.Errorf("finalize: metadata_csum is not supported")
	}
	bs := int64(1024) << binary.LittleEndian.Uint32(sb[sbLogBlockSize:])
	bpg := int64(binary.LittleEndian.Uint32(sb[sbBlocksPerGroup:]))
	ipg := int64(binary.LittleEndian.Uint32(sb[sbInodesPerGroup:]))
	isz := int64(binary.LittleEndian.Uint16(sb[sbInodeSize:]))
	first := int64(binary.LittleEndian.Uint32(sb[sbFirstDataBlock:]))
	incompat := binary.LittleEndian.Uint32(sb[sbFeatureIncompa:])
	blocks := int64(binary.LittleEndian.Uint32(sb[sbBlocksCountLo:]))
	descSize := int64(32)
	if incompat&incompat64Bit != 0 {
		blocks |= int64(binary.LittleEndian.Uint32(sb[sbBlocksCountHi:])) << 32
		descSize = int64(binary.LittleEndian.Uint16(sb[sbDescSize:]))
	}
	if bpg == 0 || ipg == 0 || isz < goodOldInodeSize || descSize < 32 {
		return fmt.Errorf("implausible superblock (blocks/group %d, inodes/group %d, inode size %d, descriptor size %d)", bpg, ipg, isz, descSize)
	}
	groups := ceilDiv(blocks-first, bpg)

	// Inode times, group by group, only where inodes are in use.
	gdt := make([]byte, groups*descSize)
	if _, err := f.ReadAt(gdt, offset+(first+1)*bs); err != nil {
		return fmt.Errorf("reading group descriptors: %w", err)
	}
	for g := range groups {
		d := gdt[g*descSize : (g+1)*descSize]
		table := int64(binary.LittleEndian.Uint32(d[gdInodeTableLo:]))
		free := int64(binary.LittleEndian.Uint16(d[gdFreeInodesLo:]))
		if descSize >= 64 {
			table |= int64(binary.LittleEndian.Uint32(d[gdInodeTableHi:])) << 32
			free |= int64(binary.LittleEndian.Uint16(d[gdFreeInodesHi:])) << 16
		}
		if free >= ipg {
			continue
		}
		if err := patchInodes(f, offset+table*bs, ipg*isz, isz, t); err != nil {
			return fmt.Errorf("group %d: %w", g, err)
		}
	}

	// Superblock copies: the primary, then the backups at the start of
	// groups 1 and the powers of 3, 5 and 7 (sparse_super) or the groups
	// named by sparse_super2.
	patchSB(sb, guid, t)
	if _, err := f.WriteAt(sb, offset+sbOffset); err != nil {
		return fmt.Errorf("writing superblock: %w", err)
	}
	for _, g := range backupGroups(sb, groups) {
		off := offset + (g*bpg+first)*bs
		c := make([]byte, sbSize)
		if _, err := f.ReadAt(c, off); err != nil {
			return fmt.Errorf("reading backup superblock of group %d: %w", g, err)
		}
		if binary.LittleEndian.Uint16(c[sbMagic:]) != ext4Magic {
			return fmt.Errorf("no backup superblock for group %d at %d", g, off)
		}
		patchSB(c, guid, t)
		// go-diskfs writes the primary's 0 into every copy; mke2fs
		// records the group.
		binary.LittleEndian.PutUint16(c[sbBlockGroupNr:], uint16(g))
		if _, err := f.WriteAt(c, off); err != nil {
			return fmt.Errorf("writing backup superblock of group %d: %w", g, err)
		}
	}
	return nil
}

// backupGroups lists the groups (other than 0) holding a superblock copy.
func backupGroups(sb []byte, groups int64) []int64 {
	var gs []int64
	if binary.LittleEndian.Uint32(sb[sbFeatureCompat:])&compatSparseSup2 != 0 {
		for _, o := range []int{0x24c, 0x250} { // s_backup_bgs
			if g := int64(binary.LittleEndian.Uint32(sb[o:])); g > 0 && g < groups {
				gs = append(gs, g)
			}
		}
		return gs
	}
	if binary.LittleEndian.Uint32(sb[sbFeatureRoCompa:])&roCompatSparse == 0 {
		for g := int64(1); g < groups; g++ {
			gs = append(gs, g)
		}
		return gs
	}
	if groups > 1 {
		gs = append(gs, 1)
	}
	for _, b := range []int64{3, 5, 7} {
		for p := b; p < groups; p *= b {
			gs = append(gs, p)
		}
	}
	return gs
}

func patchSB(sb []byte, guid disk.GUID, t time.Time) {
	copy(sb[sbHashSeed:sbHashSeed+16], guid[:])
	sec := t.Unix()
	for _, o := range [][2]int{{sbWtime, sbWtimeHi}, {sbLastcheck, sbLastcheckHi}, {sbMkfsTime, sbMkfsTimeHi}} {
		binary.LittleEndian.PutUint32(sb[o[0]:], uint32(sec))
		sb[o[1]] = byte(sec >> 32)
	}
	binary.LittleEndian.PutUint32(sb[sbMtime:], 0)
	sb[sbMtimeHi] = 0
}

// patchInodes sets the times of every in-use inode of the table at off (n
// bytes, inodes of isz bytes), reading and writing it in copyChunk pieces
// and writing back only the pieces that changed.
func patchInodes(f rw, off, n, isz int64, t time.Time) error {
	sec := t.Unix()
	lo := uint32(sec)
	extra := uint32((sec-int64(int32(lo)))>>32)&3 | uint32(t.Nanosecond())<<2
	chunk := copyChunk / isz * isz
	buf := make([]byte, min(chunk, n))
	for done := int64(0); done < n; done += int64(len(buf)) {
		buf = buf[:min(int64(len(buf)), n-done)]
		if _, err := f.ReadAt(buf, off+done); err != nil {
			return fmt.Errorf("reading inode table: %w", err)
		}
		changed := false
		for i := int64(0); i+isz <= int64(len(buf)); i += isz {
			in := buf[i : i+isz]
			if binary.LittleEndian.Uint16(in[inMode:]) == 0 && binary.LittleEndian.Uint16(in[inLinksCount:]) == 0 {
				continue
			}
			changed = setInodeTimes(in, lo, extra) || changed
		}
		if changed {
			if _, err := f.WriteAt(buf, off+done); err != nil {
				return fmt.Errorf("writing inode table: %w", err)
			}
		}
	}
	return nil
}

// setInodeTimes writes lo/extra into the inode's time fields and reports
// whether anything changed.
func setInodeTimes(in []byte, lo, extra uint32) bool {
	changed := false
	put := func(o int, v uint32) {
		if binary.LittleEndian.Uint32(in[o:]) != v {
			binary.LittleEndian.PutUint32(in[o:], v)
			changed = true
		}
	}
	put16 := func(o int) {
		if binary.LittleEndian.Uint16(in[o:]) != 0 {
			binary.LittleEndian.PutUint16(in[o:], 0)
			changed = true
		}
	}
	put(inAtime, lo)
	put(inCtime, lo)
	put(inMtime, lo)
	// go-diskfs fills in inode checksums even without metadata_csum, from
	// the times we replace; without that feature the fields are unused and
	// mke2fs leaves them zero.
	put16(inChecksumLo)
	if len(in) > goodOldInodeSize {
		x := int(binary.LittleEndian.Uint16(in[inExtraIsize:]))
		has := func(field int) bool { return goodOldInodeSize+x >= field+4 && field+4 <= len(in) }
		if goodOldInodeSize+x >= inChecksumHi+2 {
			put16(inChecksumHi)
		}
		for _, o := range []int{inCtimeExtra, inMtimeExtra, inAtimeExtra} {
			if has(o) {
				put(o, extra)
			}
		}
		if has(inCrtime) {
			put(inCrtime, lo)
		}
		if has(inCrtimeExtra) {
			put(inCrtimeExtra, extra)
		}
	}
	return changed
}
