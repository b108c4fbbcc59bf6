package cpio

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
)

// Compression names how one initramfs segment is stored.
type Compression string

// Compressions Segments recognises by magic number.
const (
	None  Compression = "none"
	Zstd  Compression = "zstd"
	Gzip  Compression = "gzip"
	Xz    Compression = "xz"
	Lz4   Compression = "lz4"
	Bzip2 Compression = "bzip2"
)

// Segment is one piece of a concatenated initramfs: an uncompressed newc
// archive or one compressed stream holding one.
type Segment struct {
	Offset, Size int64
	Compression  Compression
}

// Segments splits a concatenated initramfs the way the kernel walks it
// (init/initramfs.c): zero bytes between segments are skipped, "0707" starts
// an uncompressed archive that ends at its trailer, anything else must be a
// compressed stream. The end of a zstd frame, an xz stream and a gzip
// member is found exactly (zstd and xz from their block and chunk headers,
// without decompressing); lz4 and bzip2 streams cannot be delimited
// without a decoder kiln does not carry, so such a segment extends to the
// end of the input.
func Segments(r io.ReaderAt, size int64) ([]Segment, error) {
	var segs []Segment

	pos := int64(0)

	for {
		var err error
		if pos, err = skipZeros(r, pos, size); err != nil {
			return segs, err
		}

		if pos >= size {
			return segs, nil
		}

		var magic [6]byte

		n, _ := r.ReadAt(magic[:], pos)
		m := magic[:n]

		var (
			end  int64
			kind Compression
		)

		switch {
		case bytes.HasPrefix(m, []byte("0707")):
			kind = None
			cr := NewReader(io.NewSectionReader(r, pos, size-pos))

			for {
				if _, err = cr.Next(); err != nil {
					break
				}
			}

			if !errors.Is(err, io.EOF) {
				return segs, fmt.Errorf("cpio segment at %d: %w", pos, err)
			}

			end = pos + cr.Offset()
		case bytes.HasPrefix(m, []byte{0x28, 0xb5, 0x2f, 0xfd}):
			kind = Zstd

			if end, err = zstdFrameEnd(r, pos, size); err != nil {
				return segs, fmt.Errorf("zstd segment at %d: %w", pos, err)
			}
		case bytes.HasPrefix(m, []byte{0x1f, 0x8b}):
			kind = Gzip

			if end, err = gzipMemberEnd(r, pos, size); err != nil {
				return segs, fmt.Errorf("gzip segment at %d: %w", pos, err)
			}
		case bytes.HasPrefix(m, []byte{0xfd, '7', 'z', 'X', 'Z', 0}):
			kind = Xz

			if end, err = xzStreamEnd(r, pos, size); err != nil {
				return segs, fmt.Errorf("xz segment at %d: %w", pos, err)
			}
		case bytes.HasPrefix(m, []byte{0x02, 0x21, 0x4c, 0x18}):
			kind, end = Lz4, size
		case bytes.HasPrefix(m, []byte("BZh")):
			kind, end = Bzip2, size
		default:
			return segs, fmt.Errorf("%w: unknown segment magic % x at offset %d", ErrFormat, m, pos)
		}

		segs = append(segs, Segment{Offset: pos, Size: end - pos, Compression: kind})
		pos = end
	}
}

// skipZeros returns the offset of the first non-zero byte at or after pos.
func skipZeros(r io.ReaderAt, pos, size int64) (int64, error) {
	buf := make([]byte, 4096)

	for pos < size {
		n, err := r.ReadAt(buf[:min(int64(len(buf)), size-pos)], pos)
		if n == 0 && err != nil {
			return pos, err
		}

		for i := range n {
			if buf[i] != 0 {
				return pos + int64(i), nil
			}
		}

		pos += int64(n)
	}

	return pos, nil
}

// zstdFrameEnd walks one zstd frame (RFC 8878 §3.1.1) and returns where it
// ends.
func zstdFrameEnd(r io.ReaderAt, pos, size int64) (int64, error) {
	var hdr [14]byte

	n, _ := r.ReadAt(hdr[:], pos)
	if n < 6 {
		return 0, io.ErrUnexpectedEOF
	}

	fhd := hdr[4]
	single := fhd&0x20 != 0

	if fhd&0x08 != 0 {
		return 0, fmt.Errorf("%w: zstd reserved bit set", ErrFormat)
	}

	p := pos + 5
	if !single {
		p++ // window descriptor
	}

	p += []int64{0, 1, 2, 4}[fhd&3] // dictionary ID

	fcs := []int64{0, 2, 4, 8}[fhd>>6]
	if fhd>>6 == 0 && single {
		fcs = 1
	}

	p += fcs

	var bh [3]byte

	for {
		if p+3 > size {
			return 0, io.ErrUnexpectedEOF
		}

		if _, err := r.ReadAt(bh[:], p); err != nil {
			return 0, err
		}

		v := uint32(bh[0]) | uint32(bh[1])<<8 | uint32(bh[2])<<16
		last, typ, bsize := v&1 != 0, (v>>1)&3, int64(v>>3)
		p += 3

		switch typ {
		case 0, 2: // raw, compressed
			p += bsize
		case 1: // RLE: one byte repeated bsize times
			p++
		default:
			return 0, fmt.Errorf("%w: zstd reserved block type", ErrFormat)
		}

		if p > size {
			return 0, io.ErrUnexpectedEOF
		}

		if last {
			break
		}
	}

	if fhd&0x04 != 0 {
		p += 4 // content checksum
	}

	if p > size {
		return 0, io.ErrUnexpectedEOF
	}

	return p, nil
}

// xzStreamEnd walks one .xz stream (the .xz file format, 1.2.0) and
// returns where it ends: stream header, blocks (each block header, then its
// data, delimited by the block's compressed size or else by walking the
// LZMA2 chunk headers, padding and check), the index and the footer.
func xzStreamEnd(r io.ReaderAt, pos, size int64) (int64, error) {
	buf := make([]byte, 1024)
	read := func(p int64, n int) ([]byte, error) {
		if n > len(buf) || p < 0 || p+int64(n) > size {
			return nil, io.ErrUnexpectedEOF
		}

		if _, err := r.ReadAt(buf[:n], p); err != nil {
			return nil, err
		}

		return buf[:n], nil
	}

	h, err := read(pos, 12)
	if err != nil {
		return 0, err
	}

	if h[6] != 0 || h[7] > 0x0f {
		return 0, fmt.Errorf("%w: xz stream flags % x", ErrFormat, h[6:8])
	}

	checkSize := int64([]int{0, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64}[h[7]])
	p := pos + 12

	for {
		b, err := read(p, 1)
		if err != nil {
			return 0, err
		}

		if b[0] == 0 { // index indicator
			break
		}

		start := p
		hdrSize := (int(b[0]) + 1) * 4

		hdr, err := read(p, hdrSize)
		if err != nil {
			return 0, err
		}

		flags := hdr[1]
		p += int64(hdrSize)

		if flags&0x40 != 0 {
			compressed, _, err := uvarint(hdr[2:])
			if err != nil {
				return 0, err
			}

			p += int64(compressed)
		} else if p, err = lzma2End(read, p); err != nil {
			return 0, err
		}

		p += (4 - (p-start)%4) % 4
		p += checkSize

		if p > size {
			return 0, io.ErrUnexpectedEOF
		}
	}

	// Index: indicator, record count, records (two varints each),
	// padding to 4, CRC32.
	start := p
	p++

	count, err := readUvarint(read, &p)
	if err != nil {
		return 0, err
	}

	for range count * 2 {
		if _, err := readUvarint(read, &p); err != nil {
			return 0, err
		}
	}

	p += (4 - (p-start)%4) % 4
	p += 4

	footer, err := read(p, 12)
	if err != nil {
		return 0, err
	}

	if footer[10] != 'Y' || footer[11] != 'Z' {
		return 0, fmt.Errorf("%w: xz stream footer magic % x", ErrFormat, footer[10:])
	}

	return p + 12, nil
}

// lzma2End walks LZMA2 chunk headers from p to the end marker.
func lzma2End(read func(int64, int) ([]byte, error), p int64) (int64, error) {
	for {
		c, err := read(p, 1)
		if err != nil {
			return 0, err
		}

		switch ctrl := c[0]; {
		case ctrl == 0:
			return p + 1, nil
		case ctrl == 1 || ctrl == 2: // uncompressed chunk
			h, err := read(p, 3)
			if err != nil {
				return 0, err
			}

			p += 3 + int64(h[1])<<8 + int64(h[2]) + 1
		case ctrl >= 0x80: // LZMA chunk, with a properties byte on a state reset
			h, err := read(p, 5)
			if err != nil {
				return 0, err
			}

			p += 5 + int64(h[3])<<8 + int64(h[4]) + 1
			if ctrl >= 0xc0 {
				p++
			}
		default:
			return 0, fmt.Errorf("%w: LZMA2 control byte %#x", ErrFormat, ctrl)
		}
	}
}

func readUvarint(read func(int64, int) ([]byte, error), p *int64) (uint64, error) {
	var v uint64

	for i := range 9 {
		b, err := read(*p, 1)
		if err != nil {
			return 0, err
		}

		*p++
		v |= uint64(b[0]&0x7f) << (7 * i)

		if b[0]&0x80 == 0 {
			return v, nil
		}
	}

	return 0, fmt.Errorf("%w: xz varint too long", ErrFormat)
}

func uvarint(b []byte) (uint64, int, error) {
	var v uint64

	for i := 0; i < len(b) && i < 9; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			return v, i + 1, nil
		}
	}

	return 0, 0, fmt.Errorf("%w: xz varint", ErrFormat)
}

// gzipMemberEnd decompresses one gzip member to find its end: flate reads
// byte by byte from an io.ByteReader, so the count is exact.
func gzipMemberEnd(r io.ReaderAt, pos, size int64) (int64, error) {
	cr := &countingByteReader{r: bufio.NewReaderSize(io.NewSectionReader(r, pos, size-pos), 1<<20)}

	zr, err := gzip.NewReader(cr)
	if err != nil {
		return 0, err
	}

	zr.Multistream(false)

	if _, err := io.Copy(io.Discard, zr); err != nil {
		return 0, err
	}

	return pos + cr.n, nil
}

// countingByteReader counts the bytes a decompressor took: the bufio
// buffer below may read ahead, the count above it does not.
type countingByteReader struct {
	r *bufio.Reader
	n int64
}

func (c *countingByteReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}

	b, err := c.ReadByte()
	if err != nil {
		return 0, err
	}

	p[0] = b

	return 1, nil
}

func (c *countingByteReader) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err != nil {
		return 0, err
	}

	c.n++

	return b, nil
}
