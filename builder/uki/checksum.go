package uki

import "encoding/binary"

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
