package squashfs

import (
	"bytes"
	"compress/zlib"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// Compression is the superblock's compressor id.
type Compression uint16

// The compressor ids of squashfs 4.0 (squashfs_fs.h). The writer makes
// Zstd and XZ images, the only two the Talos kernel mounts
// (CONFIG_SQUASHFS_XZ=y, CONFIG_SQUASHFS_ZSTD=y, CONFIG_SQUASHFS_ZLIB unset);
// the reader also takes Gzip.
const (
	Gzip Compression = 1
	LZMA Compression = 2
	LZO  Compression = 3
	XZ   Compression = 4
	LZ4  Compression = 5
	Zstd Compression = 6
)

func (c Compression) String() string {
	switch c {
	case Gzip:
		return "gzip"
	case LZMA:
		return "lzma"
	case LZO:
		return "lzo"
	case XZ:
		return "xz"
	case LZ4:
		return "lz4"
	case Zstd:
		return "zstd"
	}

	return fmt.Sprintf("compressor %d", uint16(c))
}

// compressor compresses one data or metadata block on its own, as the
// kernel decompresses each block separately.
type compressor interface {
	// compress returns src compressed; the result may alias an internal
	// buffer that the next call reuses.
	compress(src []byte) ([]byte, error)
}

func newCompressor(c Compression, level zstd.EncoderLevel) (compressor, error) {
	switch c {
	case Zstd:
		if level == 0 {
			level = zstd.SpeedBestCompression
		}

		return newZstdCompressor(level)
	case XZ:
		return &xzCompressor{}, nil
	}

	return nil, fmt.Errorf("squashfs: cannot write %s images (zstd or xz only)", c)
}

// zstdCompressor makes one single-segment frame per block. The kernel's
// zstd_wrapper.c sizes its decompression window to max(block size, 8 KiB):
// a frame whose window descriptor asks for more fails with an I/O error.
// A single-segment frame has no window descriptor; its window is its
// content size, at most one block. klauspost's encoder would otherwise
// announce the next power of two above the input, 256 KiB for a full
// 128 KiB block.
//
// SpeedBestCompression is the strongest level the Go encoder has (its
// README likens it to zstd -11); Talos runs mksquashfs with zstd level 18,
// which no pure-Go encoder offers. No checksum, as mksquashfs writes none.
type zstdCompressor struct {
	enc *zstd.Encoder
	out []byte
}

func newZstdCompressor(level zstd.EncoderLevel) (*zstdCompressor, error) {
	enc, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(level),
		zstd.WithEncoderConcurrency(1),
		zstd.WithSingleSegment(true),
		zstd.WithEncoderCRC(false),
		zstd.WithWindowSize(blockSize))
	if err != nil {
		return nil, fmt.Errorf("squashfs: zstd: %w", err)
	}

	return &zstdCompressor{enc: enc}, nil
}

func (z *zstdCompressor) compress(src []byte) ([]byte, error) {
	z.out = z.enc.EncodeAll(src, z.out[:0])
	return z.out, nil
}

// xzCompressor makes one xz stream per block in the shape the kernel's
// squashfs xz decompressor (fs/squashfs/xz_wrapper.c over lib/xz) takes:
//   - check type CRC32: lib/xz in the kernel takes only "none" and CRC32
//     (dec_stream_header; XZ_DEC_ANY_CHECK is not defined in the kernel, so
//     CRC64 and SHA-256 are XZ_OPTIONS_ERROR); mksquashfs uses CRC32 too;
//   - one LZMA2 filter and nothing else (BCJ filters would need
//     compressor options naming them);
//   - an LZMA2 dictionary of the block size: with no compressor options in
//     the image the kernel preallocates max(block size, 8 KiB) and refuses
//     a stream that announces a larger dictionary (XZ_MEMLIMIT_ERROR), so
//     Talos's "-Xdict-size 100%" is exactly the block and leaves the
//     options out.
//
// ulikunitz/xz's defaults (CRC64, 8 MiB dictionary) are what made
// go-diskfs's xz images unmountable. Its BinaryTree matcher is not used:
// it emitted undecodable matches ("distance out of range") for 9 of 300
// random blocks here and is ten times slower; HashTable4 decoded 2,000 of
// 2,000. Each stream is still decoded once after it is made, and a block
// whose stream does not give back its bytes is stored raw instead: an
// encoder bug then costs space, never a layer the kernel cannot read.
type xzCompressor struct {
	out   bytes.Buffer
	check []byte
}

func (x *xzCompressor) compress(src []byte) ([]byte, error) {
	x.out.Reset()

	w, err := xz.WriterConfig{
		DictCap:  blockSize,
		CheckSum: xz.CRC32,
		Matcher:  lzma.HashTable4,
	}.NewWriter(&x.out)
	if err != nil {
		return nil, fmt.Errorf("squashfs: xz: %w", err)
	}

	if _, err := w.Write(src); err != nil {
		return nil, fmt.Errorf("squashfs: xz: %w", err)
	}

	if err := w.Close(); err != nil {
		return nil, fmt.Errorf("squashfs: xz: %w", err)
	}

	r, err := xz.ReaderConfig{SingleStream: true}.NewReader(bytes.NewReader(x.out.Bytes()))
	if err == nil {
		var n int

		x.check = append(x.check[:0], make([]byte, len(src)+1)...)
		n, err = io.ReadFull(r, x.check)

		if errors.Is(err, io.ErrUnexpectedEOF) && bytes.Equal(x.check[:n], src) {
			return x.out.Bytes(), nil
		}
	}

	return src, nil
}

// decompressor inflates one block into at most limit bytes.
type decompressor interface {
	decompress(src []byte, limit int) ([]byte, error)
}

var errTooLarge = errors.New("squashfs: block decompresses to more than the block size")

func newDecompressor(c Compression) (decompressor, error) {
	switch c {
	case Zstd:
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(1<<20),
			zstd.WithDecoderMaxWindow(1<<20))
		if err != nil {
			return nil, fmt.Errorf("squashfs: zstd: %w", err)
		}

		return zstdDecompressor{d: d}, nil
	case XZ:
		return streamDecompressor(func(r io.Reader) (io.Reader, error) {
			return xz.ReaderConfig{SingleStream: true}.NewReader(r)
		}), nil
	case Gzip:
		return streamDecompressor(func(r io.Reader) (io.Reader, error) { return zlib.NewReader(r) }), nil
	}

	return nil, fmt.Errorf("%w: %s compression is not supported", ErrFormat, c)
}

type zstdDecompressor struct{ d *zstd.Decoder }

func (z zstdDecompressor) decompress(src []byte, limit int) ([]byte, error) {
	out, err := z.d.DecodeAll(src, make([]byte, 0, limit))
	if err != nil {
		return nil, fmt.Errorf("squashfs: zstd: %w", err)
	}

	if len(out) > limit {
		return nil, errTooLarge
	}

	return out, nil
}

type streamDecompressor func(io.Reader) (io.Reader, error)

func (s streamDecompressor) decompress(src []byte, limit int) ([]byte, error) {
	r, err := s(bytes.NewReader(src))
	if err != nil {
		return nil, fmt.Errorf("squashfs: %w", err)
	}

	out, err := io.ReadAll(io.LimitReader(r, int64(limit)+1))
	if err != nil {
		return nil, fmt.Errorf("squashfs: %w", err)
	}

	if len(out) > limit {
		return nil, errTooLarge
	}

	return out, nil
}
