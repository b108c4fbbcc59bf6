package uki

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Sum is the share of some bytes in a PE checksum when they start at an
// even file offset: the same for the same bytes wherever such an offset
// puts them, so a caller can keep it for a file it puts in many UKIs (a
// release's kernel and initramfs) and let AssembleAt copy that file in the
// kernel instead of reading it for the checksum.
type Sum struct {
	sum uint64
	n   int64
	odd bool
	low byte
}

// Len is the number of bytes summed.
func (s Sum) Len() int64 { return s.n }

// SumOf reads n bytes of r from off and returns their Sum.
func SumOf(ctx context.Context, r io.ReaderAt, off, n int64) (Sum, error) {
	var c checksum

	buf := make([]byte, min(copyBufferSize, max(n, 1)))

	for c.n < n {
		if err := ctx.Err(); err != nil {
			return Sum{}, err
		}

		k, err := r.ReadAt(buf[:min(int64(len(buf)), n-c.n)], off+c.n)
		c.add(buf[:k])

		if err != nil && !(errors.Is(err, io.EOF) && c.n == n) {
			if errors.Is(err, io.EOF) {
				return Sum{}, fmt.Errorf("%w: %d bytes, want %d", ErrInput, c.n, n)
			}

			return Sum{}, err
		}
	}

	return Sum{sum: c.sum, n: c.n, odd: c.odd, low: c.low}, nil
}

// canAdd reports whether a Sum can be added at the current offset: an even
// one past the skipped range.
func (c *checksum) canAdd() bool { return !c.odd && c.n >= c.skip[1] }

// addSum accounts for bytes whose Sum is s (canAdd must hold).
func (c *checksum) addSum(s Sum) {
	c.sum += s.sum
	c.n += s.n
	c.odd, c.low = s.odd, s.low
}

// checksum accumulates the PE image checksum: the one's-complement sum of
// the file's little-endian 16-bit words (the CheckSum field itself counted
// as zero), folded to 16 bits, plus the file length.
type checksum struct {
	sum  uint64
	n    int64
	odd  bool // a low byte is pending
	low  byte
	skip [2]int64 // file range [skip[0], skip[1]) counted as zero
}

func (c *checksum) Write(p []byte) (int, error) {
	total := len(p)

	for len(p) > 0 {
		// Bytes inside the skipped range count as zero.
		if c.n >= c.skip[0] && c.n < c.skip[1] {
			k := min(int64(len(p)), c.skip[1]-c.n)
			c.add(make([]byte, k))
			p = p[k:]

			continue
		}

		k := len(p)
		if c.n < c.skip[0] {
			k = int(min(int64(k), c.skip[0]-c.n))
		}

		c.add(p[:k])
		p = p[k:]
	}

	return total, nil
}

func (c *checksum) add(p []byte) {
	c.n += int64(len(p))

	if c.odd && len(p) > 0 {
		c.sum += uint64(c.low) | uint64(p[0])<<8
		c.odd = false
		p = p[1:]
	}

	for len(p) >= 8 {
		v := binary.LittleEndian.Uint64(p)
		c.sum += v&0xffff + v>>16&0xffff + v>>32&0xffff + v>>48
		p = p[8:]
	}

	for len(p) >= 2 {
		c.sum += uint64(binary.LittleEndian.Uint16(p))
		p = p[2:]
	}

	if len(p) == 1 {
		c.odd, c.low = true, p[0]
	}
}

// value returns the checksum of everything written so far.
func (c *checksum) value() uint32 {
	s := c.sum
	if c.odd {
		s += uint64(c.low)
	}

	for s > 0xffff {
		s = s&0xffff + s>>16
	}

	return uint32(s) + uint32(c.n)
}
