package compress

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"hash/crc64"
	"io"
	"sync"

	"github.com/ulikunitz/xz/lzma"
)

// The .xz container (https://tukaani.org/xz/xz-file-format.txt) is written
// here so that one stream holds blocks compressed in parallel, as `xz -T0`
// does; github.com/ulikunitz/xz/lzma provides the raw LZMA2 encoder. Every
// block records its compressed and uncompressed sizes, has one LZMA2 filter
// with an 8 MiB dictionary and a CRC64 check (xz's default). Incompressible
// blocks are written as uncompressed LZMA2 chunks, which is also what xz's
// encoder falls back to for such data.

const (
	xzDictCap   = 8 << 20
	xzCheckType = 0x04
	xzCheckSize = 8
	lzma2Stored = 64 << 10 // largest payload of an uncompressed LZMA2 chunk
)

var (
	xzMagic    = []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}
	xzFlags    = []byte{0x00, xzCheckType}
	crc64Table = crc64.MakeTable(crc64.ECMA)
)

type xzCodec struct {
	units [2]zeroUnit // zeroUnits
}

// zeroUnits are the sizes whose LZMA2 encodings of zeros are repeated to
// encode holes. The LZMA2 coder restarts its probabilities with every unit,
// so larger units compress better (4 MiB: ~165 B/MiB, 1 MiB: ~225 B/MiB);
// one 4 MiB encoding costs ~30 MB of tables once.
var zeroUnits = [2]int{4 << 20, segment}

type zeroUnit struct {
	once sync.Once
	lz   []byte // LZMA2 chunks, without the end marker
	err  error
}

func (*xzCodec) probe() bool { return true }

func (*xzCodec) header() []byte {
	h := append(append([]byte{}, xzMagic...), xzFlags...)
	return binary.LittleEndian.AppendUint32(h, crc32.ChecksumIEEE(xzFlags))
}

func (c *xzCodec) newWorker() (worker, error) { return xzWorker{c}, nil }

type xzWorker struct{ c *xzCodec }

func (xzWorker) close() {}

// dictFor returns the dictionary size for n bytes of input and its LZMA2
// property byte: the smallest power of two ≥ n within [4 KiB, 8 MiB]. A
// larger dictionary than the input gains nothing and costs memory
// (ulikunitz allocates ~7 bytes of tables per dictionary byte).
func dictFor(n int) (int, byte) {
	d, k := 4096, 12
	for d < n && d < xzDictCap {
		d, k = d<<1, k+1
	}
	return d, byte(2 * (k - 12)) // (2|0) << (p/2 + 11) = 2^k
}

func lzma2Encode(dst []byte, p []byte) ([]byte, byte, error) {
	dict, prop := dictFor(len(p))
	out := bytes.NewBuffer(dst[:0])
	w, err := lzma.Writer2Config{DictCap: dict, Matcher: lzma.HashTable4}.NewWriter2(out)
	if err != nil {
		return nil, 0, err
	}
	if _, err := w.Write(p); err != nil {
		return nil, 0, err
	}
	if err := w.Close(); err != nil {
		return nil, 0, err
	}
	return out.Bytes(), prop, nil
}

func (xzWorker) encode(b *block) error {
	p := b.in[:b.n]
	b.crc = crc64.Checksum(p, crc64Table)
	b.uncompressed = uint64(b.n)
	var lzSize int
	if b.class == classStored {
		lzSize = storedSize(b.n)
		_, b.dict = dictFor(b.n)
	} else {
		if cap(b.buf) < b.n/2 {
			b.buf = make([]byte, 0, b.n/2)
		}
		var err error
		if b.buf, b.dict, err = lzma2Encode(b.buf, p); err != nil {
			return err
		}
		b.enc = b.buf
		lzSize = len(b.enc)
	}
	b.unpadded = uint64(len(blockHeader(lzSize, b.n, b.dict)) + lzSize + xzCheckSize)
	return nil
}

// encodeZero builds the LZMA2 data of n zero bytes from the encodings of
// zeroUnits repeated: every repetition starts with a dictionary reset, which
// LZMA2 allows on any chunk, so each unit is LZMA-compressed once per call,
// however large the holes.
func (w xzWorker) encodeZero(b *block) error {
	var lz []byte
	rem := b.n
	for i, size := range zeroUnits {
		if rem < size {
			continue
		}
		u := &w.c.units[i]
		u.once.Do(func() {
			enc, _, err := lzma2Encode(nil, make([]byte, size))
			if err == nil {
				u.lz = bytes.Clone(enc[:len(enc)-1])
			}
			u.err = err
		})
		if u.err != nil {
			return u.err
		}
		lz = append(lz, bytes.Repeat(u.lz, rem/size)...)
		rem %= size
	}
	if rem > 0 {
		tail, _, err := lzma2Encode(nil, make([]byte, rem))
		if err != nil {
			return err
		}
		lz = append(lz, tail[:len(tail)-1]...)
	}
	lz = append(lz, 0x00)
	b.enc = lz
	_, b.dict = dictFor(min(b.n, zeroUnits[0]))
	crc := crc64.New(crc64Table)
	for n := b.n; n > 0; n -= min(n, segment) {
		crc.Write(zeroBlock[:min(n, segment)])
	}
	b.crc = crc.Sum64()
	b.uncompressed = uint64(b.n)
	b.unpadded = uint64(len(blockHeader(len(lz), b.n, b.dict)) + len(lz) + xzCheckSize)
	return nil
}

// storedSize is the size of n bytes as uncompressed LZMA2 chunks plus the
// end marker.
func storedSize(n int) int { return n + 3*((n+lzma2Stored-1)/lzma2Stored) + 1 }

func appendVarint(b []byte, v uint64) []byte {
	for v >= 0x80 {
		b = append(b, byte(v)|0x80)
		v >>= 7
	}
	return append(b, byte(v))
}

// blockHeader encodes a block header for lzSize bytes of LZMA2 data
// holding n bytes, with dictionary property dict.
func blockHeader(lzSize, n int, dict byte) []byte {
	h := []byte{0, 0xc0} // size byte (set below); 1 filter, both sizes present
	h = appendVarint(h, uint64(lzSize))
	h = appendVarint(h, uint64(n))
	h = append(h, 0x21, 0x01, dict) // LZMA2, 1 property byte
	for (len(h)+4)%4 != 0 {
		h = append(h, 0)
	}
	h[0] = byte((len(h)+4)/4 - 1)
	return binary.LittleEndian.AppendUint32(h, crc32.ChecksumIEEE(h))
}

func (*xzCodec) writeBlock(w io.Writer, b *block) error {
	lzSize := len(b.enc)
	if b.class == classStored {
		lzSize = storedSize(b.n)
	}
	h := blockHeader(lzSize, b.n, b.dict)
	if _, err := w.Write(h); err != nil {
		return err
	}
	if b.class == classStored {
		p := b.in[:b.n]
		ctrl := byte(0x01) // the first chunk resets the dictionary
		for len(p) > 0 {
			n := min(len(p), lzma2Stored)
			if _, err := w.Write([]byte{ctrl, byte((n - 1) >> 8), byte(n - 1)}); err != nil {
				return err
			}
			if _, err := w.Write(p[:n]); err != nil {
				return err
			}
			p = p[n:]
			ctrl = 0x02
		}
		if _, err := w.Write([]byte{0x00}); err != nil {
			return err
		}
	} else if _, err := w.Write(b.enc); err != nil {
		return err
	}
	tail := make([]byte, (4-lzSize%4)%4, 4+xzCheckSize) // block padding
	tail = binary.LittleEndian.AppendUint64(tail, b.crc)
	_, err := w.Write(tail)
	return err
}

// trailer encodes the index and the stream footer.
func (*xzCodec) trailer(blocks []block) []byte {
	idx := []byte{0x00}
	idx = appendVarint(idx, uint64(len(blocks)))
	for _, b := range blocks {
		idx = appendVarint(idx, b.unpadded)
		idx = appendVarint(idx, b.uncompressed)
	}
	for len(idx)%4 != 0 {
		idx = append(idx, 0)
	}
	idx = binary.LittleEndian.AppendUint32(idx, crc32.ChecksumIEEE(idx))

	f := binary.LittleEndian.AppendUint32(nil, uint32(len(idx)/4-1))
	f = append(f, xzFlags...)
	foot := binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(f))
	foot = append(foot, f...)
	foot = append(foot, 'Y', 'Z')
	return append(idx, foot...)
}
