package ext4

import "math"

// Layout constants of the file systems built here (go-diskfs v1.9.4 ext4
// defaults with 4 KiB blocks).
const (
	// MiB is 1 << 20 bytes.
	MiB = 1 << 20

	blockSize      = 4096
	inodeSize      = 256
	inodeRatio     = 8192 // go-diskfs DefaultInodeRatio: one inode per 8 KiB
	blocksPerGroup = 32768
	gdSize         = 64 // 64bit group descriptors
	firstInode     = 11 // inodes 1–10 are reserved
	extentsPerLeaf = (blockSize - 12) / 12
	journalMin     = 4 * MiB
	journalMax     = 128 * MiB
	copyChunk      = 4 * MiB
)

// talosSize is Talos's IMAGECACHE size rule: content × 1.2, rounded up to
// 1 MiB (pkg/imager/out.go, calculateDirectorySizeWithOverhead(dir, 20)).
func talosSize(content int64) int64 {
	return roundUp(ceilDiv(content*120, 100), MiB)
}

// sizeFor returns the partition size for t: Talos's rule, grown to what the
// tree needs in this layout when the rule falls short.
func sizeFor(t *tree) int64 {
	s := max(talosSize(t.content), MiB)
	for {
		need := required(t, s)
		if need <= s {
			return s
		}
		s = roundUp(need, MiB)
	}
}

// inodeCount is the number of inodes a file system of size bytes gets for
// t: go-diskfs's default (one per 8 KiB), or more when t has more entries
// than that (plus the reserved ones and some room for later writes).
func inodeCount(t *tree, size int64) int64 {
	entries := int64(t.files + t.dirs)
	return min(max(size/inodeRatio, firstInode+entries+entries/16+16), math.MaxUint32)
}

// required returns an upper bound of the bytes a file system of size bytes
// needs to hold t. It errs on the large side: the build fails with
// ErrTooSmall rather than running out of space half way, so this bound is
// what the tests check against the real file systems.
func required(t *tree, size int64) int64 {
	blocks := size / blockSize
	groups := max(ceilDiv(blocks, blocksPerGroup), 1)

	// Inode tables: inodes are spread evenly, rounded up to 8 per group.
	ipg := roundUp(ceilDiv(inodeCount(t, size), groups), 8)
	meta := groups * ceilDiv(ipg*inodeSize, blockSize)
	// Block and inode bitmaps.
	meta += 2 * groups
	// Superblock and descriptor table in group 0 and each sparse backup.
	gdtBlocks := ceilDiv(groups*gdSize, blockSize)
	meta += sparseGroups(groups) * (1 + gdtBlocks)

	// Journal (go-diskfs initJournal): blocks/32, clamped to [1024 blocks, 4–128 MiB].
	journal := max(1024, min(102400, blocks/32)) * blockSize
	journal = min(max(journal, journalMin), journalMax)

	// Data: whole blocks, plus extent tree blocks. go-diskfs allocates on
	// every Write, so a file may get one extent per copy chunk, and extents
	// split at group boundaries; four extents fit in the inode.
	var data int64
	for _, n := range t.nodes {
		if n.dir {
			continue
		}
		fb := ceilDiv(n.size, blockSize)
		data += fb
		extents := ceilDiv(n.size, copyChunk) + fb/blocksPerGroup + 2
		if extents > 4 {
			data += ceilDiv(extents, extentsPerLeaf) + 1
		}
	}
	// Directories: linear entries ("." and ".." take 12 bytes each), a
	// quarter extra for entries that do not pack, plus one block each.
	for _, b := range t.dirents {
		dirBlocks := ceilDiv((b+24)*5/4, blockSize) + 1
		data += dirBlocks
		if dirBlocks > 16 {
			data += ceilDiv(dirBlocks, extentsPerLeaf) + 1
		}
	}

	// Slack: 256 blocks (1 MiB) and 0.5 % for what the estimate misses.
	need := (meta+data+256)*blockSize + journal
	return need + need/200
}

// sparseGroups counts the groups holding a superblock copy with sparse_super:
// 0, 1 and the powers of 3, 5 and 7 below groups.
func sparseGroups(groups int64) int64 {
	n := int64(1) // group 0
	if groups > 1 {
		n++ // group 1
	}
	for _, b := range []int64{3, 5, 7} {
		for p := b; p < groups; p *= b {
			n++
		}
	}
	return n
}
