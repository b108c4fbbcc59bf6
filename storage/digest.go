package storage

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"syscall"
)

// Digests of a committed asset, computed once at Commit in one pass that
// never reads a hole: a disk image is a few hundred MiB of data in a
// multi-GiB sparse file, and reading its holes makes the kernel zero-fill
// gigabytes of page cache.
//
//   - sha256 of the whole content (holes hashed as the zeros they read as,
//     from memory): the ETag and the digest the API reports, the same value
//     `sha256sum` gives.
//   - the CRC-32C of every chunkSize piece, recorded beside it: Open checks
//     these, reading only the chunks that hold data (a chunk that is a hole
//     must have recorded the CRC of zeros, which costs nothing to check).
//     CRC-32C detects every error burst of up to 32 bits in a chunk (a
//     flipped byte always) and any other corruption but for a 2^-32 chance;
//     it runs at memory speed, where a second sha256 would double the
//     hashing of every asset.
const chunkSize = 1 << 20

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// whence values of lseek(2) that os does not name.
const (
	seekData = 3 // SEEK_DATA
	seekHole = 4 // SEEK_HOLE
)

// extents walks the data extents of a file; where the file system cannot
// say (no SEEK_DATA), the whole file is data.
type extents struct {
	f           *os.File
	size        int64
	start, end  int64 // the current data extent, or start == size past the last one
	unsupported bool
}

// hole reports whether [off, off+n) is entirely a hole. Calls come with
// off ascending.
func (e *extents) hole(off, n int64) (bool, error) {
	if e.unsupported {
		return false, nil
	}

	if off >= e.end {
		start, err := e.f.Seek(off, seekData)

		switch {
		case errors.Is(err, syscall.ENXIO): // no data from off to the end
			e.start, e.end = e.size, e.size
		case errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.EOPNOTSUPP):
			e.unsupported = true

			return false, nil
		case err != nil:
			return false, err
		default:
			end, err := e.f.Seek(start, seekHole)
			if err != nil {
				return false, err
			}

			e.start, e.end = start, end
		}
	}

	return e.start >= off+n, nil
}

// digest is one pass over f: the sha256 of its content when sum is set, and
// the big-endian CRC-32C of each chunk. It leaves f's offset at 0.
func digest(ctx context.Context, f *os.File, size int64, sum bool) (string, []byte, error) {
	var h hash.Hash
	if sum {
		h = sha256.New()
	}

	buf := make([]byte, chunkSize)
	zeros := make([]byte, chunkSize)
	zeroCRC := map[int64]uint32{}
	crcs := make([]byte, 0, 4*((size+chunkSize-1)/chunkSize))
	ext := &extents{f: f, size: size}

	for off := int64(0); off < size; off += chunkSize {
		if err := ctx.Err(); err != nil {
			return "", nil, err
		}

		n := min(chunkSize, size-off)

		hole, err := ext.hole(off, n)
		if err != nil {
			return "", nil, fmt.Errorf("map the extents: %w", err)
		}

		var (
			chunk []byte
			crc   uint32
		)

		if hole {
			chunk = zeros[:n]

			c, ok := zeroCRC[n]
			if !ok {
				c = crc32.Checksum(chunk, castagnoli)
				zeroCRC[n] = c
			}

			crc = c
		} else {
			if _, err := f.ReadAt(buf[:n], off); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF // the file shrank under us
				}

				return "", nil, err
			}

			chunk = buf[:n]
			crc = crc32.Checksum(chunk, castagnoli)
		}

		if h != nil {
			h.Write(chunk)
		}

		crcs = binary.BigEndian.AppendUint32(crcs, crc)
	}

	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", nil, err
	}

	if h == nil {
		return "", crcs, nil
	}

	return hex.EncodeToString(h.Sum(nil)), crcs, nil
}

// streamDigest is digest computed from the bytes of sequential writes, for
// an asset written only by Write: nothing is read back at Commit.
type streamDigest struct {
	sha     hash.Hash
	crcs    []byte
	crc     uint32
	inChunk int
	n       int64
}

func newStreamDigest() *streamDigest { return &streamDigest{sha: sha256.New()} }

func (s *streamDigest) write(p []byte) {
	s.sha.Write(p)
	s.n += int64(len(p))

	for len(p) > 0 {
		k := min(len(p), chunkSize-s.inChunk)
		s.crc = crc32.Update(s.crc, castagnoli, p[:k])
		s.inChunk += k
		p = p[k:]

		if s.inChunk == chunkSize {
			s.crcs = binary.BigEndian.AppendUint32(s.crcs, s.crc)
			s.crc, s.inChunk = 0, 0
		}
	}
}

func (s *streamDigest) sum() (string, []byte) {
	crcs := s.crcs
	if s.inChunk > 0 {
		crcs = binary.BigEndian.AppendUint32(crcs, s.crc)
	}

	return hex.EncodeToString(s.sha.Sum(nil)), crcs
}

// stamp is what changes when a file is written, replaced or truncated: an
// entry verified under one stamp is trusted while the stamp stays.
type stamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}
