package cpio

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Reader iterates over the entries of one newc archive. Next returns
// io.EOF after the trailer, leaving the underlying reader just past the
// trailer entry (block padding is not consumed: see Offset).
type Reader struct {
	r         io.Reader
	offset    int64 // bytes consumed from r
	remaining int64 // unread data of the current entry
	pad       int64 // padding after the current entry's data
	done      bool
	err       error
}

// NewReader returns a Reader reading from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Offset is the number of bytes consumed from the underlying reader. After
// Next has returned io.EOF it is the end of the trailer entry, where zero
// padding and possibly a further segment start.
func (cr *Reader) Offset() int64 { return cr.offset }

// Next advances to the next entry, skipping any unread data of the
// current one.
func (cr *Reader) Next() (*Header, error) {
	if cr.err != nil {
		return nil, cr.err
	}

	if cr.done {
		return nil, io.EOF
	}

	if err := cr.skip(cr.remaining + cr.pad); err != nil {
		return nil, cr.fail(err)
	}

	cr.remaining, cr.pad = 0, 0

	var raw [headerLen]byte
	if err := cr.readFull(raw[:]); err != nil {
		return nil, cr.fail(err)
	}

	if m := string(raw[:6]); m != magicNewc && m != magicNewcCRC {
		return nil, cr.fail(fmt.Errorf("%w: bad magic %q at offset %d", ErrFormat, m, cr.offset-headerLen))
	}

	var f [13]uint32

	for i := range f {
		v, err := strconv.ParseUint(string(raw[6+8*i:14+8*i]), 16, 32)
		if err != nil {
			return nil, cr.fail(fmt.Errorf("%w: header field %d: %q", ErrFormat, i, raw[6+8*i:14+8*i]))
		}

		f[i] = uint32(v)
	}

	nameLen := int64(f[11])
	if nameLen == 0 || nameLen > maxNameLen {
		return nil, cr.fail(fmt.Errorf("%w: name length %d", ErrFormat, nameLen))
	}

	name := make([]byte, nameLen+pad4(headerLen+nameLen))
	if err := cr.readFull(name); err != nil {
		return nil, cr.fail(err)
	}

	if name[nameLen-1] != 0 {
		return nil, cr.fail(fmt.Errorf("%w: name is not NUL-terminated", ErrFormat))
	}

	h := &Header{
		Name:      string(name[:nameLen-1]),
		Inode:     f[0],
		Mode:      f[1],
		UID:       f[2],
		GID:       f[3],
		Nlink:     f[4],
		ModTime:   time.Unix(int64(f[5]), 0).UTC(),
		Size:      int64(f[6]),
		DevMajor:  f[7],
		DevMinor:  f[8],
		RDevMajor: f[9],
		RDevMinor: f[10],
	}

	if h.Name == Trailer {
		cr.done = true
		return nil, io.EOF
	}

	cr.remaining, cr.pad = h.Size, pad4(h.Size)

	if h.Mode&TypeMask == TypeSymlink {
		// Symlink targets are tiny; bound them anyway.
		if h.Size > maxNameLen {
			return nil, cr.fail(fmt.Errorf("%w: symlink %s target length %d", ErrFormat, h.Name, h.Size))
		}

		target := make([]byte, h.Size)
		if _, err := io.ReadFull(cr, target); err != nil {
			return nil, cr.fail(err)
		}

		h.Linkname = string(target)
	}

	return h, nil
}

// Read reads the current entry's data; it returns io.EOF at its end.
func (cr *Reader) Read(p []byte) (int, error) {
	if cr.err != nil {
		return 0, cr.err
	}

	if cr.remaining == 0 {
		return 0, io.EOF
	}

	if int64(len(p)) > cr.remaining {
		p = p[:cr.remaining]
	}

	n, err := cr.r.Read(p)
	cr.offset += int64(n)
	cr.remaining -= int64(n)

	if errors.Is(err, io.EOF) && cr.remaining > 0 {
		return n, cr.fail(io.ErrUnexpectedEOF)
	}

	if err != nil && !errors.Is(err, io.EOF) {
		return n, cr.fail(err)
	}

	return n, nil
}

func (cr *Reader) readFull(p []byte) error {
	n, err := io.ReadFull(cr.r, p)
	cr.offset += int64(n)

	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}

	return err
}

func (cr *Reader) skip(n int64) error {
	if n == 0 {
		return nil
	}

	m, err := io.CopyN(io.Discard, cr.r, n)
	cr.offset += m

	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}

	return err
}

// fail makes err sticky: after a malformed header the stream position is
// meaningless.
func (cr *Reader) fail(err error) error {
	cr.err = err
	return err
}
