// Package ext4 builds the IMAGECACHE partition of a raw disk image: an ext4
// file system, labelled like Talos labels it, holding an image cache tree
// (blob/, manifests/), written in pure Go with github.com/diskfs/go-diskfs.
//
// Talos makes this partition with
//
//	tar -cf - -C <tree> --sort=name --owner=0 --group=0 --numeric-owner --mtime=@EPOCH . |
//	  mkfs.ext4 -L IMAGECACHE [-b <sector>] -U <guid> -E hash_seed=<guid> -d - IMAGECACHE.img
//
// with guid = GUIDFromLabel("IMAGECACHE") (talos-formats.md §4.3). This package
// produces the same observable result: label, file system UUID and directory
// hash seed from disk.GUIDFromLabel(label), directories and regular files with
// their permission bits, owner and group 0, and one fixed timestamp on every
// inode.
//
// # Layout
//
// The file system always uses 4 KiB blocks (a multiple of both 512- and
// 4096-byte sectors), a journal, extents, 64bit and flex_bg, as go-diskfs
// creates them. It differs from mke2fs in ways no reader depends on: no
// resize_inode (go-diskfs cannot lay it out for 4 KiB blocks; IMAGECACHE is
// never grown), no dir_index (directories are linear), no metadata_csum, no
// lost+found pre-allocation beyond what go-diskfs does.
//
// # Size
//
// Size applies Talos's rule, the content size × 1.2 rounded up to 1 MiB
// (calculateDirectorySizeWithOverhead(dir, 20) in pkg/imager/out.go), and then
// checks it against what the tree really needs in this layout: every file
// rounded up to whole 4 KiB blocks, directory blocks, extent tree blocks, one
// inode per entry, inode tables, bitmaps, superblock/descriptor backups and
// the journal (4 MiB minimum, size/32, 128 MiB maximum). For trees of large
// blobs Talos's 20 % covers that; for small trees (the 4 MiB journal alone is
// more than 20 % of anything under 20 MiB) and trees of many tiny files (a
// 300-byte manifest still takes a 4 KiB block and an inode) it does not, and
// Size returns the larger, needed size, rounded up to 1 MiB.
//
// # Determinism
//
// The output is a function of the tree (names, sizes, contents, permission
// bits), the label, the partition size and the timestamp (WithTime, default
// the Unix epoch): go-diskfs takes its UUID from us and allocates blocks and
// inodes sequentially in the sorted walk order, and the random hash seed and
// the time.Now() values go-diskfs writes (superblock times, every inode's
// times, and the inode checksum fields it fills although metadata_csum is
// off) are overwritten in a final pass, which also records each backup
// superblock's group number (go-diskfs copies the primary's 0). The sector
// size does not change the bytes. Source mtimes, owners and hard links are
// not carried over (hard-linked files are copied twice).
//
// # Speed
//
// Large files stream at several hundred MB/s. go-diskfs's cost per entry
// grows with the size of the directory it is added to (about 12 s for 5000
// files in one directory, 4.6 s for 3000), which only matters for caches
// of thousands of blobs.
//
// # Streaming
//
// File content is copied in 4 MiB reads and writes (style.md §5.9); go-diskfs
// turns each into one WriteAt per extent it spans. Metadata (inodes,
// bitmaps, directory blocks, descriptors) goes in small writes, as in any
// file system writer.
package ext4
