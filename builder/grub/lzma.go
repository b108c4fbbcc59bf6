package grub

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/ulikunitz/xz/lzma"
)

// lzmaHeaderSize is the classic .lzma header (properties, dictionary size,
// uncompressed size) that GRUB's stream does not have.
const lzmaHeaderSize = 13

// compressLZMA returns raw LZMA data as lzma_decompress.img decodes it: no
// header, properties lc=3 lp=0 pb=2 (its decoder is built with FIXED_PROPS),
// no end marker (it stops after the uncompressed size from its header
// field). grub-mkimage uses a 64 KiB dictionary; so does this. A stream that
// grows beyond limit bytes stops with errTooBig.
func compressLZMA(data []byte, limit int) ([]byte, error) {
	buf := &limitedBuffer{limit: limit + lzmaHeaderSize}

	w, err := lzma.WriterConfig{
		Properties: &lzma.Properties{LC: 3, LP: 0, PB: 2},
		DictCap:    1 << 16,
		Matcher:    lzma.HashTable4,
		Size:       int64(len(data)),
	}.NewWriter(buf)
	if err != nil {
		return nil, fmt.Errorf("grub: lzma: %w", err)
	}

	if _, err := w.Write(data); err != nil {
		return nil, lzmaError(err)
	}

	if err := w.Close(); err != nil {
		return nil, lzmaError(err)
	}

	return buf.Bytes()[lzmaHeaderSize:], nil
}

var errTooBig = errors.New("compressed data too big")

func lzmaError(err error) error {
	if errors.Is(err, errTooBig) {
		return err
	}

	return fmt.Errorf("grub: lzma: %w", err)
}

// limitedBuffer is a bytes.Buffer that refuses to grow beyond limit bytes.
type limitedBuffer struct {
	bytes.Buffer
	limit int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.limit {
		return 0, errTooBig
	}

	return b.Buffer.Write(p)
}

func (b *limitedBuffer) WriteByte(c byte) error {
	if b.Len()+1 > b.limit {
		return errTooBig
	}

	return b.Buffer.WriteByte(c)
}
