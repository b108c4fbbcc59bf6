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
// never reads a hole, and never hashes one either: a disk image is a few
// hundred MiB of data in a multi-GiB sparse file. Reading its holes makes the
// kernel zero-fill gigabytes of page cache, and even hashing them as zeros
// from memory is SHA-256 over gigabytes (1.2 s of CPU for a 2 GiB disk here),
// with no shortcut: SHA-256 is one sequential chain.
//
//   - The ETag, "chunks-" and the hex SHA-256 of the SHA-256s of every
//     chunkSize piece, then a trailer with the chunk size and the content's
//     size (see chunkTree). A piece that is a hole has the SHA-256 of zeros,
//     known without hashing; a piece of data written as zeros hashes to the
//     same, so the tag is a function of the bytes alone, however they were
//     written or laid out on disk: the same bytes have the same ETag in every
//     kiln, across restarts. It is strong: a different byte changes its
//     piece's SHA-256, and so the tag. ETagOf computes it from a reader.
//   - The SHA-256 of the whole content, which the API promises where it
//     reports one (the gRPC Build's Done, an image cache's), is not computed
//     at Commit: Asset.SHA256 computes it the first time it is asked, holes
//     hashed as the zeros they read as, and records it beside the asset. A
//     download over HTTP never asks for it.
//   - The CRC-32C of every chunkSize piece, recorded beside it: Open checks
//     these, reading only the chunks that hold data (a chunk that is a hole
//     must have recorded the CRC of zeros, which costs nothing to check).
//     CRC-32C detects every error burst of up to 32 bits in a chunk (a
//     flipped byte always) and any other corruption but for a 2^-32 chance;
//     it runs at memory speed, where checking the pieces' SHA-256s would
//     cost the hashing of every asset again at each start.
//
// Why not the content's SHA-256 as the ETag, computed in the background
// after Commit: the first responses would go out without a validator (no
// resumable download of a fresh build), a restart would lose the work, and
// the CPU would still be spent for every disk whether anyone asks or not.
const chunkSize = 1 << 20

// etagPrefix marks the ETag as a digest of chunks, so nobody takes it for
// the sha256sum of the file.
const etagPrefix = "chunks-"

// chunkTreeTrailer ends the input of the ETag's outer SHA-256, before the
// chunk size and the content size (8 bytes big-endian each).
const chunkTreeTrailer = "kiln asset chunks v1"

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

// chunkTree is the ETag's outer hash, fed one chunk's SHA-256 at a time.
type chunkTree struct {
	outer hash.Hash
	buf   [sha256.Size]byte
}

func newChunkTree() *chunkTree { return &chunkTree{outer: sha256.New()} }

func (t *chunkTree) add(chunkSum []byte) { t.outer.Write(chunkSum) }

// addLeaf adds the sum of a chunk's hash.
func (t *chunkTree) addLeaf(leaf hash.Hash) { t.outer.Write(leaf.Sum(t.buf[:0])) }

func (t *chunkTree) etag(size int64) string {
	t.outer.Write([]byte(chunkTreeTrailer))
	t.outer.Write(binary.BigEndian.AppendUint64(binary.BigEndian.AppendUint64(nil, chunkSize), uint64(size))) //nolint:gosec // sizes are not negative

	return etagPrefix + hex.EncodeToString(t.outer.Sum(nil))
}

// digests are what one pass over an asset's content gives.
type digests struct {
	sha256 string // empty unless asked for
	etag   string // empty unless asked for
	crcs   []byte
}

// digest is one pass over f: the big-endian CRC-32C of each chunk, and the
// ETag and the sha256 of the content when asked for. It leaves f's offset
// at 0.
func digest(ctx context.Context, f *os.File, size int64, wantSHA, wantETag bool) (digests, error) {
	var (
		h    hash.Hash
		tree *chunkTree
		leaf hash.Hash
	)

	if wantSHA {
		h = sha256.New()
	}

	if wantETag {
		tree, leaf = newChunkTree(), sha256.New()
	}

	buf := make([]byte, chunkSize)
	zeros := make([]byte, chunkSize)
	zeroCRC := map[int64]uint32{}
	zeroSum := map[int64][]byte{}
	crcs := make([]byte, 0, 4*((size+chunkSize-1)/chunkSize))
	ext := &extents{f: f, size: size}

	for off := int64(0); off < size; off += chunkSize {
		if err := ctx.Err(); err != nil {
			return digests{}, err
		}

		n := min(chunkSize, size-off)

		hole, err := ext.hole(off, n)
		if err != nil {
			return digests{}, fmt.Errorf("map the extents: %w", err)
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

			if tree != nil {
				sum, ok := zeroSum[n]
				if !ok {
					s := sha256.Sum256(chunk)
					sum = s[:]
					zeroSum[n] = sum
				}

				tree.add(sum)
			}
		} else {
			if _, err := f.ReadAt(buf[:n], off); err != nil {
				if errors.Is(err, io.EOF) {
					err = io.ErrUnexpectedEOF // the file shrank under us
				}

				return digests{}, err
			}

			chunk = buf[:n]
			crc = crc32.Checksum(chunk, castagnoli)

			if tree != nil {
				leaf.Reset()
				leaf.Write(chunk)
				tree.addLeaf(leaf)
			}
		}

		if h != nil {
			h.Write(chunk)
		}

		crcs = binary.BigEndian.AppendUint32(crcs, crc)
	}

	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return digests{}, err
	}

	d := digests{crcs: crcs}

	if h != nil {
		d.sha256 = hex.EncodeToString(h.Sum(nil))
	}

	if tree != nil {
		d.etag = tree.etag(size)
	}

	return d, nil
}

// streamDigest is digest computed from the bytes of sequential writes, for
// an asset written only by Write: nothing is read back at Commit. It gives
// the ETag and the CRCs, not the content's sha256 (see chunkSize).
type streamDigest struct {
	tree    *chunkTree
	leaf    hash.Hash
	crcs    []byte
	crc     uint32
	inChunk int
	n       int64
}

func newStreamDigest() *streamDigest {
	return &streamDigest{tree: newChunkTree(), leaf: sha256.New()}
}

func (s *streamDigest) Write(p []byte) (int, error) {
	s.n += int64(len(p))
	written := len(p)

	for len(p) > 0 {
		k := min(len(p), chunkSize-s.inChunk)
		s.crc = crc32.Update(s.crc, castagnoli, p[:k])
		s.leaf.Write(p[:k])
		s.inChunk += k
		p = p[k:]

		if s.inChunk == chunkSize {
			s.endChunk()
		}
	}

	return written, nil
}

func (s *streamDigest) endChunk() {
	s.crcs = binary.BigEndian.AppendUint32(s.crcs, s.crc)
	s.tree.addLeaf(s.leaf)
	s.leaf.Reset()
	s.crc, s.inChunk = 0, 0
}

func (s *streamDigest) sum() digests {
	if s.inChunk > 0 {
		s.endChunk()
	}

	return digests{etag: s.tree.etag(s.n), crcs: s.crcs}
}

// ETagOf is the ETag of the content r reads (without the quotes HTTP puts
// around it): what a client can check a download against.
func ETagOf(r io.Reader) (string, error) {
	s := newStreamDigest()
	if _, err := io.CopyBuffer(s, r, make([]byte, chunkSize)); err != nil {
		return "", err
	}

	return s.sum().etag, nil
}

// stamp is what changes when a file is written, replaced or truncated: an
// entry verified under one stamp is trusted while the stamp stays.
type stamp struct {
	dev, ino     uint64
	size         int64
	mtime, ctime int64
}
