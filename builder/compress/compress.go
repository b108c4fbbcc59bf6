package compress

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
	"golang.org/x/sync/errgroup"
)

// Format is a compression format, named by its file extension.
type Format string

// Formats.
const (
	Zstd Format = "zst"
	XZ   Format = "xz"
)

// ErrUnknownFormat is returned for a Format that is not Zstd or XZ.
var ErrUnknownFormat = errors.New("compress: unknown format")

// Defaults; README.md has the measurements behind them.
const (
	// DefaultZstdLevel: klauspost's "better" level, about `zstd -3`'s ratio
	// (Talos uses -18, 30× slower). Its best level gained 0.03–0.3 % of
	// output on disk images for 3× the CPU and two 34 MiB match tables per
	// encoder, which put a .raw.zst build of kiln serve past 256 MiB of RSS
	// (README.md).
	DefaultZstdLevel = zstd.SpeedBetterCompression
	// DefaultBlockSize is the largest input of one independently compressed
	// unit: an xz block. `xz -T0 -6` uses 24 MiB (3 × its dictionary); 16 MiB
	// costs nothing measurable on disk images and keeps memory at about
	// 2 × (Concurrency+1) × 16 MiB plus the encoders.
	DefaultBlockSize = 16 << 20
	// DefaultZstdBlockSize is a zstd frame's: each of the Concurrency+1
	// blocks in flight holds an input and an output buffer of it, and each
	// encoder a history as large; 8 MiB frames (the encoder's window is
	// 8 MiB either way) cost 0.01–0.06 % of output against 16 MiB (README.md).
	DefaultZstdBlockSize = 8 << 20

	segment = 1 << 20 // classification granularity
	// storedRatio: an xz segment that zstd's fastest level cannot shrink
	// below this fraction is stored instead of LZMA-compressed (compressed
	// kernels, initramfs, squashfs); LZMA would gain at most a few per cent
	// there, at ~1 MB/s per core.
	storedRatio = 0.97
	writeBuffer = 1 << 20
)

// Options tune compression. The zero value is the default.
type Options struct {
	// Concurrency is the number of compressing goroutines; 0 = GOMAXPROCS.
	Concurrency int
	// ZstdLevel; 0 = DefaultZstdLevel.
	ZstdLevel zstd.EncoderLevel
	// BlockSize (rounded down to a MiB multiple); 0 = DefaultZstdBlockSize
	// or DefaultBlockSize.
	BlockSize int
}

// Ext returns the file extension with its dot, e.g. ".zst".
func (f Format) Ext() string { return "." + string(f) }

// Compress reads src to EOF and writes it to dst compressed in format f.
// Memory is bounded by Concurrency+1 input and output buffers of BlockSize
// plus one encoder per goroutine, whatever the input size (zstd: about
// 100 MiB with the defaults on 2 cores).
//
// If src is a regular *os.File it is read from its current offset with
// SEEK_DATA/SEEK_HOLE: holes are not read, and an all-zero block is
// compressed once per call and its encoding reused. dst is not closed; when
// Compress fails, what was written to dst is garbage.
func Compress(ctx context.Context, dst io.Writer, src io.Reader, f Format, opts Options) error {
	if opts.Concurrency <= 0 {
		opts.Concurrency = runtime.GOMAXPROCS(0)
	}
	if opts.BlockSize <= 0 {
		opts.BlockSize = DefaultBlockSize
		if f == Zstd {
			opts.BlockSize = DefaultZstdBlockSize
		}
	}
	opts.BlockSize = max(opts.BlockSize, segment) / segment * segment
	if opts.ZstdLevel == 0 {
		opts.ZstdLevel = DefaultZstdLevel
	}
	var c codec
	switch f {
	case Zstd:
		c = &zstdCodec{level: opts.ZstdLevel}
	case XZ:
		c = &xzCodec{}
	default:
		return fmt.Errorf("%w %q", ErrUnknownFormat, f)
	}
	if err := run(ctx, dst, newSource(src), opts, c); err != nil {
		return fmt.Errorf("compress %s: %w", f, err)
	}
	return nil
}

// class of an input segment or block.
type class int

const (
	classData   class = iota // compress
	classStored              // incompressible: store (xz only)
	classZero                // all zeros: encoded once per length
)

// codec encodes independent blocks of one format.
type codec interface {
	// probe reports whether segments are classified as stored when they do
	// not compress (see storedRatio).
	probe() bool
	newWorker() (worker, error)
	header() []byte
	// writeBlock writes an encoded block and returns its index record.
	writeBlock(w io.Writer, b *block) error
	trailer(blocks []block) []byte
}

type worker interface {
	// encode fills b.enc (and b.check) from b.in[:b.n]; it may reuse b.enc's
	// capacity.
	encode(b *block) error
	// encodeZero is encode for b.n zero bytes (b.in is nil).
	encodeZero(b *block) error
	close()
}

// block is one unit of work.
type block struct {
	class class
	in    []byte // input buffer (nil for classZero)
	n     int    // input length
	enc   []byte // encoded output to write (in buf, or shared from the zero cache; unused for classStored in xz: the LZMA2 framing is added while writing)
	buf   []byte // output buffer owned by the block, reused
	crc   uint64 // xz check
	dict  byte   // xz LZMA2 dictionary-size property
	// index record (xz)
	unpadded, uncompressed uint64
	err                    error
	done                   chan struct{}
}

// zeroCache encodes the all-zero block of each length once.
type zeroCache struct {
	mu sync.Mutex
	m  map[int]*zeroEntry
}

type zeroEntry struct {
	once sync.Once
	b    block
	err  error
}

func (z *zeroCache) get(w worker, n int) (block, error) {
	z.mu.Lock()
	e := z.m[n]
	if e == nil {
		e = &zeroEntry{}
		z.m[n] = e
	}
	z.mu.Unlock()
	e.once.Do(func() {
		e.b = block{class: classZero, n: n}
		e.err = w.encodeZero(&e.b)
		e.b.in, e.b.enc, e.b.buf = nil, bytes.Clone(e.b.enc), nil
	})
	return e.b, e.err
}

func run(ctx context.Context, dst io.Writer, src *source, opts Options, c codec) error {
	bs, nw := opts.BlockSize, opts.Concurrency
	var probe *zstd.Encoder
	if c.probe() {
		var err error
		probe, err = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		defer probe.Close()
	}
	workers := make([]worker, nw)
	for i := range workers {
		w, err := c.newWorker()
		if err != nil {
			for _, w := range workers[:i] {
				w.close()
			}
			return err
		}
		workers[i] = w
	}
	g, ctx := errgroup.WithContext(ctx)
	jobs := make(chan *block)
	ordered := make(chan *block, nw)
	// Blocks in flight: nw+1 (being filled, encoded or written), recycled
	// through free.
	free := make(chan *block, nw+1)
	for range nw + 1 {
		free <- &block{}
	}
	zeros := &zeroCache{m: map[int]*zeroEntry{}}

	// Reader: classify segments and group runs of one class into blocks.
	g.Go(func() error {
		defer close(jobs)
		defer close(ordered)
		seg := make([]byte, segment)
		var probeOut []byte
		var cur *block
		emit := func() error {
			if cur == nil {
				return nil
			}
			b := cur
			cur = nil
			for _, ch := range []chan *block{ordered, jobs} {
				select {
				case ch <- b:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		}
		for {
			n, zero, err := src.next(seg)
			if err != nil {
				return fmt.Errorf("reading: %w", err)
			}
			if n == 0 {
				return emit()
			}
			cl := classZero
			if !zero && !isZero(seg[:n]) {
				cl = classData
				if probe != nil {
					probeOut = probe.EncodeAll(seg[:n], probeOut[:0])
					if float64(len(probeOut)) >= storedRatio*float64(n) {
						cl = classStored
					}
				}
			}
			if cur != nil && (cur.class != cl || cur.n+n > bs) {
				if err := emit(); err != nil {
					return err
				}
			}
			if cur == nil {
				select {
				case cur = <-free:
				case <-ctx.Done():
					return ctx.Err()
				}
				*cur = block{class: cl, in: cur.in, buf: cur.buf, done: make(chan struct{})}
				if cl != classZero && cur.in == nil {
					cur.in = make([]byte, bs)
				}
			}
			if cl != classZero {
				copy(cur.in[cur.n:], seg[:n])
			}
			cur.n += n
		}
	})
	// Encoders.
	for _, w := range workers {
		g.Go(func() error {
			defer w.close()
			for b := range jobs {
				if b.class == classZero {
					var z block
					z, b.err = zeros.get(w, b.n)
					b.enc, b.crc, b.dict, b.unpadded, b.uncompressed = z.enc, z.crc, z.dict, z.unpadded, z.uncompressed
				} else {
					b.err = w.encode(b)
				}
				close(b.done)
			}
			return nil
		})
	}
	// Writer: in input order.
	g.Go(func() error {
		bw := bufio.NewWriterSize(dst, writeBuffer)
		if _, err := bw.Write(c.header()); err != nil {
			return err
		}
		var index []block
		for b := range ordered {
			select {
			case <-b.done:
			case <-ctx.Done():
				return ctx.Err()
			}
			if b.err != nil {
				return b.err
			}
			if err := c.writeBlock(bw, b); err != nil {
				return fmt.Errorf("writing: %w", err)
			}
			index = append(index, block{unpadded: b.unpadded, uncompressed: b.uncompressed})
			b.enc = nil
			free <- b
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := bw.Write(c.trailer(index)); err != nil {
			return fmt.Errorf("writing: %w", err)
		}
		if err := bw.Flush(); err != nil {
			return fmt.Errorf("writing: %w", err)
		}
		return nil
	})
	return g.Wait()
}

// zstdCodec writes one zstd frame per block; concatenated frames are one
// valid .zst (RFC 8878 §3.1), decoded by `zstd -d` and every library.
type zstdCodec struct{ level zstd.EncoderLevel }

func (*zstdCodec) probe() bool            { return false }
func (*zstdCodec) header() []byte         { return nil }
func (*zstdCodec) trailer([]block) []byte { return nil }

func (z *zstdCodec) newWorker() (worker, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(z.level), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	return zstdWorker{enc}, nil
}

func (*zstdCodec) writeBlock(w io.Writer, b *block) error {
	_, err := w.Write(b.enc)
	return err
}

type zstdWorker struct{ enc *zstd.Encoder }

func (w zstdWorker) encode(b *block) error {
	if need := w.enc.MaxEncodedSize(b.n); cap(b.buf) < need {
		b.buf = make([]byte, 0, need)
	}
	b.buf = w.enc.EncodeAll(b.in[:b.n], b.buf[:0])
	b.enc = b.buf
	return nil
}

// encodeZero encodes b.n zeros into a buffer that grows as needed: zeros
// encode to a few bytes, and MaxEncodedSize would be a second block-sized
// allocation for them.
func (w zstdWorker) encodeZero(b *block) error {
	b.enc = w.enc.EncodeAll(make([]byte, b.n), nil)
	return nil
}

func (w zstdWorker) close() { w.enc.Close() }

var zeroBlock = make([]byte, segment)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroBlock))
		if !bytes.Equal(b[:n], zeroBlock[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
