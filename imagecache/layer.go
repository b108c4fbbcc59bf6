package imagecache

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
	"hash/crc32"
	"io"
	"sync"
	"sync/atomic"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-dev/kiln/internal/layerfile"
)

// The layer is a gzip stream of stored (uncompressed) deflate blocks: the
// tree is compressed layers, which deflate does not shrink (BestSpeed cost
// a core for 0.1 %), and stored blocks are a copy with a 5-byte header per
// 64 KiB, which any gzip reader takes.
var gzipHeader = []byte{0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff} // no name, no mtime, OS unknown

// maxStored is the largest stored deflate block (LEN is 16 bits).
const maxStored = 1<<16 - 1

// layerBlocks is how many tar blocks are in flight.
const layerBlocks = 8

// tarBlock is chunk bytes of the tar, read by the diffID hash and the
// framer, and free again when both are done.
type tarBlock struct {
	b    []byte
	refs atomic.Int32
}

// layerWriter turns the tar stream (its Write) into the layer blob. Its
// stages run on their own goroutines, so that the two sha256s (of the tar,
// the diffID; of the gzip stream, the digest) and the file writes use both
// cores and overlap:
//
//	Write ─┬─ diffID sha256
//	       └─ framer (crc32, stored blocks) ── digest sha256 ── out
type layerWriter struct {
	free    chan *tarBlock
	toDiff  chan *tarBlock
	toFrame chan *tarBlock
	cur     *tarBlock
	wg      sync.WaitGroup

	mu  sync.Mutex
	err error

	diff   hash.Hash
	digest hash.Hash
	size   int64
}

// newLayerWriter writes the layer to out in chunk-sized writes of buffers
// from pool (aligned, so an outFile writes them directly).
func newLayerWriter(out io.Writer, pool *chunks) *layerWriter {
	lw := &layerWriter{
		free:    make(chan *tarBlock, layerBlocks),
		toDiff:  make(chan *tarBlock, layerBlocks),
		toFrame: make(chan *tarBlock, layerBlocks),
		diff:    sha256.New(),
		digest:  sha256.New(),
	}

	for range layerBlocks {
		lw.free <- &tarBlock{b: make([]byte, 0, chunk)}
	}

	toHash := make(chan []byte, layerBlocks)
	toWrite := make(chan []byte, layerBlocks)

	lw.wg.Go(func() {
		for blk := range lw.toDiff {
			lw.diff.Write(blk.b)
			lw.release(blk)
		}
	})

	lw.wg.Go(func() {
		f := &framer{pool: pool, out: toHash}
		for blk := range lw.toFrame {
			f.frame(blk.b)
			lw.release(blk)
		}

		f.close()
		close(toHash)
	})

	lw.wg.Go(func() {
		for b := range toHash {
			lw.digest.Write(b)
			lw.size += int64(len(b))
			toWrite <- b
		}

		close(toWrite)
	})

	lw.wg.Go(func() {
		for b := range toWrite {
			if lw.failed() == nil {
				if _, err := out.Write(b); err != nil {
					lw.fail(err)
				}
			}

			pool.put(b[:chunk])
		}
	})

	return lw
}

func (lw *layerWriter) fail(err error) {
	lw.mu.Lock()
	defer lw.mu.Unlock()

	if lw.err == nil {
		lw.err = err
	}
}

func (lw *layerWriter) failed() error {
	lw.mu.Lock()
	defer lw.mu.Unlock()

	return lw.err
}

func (lw *layerWriter) release(blk *tarBlock) {
	if blk.refs.Add(-1) == 0 {
		lw.free <- blk
	}
}

func (lw *layerWriter) Write(p []byte) (int, error) {
	if err := lw.failed(); err != nil {
		return 0, err
	}

	n := len(p)

	for len(p) > 0 {
		if lw.cur == nil {
			lw.cur = <-lw.free
			lw.cur.b = lw.cur.b[:0]
		}

		if p = fill(&lw.cur.b, p); len(lw.cur.b) == cap(lw.cur.b) {
			lw.send()
		}
	}

	return n, nil
}

func (lw *layerWriter) send() {
	blk := lw.cur
	lw.cur = nil
	blk.refs.Store(2)
	lw.toDiff <- blk
	lw.toFrame <- blk
}

// Close flushes the pipeline and returns what it learned of the layer.
// The sums are only valid if Close returns no error.
func (lw *layerWriter) Close() (layerfile.Sums, error) {
	if lw.cur != nil && len(lw.cur.b) > 0 {
		lw.send()
	}

	close(lw.toDiff)
	close(lw.toFrame)
	lw.wg.Wait()

	if err := lw.failed(); err != nil {
		return layerfile.Sums{}, err
	}

	return layerfile.Sums{
		Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(lw.digest.Sum(nil))},
		DiffID: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(lw.diff.Sum(nil))},
		Size:   lw.size,
	}, nil
}

// fill appends to *b as much of p as its capacity takes and returns the
// rest of p.
func fill(b *[]byte, p []byte) []byte {
	n := len(*b)
	k := copy((*b)[n:cap(*b)], p)
	*b = (*b)[:n+k]

	return p[k:]
}

// framer writes a gzip stream of stored deflate blocks into chunk-sized
// buffers and sends each one, full, to out (the last one short).
type framer struct {
	pool    *chunks
	out     chan<- []byte
	buf     []byte
	crc     uint32
	size    uint32 // ISIZE: the input size mod 2^32
	started bool
}

func (f *framer) put(p []byte) {
	for len(p) > 0 {
		if f.buf == nil {
			f.buf = f.pool.get()[:0]
		}

		if p = fill(&f.buf, p); len(f.buf) == cap(f.buf) {
			f.out <- f.buf
			f.buf = nil
		}
	}
}

// frame appends p as stored blocks.
func (f *framer) frame(p []byte) {
	if !f.started {
		f.put(gzipHeader)
		f.started = true
	}

	f.crc = crc32.Update(f.crc, crc32.IEEETable, p)
	f.size += uint32(len(p))

	for len(p) > 0 {
		n := min(len(p), maxStored)
		h := storedHeader(false, n)
		f.put(h[:])
		f.put(p[:n])
		p = p[n:]
	}
}

// close ends the deflate stream with an empty final block, writes the gzip
// trailer and sends the last buffer.
func (f *framer) close() {
	if !f.started {
		f.put(gzipHeader)
	}

	h := storedHeader(true, 0)
	f.put(h[:])

	var trailer [8]byte
	binary.LittleEndian.PutUint32(trailer[:4], f.crc)
	binary.LittleEndian.PutUint32(trailer[4:], f.size)
	f.put(trailer[:])

	if len(f.buf) > 0 {
		f.out <- f.buf
		f.buf = nil
	}
}

// storedHeader is a stored block's header: BFINAL, BTYPE 00 and the
// padding to the byte boundary in one byte (the stream is byte-aligned
// between stored blocks), then LEN and NLEN.
func storedHeader(final bool, n int) [5]byte {
	h := [5]byte{0, byte(n), byte(n >> 8), ^byte(n), ^byte(n >> 8)}
	if final {
		h[0] = 1
	}

	return h
}
