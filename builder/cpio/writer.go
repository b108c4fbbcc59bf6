package cpio

import (
	"errors"
	"fmt"
	"io"
	"strings"
)

// Writer writes a newc archive to an io.Writer. Call WriteHeader, then
// Write exactly Header.Size bytes for a regular file, and Close to write
// the trailer. Writer does not buffer: wrap the destination in a
// bufio.Writer when it is expensive to write to in small pieces.
type Writer struct {
	w         io.Writer
	written   int64 // bytes written to w, for padding
	remaining int64 // data bytes still owed for the current entry
	pad       int64 // padding owed after the current entry's data
	inode     uint32
	closed    bool
	err       error // sticky: a failed write leaves the archive unusable
}

// NewWriter returns a Writer writing to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// ErrWriteTooLong is returned when more data is written than Header.Size.
var ErrWriteTooLong = errors.New("cpio: write too long")

// WriteHeader finishes the previous entry and starts a new one. Names are
// written as given, so callers decide between "usr/lib" and "./usr/lib"
// (the kernel accepts both; Talos uses the former).
func (cw *Writer) WriteHeader(h *Header) error {
	if err := cw.finishEntry(); err != nil {
		return err
	}

	if h.Name == "" || strings.IndexByte(h.Name, 0) >= 0 {
		return fmt.Errorf("cpio: invalid name %q", h.Name)
	}

	if h.Name == Trailer {
		return fmt.Errorf("cpio: %q is reserved for the trailer", h.Name)
	}

	mode := h.Mode
	if mode&TypeMask == 0 {
		mode |= TypeReg
	}

	var size int64

	var data []byte

	switch mode & TypeMask {
	case TypeReg:
		size = h.Size
		if size < 0 || size > 0xffffffff {
			return fmt.Errorf("cpio: %s: size %d does not fit newc's 32-bit field", h.Name, size)
		}
	case TypeSymlink:
		if h.Linkname == "" {
			return fmt.Errorf("cpio: symlink %s has no target", h.Name)
		}

		data = []byte(h.Linkname)
		size = int64(len(data))
	}

	nlink := uint32(1)
	if mode&TypeMask == TypeDir {
		// What GNU cpio stores for a directory read from disk without
		// subdirectories; nothing reads it, but it keeps tools quiet.
		nlink = 2
	}

	// Inodes are numbered in order, as GNU cpio --reproducible does, so
	// that no entry looks like a hard link of another.
	cw.inode++

	if err := cw.writeHeader(h.Name, cw.inode, mode, h, nlink, size); err != nil {
		return err
	}

	cw.remaining, cw.pad = size, pad4(size)
	if data != nil {
		if _, err := cw.Write(data); err != nil {
			return err
		}
	}

	return nil
}

// writeHeader writes the 110-byte header, the name and its padding.
func (cw *Writer) writeHeader(name string, ino, mode uint32, h *Header, nlink uint32, size int64) error {
	mtime := int64(0)
	if !h.ModTime.IsZero() {
		mtime = h.ModTime.Unix()
	}

	if mtime < 0 || mtime > 0xffffffff {
		return fmt.Errorf("cpio: %s: mtime %d does not fit newc's 32-bit field", name, mtime)
	}

	nameLen := int64(len(name) + 1)
	buf := make([]byte, 0, headerLen+nameLen+3)
	buf = append(buf, magicNewc...)

	for _, v := range []uint32{ino, mode, h.UID, h.GID, nlink, uint32(mtime), uint32(size),
		h.DevMajor, h.DevMinor, h.RDevMajor, h.RDevMinor, uint32(nameLen), 0} {
		buf = fmt.Appendf(buf, "%08x", v)
	}

	buf = append(buf, name...)
	buf = append(buf, 0)
	buf = append(buf, make([]byte, pad4(headerLen+nameLen))...)

	return cw.write(buf)
}

// Write writes data of the current regular file or symlink.
func (cw *Writer) Write(p []byte) (int, error) {
	if cw.err != nil {
		return 0, cw.err
	}

	if int64(len(p)) > cw.remaining {
		return 0, ErrWriteTooLong
	}

	n, err := cw.w.Write(p)
	cw.written += int64(n)
	cw.remaining -= int64(n)

	if err != nil {
		cw.err = err
	}

	return n, err
}

// ReadFrom copies r into the current entry, so that io.Copy uses the
// caller's chunking rather than a 32 KiB default when the source is large.
func (cw *Writer) ReadFrom(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)

	var total int64

	for {
		n, err := r.Read(buf)
		if n > 0 {
			m, werr := cw.Write(buf[:n])
			total += int64(m)

			if werr != nil {
				return total, werr
			}
		}

		if errors.Is(err, io.EOF) {
			return total, nil
		}

		if err != nil {
			return total, err
		}
	}
}

// finishEntry checks that the current entry is complete and pads it.
func (cw *Writer) finishEntry() error {
	if cw.err != nil {
		return cw.err
	}

	if cw.closed {
		return errors.New("cpio: writer closed")
	}

	if cw.remaining > 0 {
		return fmt.Errorf("cpio: entry is missing %d bytes of data", cw.remaining)
	}

	if cw.pad > 0 {
		if err := cw.write(make([]byte, cw.pad)); err != nil {
			return err
		}

		cw.pad = 0
	}

	return nil
}

// Close writes the trailer and pads the archive to a multiple of 512
// bytes, as GNU cpio does. It does not close the underlying writer.
func (cw *Writer) Close() error {
	if err := cw.finishEntry(); err != nil {
		return err
	}

	if err := cw.writeHeader(Trailer, 0, 0, &Header{}, 1, 0); err != nil {
		return err
	}

	if rem := cw.written % blockSize; rem != 0 {
		if err := cw.write(make([]byte, blockSize-rem)); err != nil {
			return err
		}
	}

	cw.closed = true

	return nil
}

func (cw *Writer) write(p []byte) error {
	if cw.err != nil {
		return cw.err
	}

	n, err := cw.w.Write(p)
	cw.written += int64(n)

	if err != nil {
		cw.err = err
	}

	return err
}
