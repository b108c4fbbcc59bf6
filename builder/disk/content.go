package disk

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// chunkSize is the copy granularity (style.md §5.9: ≥ 1 MiB).
const chunkSize = 4 * MiB

// Content fills one partition of the image.
type Content interface {
	// WriteContent writes the partition's bytes through t. The partition is a
	// hole (reads as zeros) when WriteContent starts; whatever it does not
	// write stays a hole. It must not write outside t.
	WriteContent(ctx context.Context, t Target) error
}

// ContentFunc adapts a function to Content.
type ContentFunc func(ctx context.Context, t Target) error

// WriteContent calls f.
func (f ContentFunc) WriteContent(ctx context.Context, t Target) error { return f(ctx, t) }

// Target is the window of the image a Content writes to. File and Offset let
// libraries that format in place (go-diskfs backends with a start offset, mtools
// `-i img@@offset`) work on the image directly.
type Target struct {
	File       *os.File // the whole disk image
	Offset     int64    // byte offset of the partition in File
	Size       int64    // partition size in bytes
	SectorSize int      // logical sector size of the disk
	Name       string   // partition name
}

// WriteAt writes p at off relative to the partition start, refusing to cross
// its end.
func (t Target) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off > t.Size || int64(len(p)) > t.Size-off {
		return 0, fmt.Errorf("partition %s: write of %d bytes at %d exceeds its size %d", t.Name, len(p), off, t.Size)
	}
	return t.File.WriteAt(p, t.Offset+off)
}

// ReadAt reads from the partition (for in-place formatters).
func (t Target) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off >= t.Size {
		return 0, io.EOF
	}
	if int64(len(p)) > t.Size-off {
		n, err := t.File.ReadAt(p[:t.Size-off], t.Offset+off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return t.File.ReadAt(p, t.Offset+off)
}

// FromReader returns Content that copies r into the partition from its start,
// in 4 MiB chunks, leaving all-zero chunks as holes. r may be shorter than the
// partition (the rest stays zero) but not longer.
func FromReader(r io.Reader) Content {
	return ContentFunc(func(ctx context.Context, t Target) error {
		_, err := copySparse(ctx, t, r)
		return err
	})
}

// FromImageFile returns Content that copies a prebuilt partition image (for
// example an ESP made elsewhere) into the partition. Only the image's data
// extents are copied (SEEK_DATA/SEEK_HOLE, copy_file_range when possible), so
// its holes stay holes. The image must not be larger than the partition.
func FromImageFile(path string) Content {
	return ContentFunc(func(ctx context.Context, t Target) error {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.Size() > t.Size {
			return fmt.Errorf("%w: image %s (%d bytes) is larger than partition %s (%d bytes)", ErrInvalid, path, st.Size(), t.Name, t.Size)
		}
		return copyExtents(ctx, t, f, st.Size())
	})
}

var zeroChunk = make([]byte, chunkSize)

func isZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeroChunk))
		if !bytes.Equal(b[:n], zeroChunk[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// copySparse copies r into t from offset 0, skipping all-zero chunks. It
// returns the number of bytes read from r.
func copySparse(ctx context.Context, t Target, r io.Reader) (int64, error) {
	buf := make([]byte, chunkSize)
	var off int64
	for {
		if err := ctx.Err(); err != nil {
			return off, err
		}
		n, err := io.ReadFull(r, buf)
		if n > 0 {
			if off+int64(n) > t.Size {
				return off, fmt.Errorf("%w: content of partition %s is larger than the partition (%d bytes)", ErrInvalid, t.Name, t.Size)
			}
			if !isZero(buf[:n]) {
				if _, werr := t.WriteAt(buf[:n], off); werr != nil {
					return off, werr
				}
			}
			off += int64(n)
		}
		switch {
		case err == io.EOF || err == io.ErrUnexpectedEOF:
			return off, nil
		case err != nil:
			return off, fmt.Errorf("partition %s: reading content: %w", t.Name, err)
		}
	}
}

// copyExtents copies the data extents of src (size bytes) to t.
func copyExtents(ctx context.Context, t Target, src *os.File, size int64) error {
	var off int64
	for off < size {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := src.Seek(off, unix.SEEK_DATA)
		if err != nil {
			if errors.Is(err, unix.ENXIO) { // only a hole remains
				return nil
			}
			// SEEK_DATA unsupported: treat everything as data.
			return copyRange(ctx, t, src, off, size)
		}
		hole, err := src.Seek(data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		hole = min(hole, size)
		if err := copyRange(ctx, t, src, data, hole); err != nil {
			return err
		}
		off = hole
	}
	return nil
}

// copyRange copies src[from:to) to the same offsets of t, with
// copy_file_range, falling back to sparse-aware read/write.
func copyRange(ctx context.Context, t Target, src *os.File, from, to int64) error {
	for from < to {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(to-from, 64*MiB)
		roff, woff := from, t.Offset+from
		c, err := unix.CopyFileRange(int(src.Fd()), &roff, int(t.File.Fd()), &woff, int(n), 0)
		if err != nil || c == 0 {
			return copyRangeRW(ctx, t, src, from, to)
		}
		from += int64(c)
	}
	return nil
}

func copyRangeRW(ctx context.Context, t Target, src *os.File, from, to int64) error {
	buf := make([]byte, chunkSize)
	for from < to {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := int(min(to-from, chunkSize))
		if _, err := src.ReadAt(buf[:n], from); err != nil {
			return fmt.Errorf("partition %s: reading image: %w", t.Name, err)
		}
		if !isZero(buf[:n]) {
			if _, err := t.WriteAt(buf[:n], from); err != nil {
				return err
			}
		}
		from += int64(n)
	}
	return nil
}
