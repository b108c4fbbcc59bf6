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
	"runtime"
	"sync"
	"sync/atomic"
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
// The chunks are independent, so Commit's pass and the first Open's check
// after a start digest them on several cores at once (digestChunks). An
// asset written by Write is hashed inline as it is written: handing each
// chunk to another goroutine (a copy of it, two chunk buffers per writer)
// cost 17 % more CPU for a 68 MiB stream and gained no wall time on a
// shared 2-core machine under load, so it was not kept; it can only win
// where a core is idle while the writer works.
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
//
// Without the content's sha256 (Commit, the first Open after a start) the
// chunks are independent, and their data is digested on up to
// digestWorkers cores at once (see digestChunks); the content's sha256 is
// one sequential chain through every byte, holes included, and runs on one.
func digest(ctx context.Context, f *os.File, size int64, wantSHA, wantETag bool) (digests, error) {
	var (
		d   digests
		err error
	)

	if wantSHA {
		d, err = digestSequential(ctx, f, size, wantETag)
	} else {
		d, err = digestChunks(ctx, f, size, wantETag, digestWorkers())
	}

	if err != nil {
		return digests{}, err
	}

	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return digests{}, err
	}

	return d, nil
}

// maxDigestWorkers bounds the goroutines, and so the chunkSize buffers, of
// one digestChunks pass however many cores there are: past a few, reading
// the page cache is the limit, and concurrent commits share the cores.
const maxDigestWorkers = 8

// digestWorkers is how many chunks digestChunks digests at once.
func digestWorkers() int { return min(runtime.GOMAXPROCS(0), maxDigestWorkers) }

// zeroChunk is the digest of n zero bytes: a hole's, known without reading
// it. A pass computes it for two sizes at most (whole chunks and the last).
type zeroChunk struct {
	n   int64
	crc uint32
	sum [sha256.Size]byte
}

func (z *zeroChunk) of(n int64) *zeroChunk {
	if z.n != n {
		zeros := make([]byte, n)
		*z = zeroChunk{n: n, crc: crc32.Checksum(zeros, castagnoli), sum: sha256.Sum256(zeros)}
	}

	return z
}

// digestChunks is digest without the content's sha256. It maps the holes
// first (a few lseeks: one pair per data extent), then digests the chunks
// that hold data on up to workers goroutines (the caller's among them), each reading its chunk
// with pread into a buffer of its own, and writes every chunk's CRC and
// SHA-256 into its own slot, so the results are in chunk order whoever
// computed them. The ETag's outer hash then runs over the slots in order:
// the same bytes as one goroutine gives. A file with one chunk of data is
// digested on the caller's goroutine alone.
//
// Memory: one chunkSize buffer per worker, and 36 bytes per chunk (its CRC,
// which the metadata records anyway, and its SHA-256): 36 KiB for a 1 GiB
// asset.
func digestChunks(ctx context.Context, f *os.File, size int64, wantETag bool, workers int) (digests, error) {
	chunks := (size + chunkSize - 1) / chunkSize
	crcs := make([]byte, 4*chunks)

	var sums []byte
	if wantETag {
		sums = make([]byte, sha256.Size*chunks)
	}

	var (
		data []int64 // the chunks that hold data
		zero zeroChunk
		ext  = &extents{f: f, size: size}
	)

	for i := range chunks {
		off := i * chunkSize
		n := min(chunkSize, size-off)

		hole, err := ext.hole(off, n)
		if err != nil {
			return digests{}, fmt.Errorf("map the extents: %w", err)
		}

		if !hole {
			data = append(data, i)

			continue
		}

		z := zero.of(n)
		binary.BigEndian.PutUint32(crcs[4*i:], z.crc)

		if sums != nil {
			copy(sums[sha256.Size*i:], z.sum[:])
		}
	}

	// One chunk to read: no goroutine to start.
	workers = min(workers, len(data))

	var (
		next   atomic.Int64 // the index into data of the next chunk to take
		failed atomic.Bool
		errMu  sync.Mutex
		first  error
		wg     sync.WaitGroup
	)

	work := func() {
		buf := make([]byte, chunkSize)
		leaf := sha256.New()

		for !failed.Load() {
			k := next.Add(1) - 1
			if k >= int64(len(data)) {
				return
			}

			err := ctx.Err()
			if err == nil {
				err = digestChunk(f, size, data[k], buf, leaf, crcs, sums)
			}

			if err != nil {
				errMu.Lock()
				if first == nil {
					first = err
				}
				errMu.Unlock()
				failed.Store(true)

				return
			}
		}
	}

	for range workers - 1 {
		wg.Go(work)
	}

	work()
	wg.Wait()

	if first != nil {
		return digests{}, first
	}

	if err := ctx.Err(); err != nil { // a file that is all holes checks only here
		return digests{}, err
	}

	d := digests{crcs: crcs}

	if sums != nil {
		tree := newChunkTree()
		for i := range chunks {
			tree.add(sums[sha256.Size*i : sha256.Size*(i+1)])
		}

		d.etag = tree.etag(size)
	}

	return d, nil
}

// digestChunk reads chunk i of f into buf and writes its CRC into crcs and,
// if sums is not nil, its SHA-256 into sums, computed with leaf.
func digestChunk(f *os.File, size, i int64, buf []byte, leaf hash.Hash, crcs, sums []byte) error {
	off := i * chunkSize
	chunk := buf[:min(chunkSize, size-off)]

	if _, err := f.ReadAt(chunk, off); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF // the file shrank under us
		}

		return err
	}

	binary.BigEndian.PutUint32(crcs[4*i:], crc32.Checksum(chunk, castagnoli))

	if sums != nil {
		leaf.Reset()
		leaf.Write(chunk)
		leaf.Sum(sums[sha256.Size*i : sha256.Size*i : sha256.Size*(i+1)])
	}

	return nil
}

// digestSequential is digest with the content's sha256, one chunk after
// the other.
func digestSequential(ctx context.Context, f *os.File, size int64, wantETag bool) (digests, error) {
	h := sha256.New()

	var (
		tree *chunkTree
		leaf hash.Hash
	)

	if wantETag {
		tree, leaf = newChunkTree(), sha256.New()
	}

	buf := make([]byte, chunkSize)
	crcs := make([]byte, 0, 4*((size+chunkSize-1)/chunkSize))
	ext := &extents{f: f, size: size}

	var (
		zero  zeroChunk
		zeros []byte
	)

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
			if zeros == nil {
				zeros = make([]byte, chunkSize)
			}

			z := zero.of(n)
			chunk, crc = zeros[:n], z.crc

			if tree != nil {
				tree.add(z.sum[:])
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

		h.Write(chunk)
		crcs = binary.BigEndian.AppendUint32(crcs, crc)
	}

	d := digests{crcs: crcs, sha256: hex.EncodeToString(h.Sum(nil))}

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
