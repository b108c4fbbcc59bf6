package xfs

import (
	"encoding/binary"
	"hash/crc32"
	"math/bits"
	"time"
)

// On-disk constants of the XFS v5 format (fs/xfs/libxfs/xfs_format.h,
// xfs_da_format.h, xfs_log_format.h). Everything is big-endian except the
// CRC fields, which are little-endian CRC32C.
const (
	blockSize  = 4096
	blockLog   = 12
	inodeSize  = 512
	inodeLog   = 9
	inoPerBlk  = blockSize / inodeSize
	inoPerBLog = 3
	bbSize     = 512 // "basic block": the unit of daddr fields

	inodesPerChunk = 64
	chunkBlocks    = inodesPerChunk * inodeSize / blockSize // 8
	clusterBlocks  = 4                                      // 16 KiB inode clusters (8192 * inodeSize/256)

	inodeCoreSize = 176
	litSize       = inodeSize - inodeCoreSize // data fork size with no attribute fork
	maxInlineExts = litSize / 16

	sbMagic    = 0x58465342 // XFSB
	agfMagic   = 0x58414746 // XAGF
	agiMagic   = 0x58414749 // XAGI
	agflMagic  = 0x5841464c // XAFL
	bnoMagic   = 0x41423342 // AB3B
	cntMagic   = 0x41423343 // AB3C
	inoMagic   = 0x49414233 // IAB3
	finoMagic  = 0x46494233 // FIB3
	rmapMagic  = 0x524d4233 // RMB3
	refcMagic  = 0x52334643 // R3FC
	dinodeMag  = 0x494e     // IN
	dirBlkMag  = 0x58444233 // XDB3: single-block directory
	dirDataMag = 0x58444433 // XDD3: data block of a leaf directory
	dirLeafMag = 0x3df1     // XFS_DIR3_LEAF1_MAGIC
	logMagic   = 0xfeedbabe

	nullAgino = 0xffffffff
	nullAgbno = 0xffffffff
	nullFsino = ^uint64(0)

	// Superblock version and feature bits.
	versionNum = 5 | 0x20 | 0x80 | 0x400 | 0x1000 | 0x2000 | 0x8000 // V5, NLINK, ALIGN, LOGV2, EXTFLG, DIRV2, MOREBITS
	versionSec = 0x800                                              // SECTOR: sector size other than 512
	features2  = 0x2 | 0x8 | 0x80 | 0x100                           // LAZYSBCOUNT, ATTR2, PROJID32, CRC

	roFinobt   = 1 << 0
	roRmapbt   = 1 << 1
	roReflink  = 1 << 2
	roInobtcnt = 1 << 3

	inFtype    = 1 << 0
	inSpinodes = 1 << 1
	inBigtime  = 1 << 3
	inNrext64  = 1 << 5
	inExchange = 1 << 6

	diflagNewRTBM = 0x4
	diflag2Big    = 0x8  // XFS_DIFLAG2_BIGTIME
	diflag2NX64   = 0x10 // XFS_DIFLAG2_NREXT64

	fmtLocal   = 1
	fmtExtents = 2

	ftypeReg = 1
	ftypeDir = 2

	// Reverse-mapping owners of non-inode blocks (XFS_RMAP_OWN_*).
	ownFS     = -3
	ownLog    = -4
	ownAG     = -5
	ownInobt  = -6
	ownInodes = -7
	ownRefc   = -8

	btShortHdr = 56 // v5 short-form btree block header
	rmapRecLen = 24
	rmapKeyLen = 20

	dirDataHdr    = 64 // struct xfs_dir3_data_hdr
	dirLeafHdr    = 64 // struct xfs_dir3_leaf_hdr
	dirFirstOff   = dirDataHdr + 16 + 16
	dirLeafOffset = (32 << 30) >> blockLog // XFS_DIR2_LEAF_OFFSET in blocks

	// The log as mkfs leaves it (libxfs_log_clear with XLOG_INIT_CYCLE).
	logRecordSize = 32768      // XLOG_BIG_RECORD_BSIZE
	logTID        = 0xb0c0d0d0 // the transaction id libxfs writes
	logFmtLinuxLE = 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// setCRC computes the CRC32C of b with its 4-byte CRC field at off zeroed
// and stores it there (little-endian), as xfs_update_cksum does.
func setCRC(b []byte, off int) {
	clear(b[off : off+4])
	binary.LittleEndian.PutUint32(b[off:], crc32.Checksum(b, castagnoli))
}

var be = binary.BigEndian

// hashName is xfs_da_hashname, the directory name hash.
func hashName(name []byte) uint32 {
	var h uint32
	for len(name) >= 4 {
		h = uint32(name[0])<<21 ^ uint32(name[1])<<14 ^ uint32(name[2])<<7 ^ uint32(name[3]) ^ bits.RotateLeft32(h, 7*4)
		name = name[4:]
	}
	switch len(name) {
	case 3:
		return uint32(name[0])<<14 ^ uint32(name[1])<<7 ^ uint32(name[2]) ^ bits.RotateLeft32(h, 7*3)
	case 2:
		return uint32(name[0])<<7 ^ uint32(name[1]) ^ bits.RotateLeft32(h, 7*2)
	case 1:
		return uint32(name[0]) ^ bits.RotateLeft32(h, 7)
	}
	return h
}

// dirEntSize is the size of a directory data entry (xfs_dir2_data_entsize
// with file types): inode number, name length, name, file type and tag,
// rounded up to 8 bytes.
func dirEntSize(nameLen int) int { return (8 + 1 + nameLen + 1 + 2 + 7) &^ 7 }

// bigtime encodes t as an XFS big timestamp: nanoseconds since the
// legacy epoch minimum (1901-12-13T20:45:52Z).
func bigtime(t time.Time) uint64 {
	return uint64(t.Unix()+1<<31)*1e9 + uint64(t.Nanosecond())
}

// legacyTime encodes t as seconds and nanoseconds (32 bits each).
func legacyTime(t time.Time) uint64 {
	return uint64(uint32(int32(t.Unix())))<<32 | uint64(t.Nanosecond())
}

// btreeShortHdr writes a v5 short-form btree block header. The CRC is set
// by the caller once the block is complete (offset 52).
func btreeShortHdr(b []byte, magic uint32, level, numrecs int, left, right uint32, daddr uint64, uuid [16]byte, agno uint32) {
	be.PutUint32(b[0:], magic)
	be.PutUint16(b[4:], uint16(level))
	be.PutUint16(b[6:], uint16(numrecs))
	be.PutUint32(b[8:], left)
	be.PutUint32(b[12:], right)
	be.PutUint64(b[16:], daddr)
	// lsn at 24 stays 0
	copy(b[32:48], uuid[:])
	be.PutUint32(b[48:], agno)
}

const btShortCRC = 52

// bmbtRec packs one data fork extent record.
func bmbtRec(b []byte, off, start, count uint64) {
	hi := off<<9 | start>>43
	lo := start<<21 | count
	be.PutUint64(b[0:], hi)
	be.PutUint64(b[8:], lo)
}
