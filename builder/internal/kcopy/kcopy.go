// Package kcopy copies bytes between files in the kernel (copy_file_range)
// where it can, so that the builder's large pieces (kernel, initramfs, UKI)
// reach their place in an image without passing through user space.
package kcopy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// chunk bounds one copy_file_range call, so that a cancelled build stops
// within a few tens of milliseconds.
const chunk = 64 << 20

// bufSize is the buffer of the fallback through user space.
const bufSize = 1 << 20

// File returns the file behind r: r itself, or what a type embedding an
// *os.File (a stored asset) hands out through syscall.Conn, when r is also
// an io.ReaderAt reading that file's bytes unchanged. ok is false otherwise.
func File(r any) (syscall.Conn, bool) {
	if f, ok := r.(*os.File); ok {
		return f, true
	}

	// A type that embeds *os.File has its ReadAt and SyscallConn; one that
	// wraps the file (a decompressor, a limited reader) does not have both.
	if c, ok := r.(interface {
		syscall.Conn
		io.ReaderAt
		Stat() (os.FileInfo, error)
	}); ok {
		return c, true
	}

	return nil, false
}

// Section returns the file and byte range behind r, a section of a file
// (File), or ok false.
func Section(r *io.SectionReader) (src syscall.Conn, off, n int64, ok bool) {
	outer, off, n := r.Outer()

	src, ok = File(outer)

	return src, off, n, ok
}

// CopyAt copies n bytes at srcOff of src (an io.ReaderAt; copied in the
// kernel when File finds a file behind it) to dstOff of dst. A source
// shorter than n is io.ErrUnexpectedEOF. Offsets of neither file change.
// Copying within one file needs ranges that do not overlap.
func CopyAt(ctx context.Context, dst *os.File, dstOff int64, src io.ReaderAt, srcOff, n int64) error {
	if n <= 0 {
		return nil
	}

	done := int64(0)

	if sf, ok := File(src); ok {
		var err error

		done, err = copyFileRange(ctx, dst, dstOff, sf, srcOff, n)
		if err == nil || !fallback(err) || done > 0 {
			return err
		}
	}

	buf := make([]byte, min(bufSize, n))

	for done < n {
		if err := ctx.Err(); err != nil {
			return err
		}

		m, err := src.ReadAt(buf[:min(int64(len(buf)), n-done)], srcOff+done)
		if m > 0 {
			if _, werr := dst.WriteAt(buf[:m], dstOff+done); werr != nil {
				return werr
			}

			done += int64(m)
		}

		if err != nil && !(errors.Is(err, io.EOF) && done == n) {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("%d bytes of %d: %w", done, n, io.ErrUnexpectedEOF)
			}

			return err
		}
	}

	return nil
}

// CopySection copies the bytes of r to dstOff of dst (CopyAt).
func CopySection(ctx context.Context, dst *os.File, dstOff int64, r *io.SectionReader) error {
	outer, off, n := r.Outer()

	return CopyAt(ctx, dst, dstOff, outer, off, n)
}

// fallback reports a copy_file_range error that means "not between these
// files" (another file system before Linux 5.19, a file system without it,
// a kernel without it), after which the copy goes through user space.
func fallback(err error) bool {
	return errors.Is(err, unix.EXDEV) || errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.EBADF)
}

func copyFileRange(ctx context.Context, dst *os.File, dstOff int64, src syscall.Conn, srcOff, n int64) (int64, error) {
	rc, err := src.SyscallConn()
	if err != nil {
		return 0, err
	}

	wc, err := dst.SyscallConn()
	if err != nil {
		return 0, err
	}

	var done int64

	var opErr, werr error

	cerr := rc.Control(func(rfd uintptr) {
		werr = wc.Control(func(wfd uintptr) {
			for done < n {
				if opErr = ctx.Err(); opErr != nil {
					return
				}

				roff, woff := srcOff+done, dstOff+done

				c, err := unix.CopyFileRange(int(rfd), &roff, int(wfd), &woff, int(min(n-done, chunk)), 0)
				if errors.Is(err, unix.EINTR) {
					continue
				}

				if err != nil {
					opErr = err

					return
				}

				if c == 0 {
					opErr = fmt.Errorf("%d bytes of %d: %w", done, n, io.ErrUnexpectedEOF)

					return
				}

				done += int64(c)
			}
		})
	})
	if err := errors.Join(cerr, werr); err != nil {
		return done, err
	}

	return done, opErr
}

// SectionCloser is a section with a Close that does nothing: what an Open
// function hands out for a section of a file (a release's kernel) so that
// the copy finds the file behind it (Opened).
type SectionCloser struct{ *io.SectionReader }

// Close does nothing.
func (SectionCloser) Close() error { return nil }

// Opened returns the section behind what an Open function returned, if it
// is a SectionCloser of a file, not yet read, of size n.
func Opened(rc io.ReadCloser, n int64) (*io.SectionReader, bool) {
	sc, ok := rc.(SectionCloser)
	if !ok || sc.Size() != n {
		return nil, false
	}

	if pos, err := sc.Seek(0, io.SeekCurrent); err != nil || pos != 0 {
		return nil, false
	}

	if _, _, _, ok := Section(sc.SectionReader); !ok {
		return nil, false
	}

	return sc.SectionReader, true
}
