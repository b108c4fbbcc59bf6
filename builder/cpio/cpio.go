// Package cpio reads and writes SVR4 "newc" cpio archives (magic "070701"),
// the only format the Linux kernel unpacks as an initramfs, and splits a
// concatenated initramfs into its segments.
//
// The writer is streaming and deterministic: it never looks at the clock
// or the file system, numbers inodes itself, and pads the archive to a
// 512-byte block like GNU cpio, so the same headers and data always give
// the same bytes. The reader accepts "070701" and "070702" (the CRC
// variant, whose checksum it does not verify) and stops at the trailer.
package cpio

import (
	"errors"
	"io/fs"
	"time"
)

// File type bits of Header.Mode, as in <sys/stat.h>; newc stores them in
// the mode field next to the permission bits.
const (
	TypeMask    = 0o170000
	TypeReg     = 0o100000
	TypeDir     = 0o040000
	TypeSymlink = 0o120000
	TypeChar    = 0o020000
	TypeBlock   = 0o060000
	TypeFifo    = 0o010000
	TypeSocket  = 0o140000
)

// Trailer is the name of the entry that ends an archive.
const Trailer = "TRAILER!!!"

const (
	magicNewc    = "070701"
	magicNewcCRC = "070702"
	headerLen    = 110
	// blockSize is the unit GNU cpio pads a whole archive to; the kernel
	// skips the zeros between concatenated segments.
	blockSize = 512
	// maxNameLen bounds a header's name so that a corrupt archive cannot
	// make the reader allocate gigabytes; Linux paths are at most 4096.
	maxNameLen = 64 << 10
)

// ErrFormat is wrapped by every error about malformed input.
var ErrFormat = errors.New("cpio: malformed archive")

// Header is one archive entry. Mode holds both the type bits (TypeReg,
// TypeDir, ...) and the permission bits; a Mode without type bits is a
// regular file when written. Size is the data length of a regular file
// and is ignored for other types (a symlink's data is Linkname).
type Header struct {
	Name     string
	Mode     uint32
	UID, GID uint32
	ModTime  time.Time
	Size     int64
	Linkname string
	// Nlink, Inode and the device numbers are filled in by the reader; the
	// writer computes Nlink and Inode itself and takes the device numbers
	// as given.
	Nlink                uint32
	Inode                uint32
	DevMajor, DevMinor   uint32
	RDevMajor, RDevMinor uint32
}

// FileMode converts Mode to an fs.FileMode.
func (h *Header) FileMode() fs.FileMode {
	m := fs.FileMode(h.Mode & 0o777)
	if h.Mode&0o4000 != 0 {
		m |= fs.ModeSetuid
	}

	if h.Mode&0o2000 != 0 {
		m |= fs.ModeSetgid
	}

	if h.Mode&0o1000 != 0 {
		m |= fs.ModeSticky
	}

	switch h.Mode & TypeMask {
	case TypeDir:
		m |= fs.ModeDir
	case TypeSymlink:
		m |= fs.ModeSymlink
	case TypeChar:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case TypeBlock:
		m |= fs.ModeDevice
	case TypeFifo:
		m |= fs.ModeNamedPipe
	case TypeSocket:
		m |= fs.ModeSocket
	}

	return m
}

// pad4 is how many zero bytes bring n to a multiple of 4.
func pad4(n int64) int64 { return (4 - n%4) % 4 }
