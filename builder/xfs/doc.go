// Package xfs writes the BOOT partition of Talos's GRUB and dual-boot disk
// images: an XFS v5 file system labelled BOOT holding A/vmlinuz,
// A/initramfs.xz and grub/, in pure Go (no Go library writes XFS).
//
// Talos makes this partition with
//
//	mkfs.xfs -n ftype=1 -c options=<lts config> -f -L BOOT [-s size=<sector>] \
//	  -p file=<protofile> -m uuid=<GUIDFromLabel("BOOT")> BOOT.img
//
// (talos-formats.md §4.3). This package lays the file system out as that
// call does for a regular image file (not a solid-state block device, so
// mkfs's concurrency sizing stays off):
//
//   - 4 KiB blocks, 512-byte inodes, 512- or 4096-byte sectors; four
//     allocation groups of ceil(blocks/4) (a last one under 16 MiB dropped);
//     a 64 MiB internal log at the start of the middle AG's free space; the
//     AG headers, B+tree roots and a 4- or 6-block AGFL at the fixed places
//     mkfs puts them; the root inode where xfs_ialloc_calc_rootino expects
//     it (inode 128, or 96 without sparse inodes on 4Kn), with the realtime
//     bitmap and summary inodes beside it; secondary superblocks as mkfs
//     leaves them (TestMkfsGeometry compares every superblock field and the
//     AG headers with Debian's mkfs.xfs).
//   - Label and UUID from Options (default BOOT and
//     disk.GUIDFromLabel("BOOT") = 24c73076-4092-85dd-9d98-686a2dbf6d81).
//   - Features from the xfsprogs config file Talos passes (ForConfig with
//     quirks.New(version).XFSMkfsConfig()): crc, ftype, finobt, rmapbt,
//     reflink (an empty refcount B+tree), inobtcount, bigtime, sparse
//     inodes, nrext64, exchange. Parent pointers (lts_6.18.conf parent=1)
//     are left off; see Features.
//   - A clean log: zeros with one record at its start holding an unmount
//     record, byte for byte what mkfs writes.
//
// What it writes: directories in short form while they fit in the inode,
// then as one directory block, then as data blocks plus one leaf block (a
// directory of about 500 entries or more, which would need the node form,
// is refused); regular files as one contiguous extent each (split only at
// AG ends and around the log); all inodes in full 64-inode chunks in AG 0;
// the free-space, inode, free-inode and reverse-mapping B+trees with every
// CRC. All timestamps are Options.Time, owner and group 0; the output is a
// function of the input only.
//
// # Sparse and streaming
//
// Only metadata blocks and file contents are written (all-zero 4 MiB
// chunks of content skipped too): the log, free space and unused inode
// space stay holes. File contents stream from File.Open in 4 MiB reads,
// each file once, in the order they lie on disk; metadata is a few hundred
// KiB. A 2000 MiB BOOT with 110 MiB of files writes 110.7 MiB.
//
// # Errors
//
// NewPlan (which Write and Build call first) checks everything about the
// input before anything is written: paths (clean, no "." or "..", names of
// at most 255 bytes, no NUL), duplicates, sizes, the label, the sector
// size, and whether the files fit (ErrInvalid, ErrNoSpace). A file whose
// content is shorter or longer than its declared size fails the write.
//
// # Checks
//
// xfs_repair -n (xfsprogs 6.1, Debian 12) finds every feature set Talos uses
// clean at both sector sizes; xfs_db reads the label, UUID, files and
// extents; xfs_repair rebuilding the AG B+trees derives exactly our
// reverse mappings and free-block counts (TestRebuild); the kernel mounts
// and reads the image and writes to it (an upgrade's worth), after which
// xfs_repair -n is still clean: Debian's Linux 6.1 in QEMU (make e2e) and
// the host kernel on a loop device (as root, including lts_6.18's exchange
// bit, which xfsprogs 6.1 does not know); a fuzzer checks arbitrary trees
// against the package's own reader.
package xfs
