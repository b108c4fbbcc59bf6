package esp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/diskfs/go-diskfs/backend"
	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/builder/internal/kcopy"
)

// File bytes never pass through go-diskfs, which writes them one cluster
// per system call. go-diskfs is given a marker buffer of the right length
// instead; markStorage recognises the writes of slices of it (the data
// clusters of the file being written, in file order), drops them and
// records where they went; then copyContent writes the real bytes there,
// read once from the file's reader, in runs as long as the allocation is
// contiguous (copy_file_range for an *os.File or a kcopy.SectionCloser of
// one); a File with WriteAt writes them itself, in place (the builder
// assembles a UKI straight into its clusters).

// marker returns the marker for files: as long as the largest, so that
// each file is one go-diskfs Write (each rewrites both FATs), mapped and
// never touched, so it costs address space, not memory; a 4 MiB buffer
// where it cannot be mapped.
func marker(files []File) ([]byte, func()) {
	var n int64
	for _, f := range files {
		n = max(n, f.Size)
	}
	if n > copyChunk {
		if m, err := unix.Mmap(-1, 0, int(n), unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE); err == nil {
			return m, func() { _ = unix.Munmap(m) }
		}
	}
	return make([]byte, copyChunk), func() {}
}

// markStorage is the go-diskfs backend of BuildAt.
type markStorage struct {
	backend.Storage
	w *markWrites
}

func (s markStorage) Writable() (backend.WritableFile, error) {
	w, err := s.Storage.Writable()
	if err != nil {
		return nil, err
	}
	s.w.WritableFile = w
	return s.w, nil
}

// run is a piece of a file: len bytes of it from file offset at are at
// byte off of the image.
type run struct{ at, off, len int64 }

type markWrites struct {
	backend.WritableFile
	mark []byte // a slice of it written is file data
	base int64  // file offset of mark[0]
	runs []run
}

func (w *markWrites) WriteAt(b []byte, off int64) (int, error) {
	if len(b) > 0 && cap(b) <= cap(w.mark) && &b[:cap(b)][cap(b)-1] == &w.mark[:cap(w.mark)][cap(w.mark)-1] {
		at := w.base + int64(cap(w.mark)-cap(b))
		if n := len(w.runs); n > 0 {
			if r := &w.runs[n-1]; r.at+r.len == at && r.off+r.len == off {
				r.len += int64(len(b))
				return len(b), nil
			}
		}
		w.runs = append(w.runs, run{at: at, off: off, len: int64(len(b))})
		return len(b), nil
	}
	return w.WritableFile.WriteAt(b, off)
}

// copyContent writes f's bytes at runs (which cover 0..f.Size in order),
// reading f once.
func copyContent(ctx context.Context, out *os.File, f File, runs []run) error {
	if f.WriteAt != nil {
		return writeContent(ctx, out, f, runs)
	}
	src, err := f.Open()
	if err != nil {
		return fmt.Errorf("esp: open %s: %w", f.Path, err)
	}
	defer src.Close()
	if sec, ok := kcopy.Opened(src, f.Size); ok {
		outer, base, _ := sec.Outer()
		var n int64
		for _, r := range runs {
			if r.at != n {
				return fmt.Errorf("esp: %s: go-diskfs wrote byte %d, expected %d", f.Path, r.at, n)
			}
			if err := kcopy.CopyAt(ctx, out, r.off, outer, base+r.at, r.len); err != nil {
				return fmt.Errorf("esp: write %s: %w", f.Path, err)
			}
			n += r.len
		}
		if n != f.Size {
			return fmt.Errorf("esp: %s: go-diskfs wrote %d bytes of its %d", f.Path, n, f.Size)
		}
		return nil
	}
	var n int64
	var buf []byte // for readers that are not files
	if _, ok := src.(*os.File); !ok {
		buf = make([]byte, min(copyChunk, max(f.Size, 1)))
	}
	for _, r := range runs {
		if r.at != n {
			return fmt.Errorf("esp: %s: go-diskfs wrote byte %d, expected %d", f.Path, r.at, n)
		}
		m, err := copyRun(ctx, out, r.off, src, r.len, buf)
		n += m
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
				return fmt.Errorf("esp: %s: read %d bytes, declared %d", f.Path, n, f.Size)
			}
			return fmt.Errorf("esp: write %s: %w", f.Path, err)
		}
	}
	if n != f.Size {
		return fmt.Errorf("esp: %s: go-diskfs wrote %d bytes of its %d", f.Path, n, f.Size)
	}
	var one [1]byte
	if m, _ := io.ReadFull(src, one[:]); m != 0 {
		return fmt.Errorf("esp: %s: content longer than the declared %d bytes", f.Path, f.Size)
	}
	return nil
}

// writeContent has f.WriteAt write f's bytes at runs: in place when they
// are one run, else into a scratch file copied from there.
func writeContent(ctx context.Context, out *os.File, f File, runs []run) error {
	var n int64
	for _, r := range runs {
		if r.at != n {
			return fmt.Errorf("esp: %s: go-diskfs wrote byte %d, expected %d", f.Path, r.at, n)
		}
		n += r.len
	}
	if n != f.Size {
		return fmt.Errorf("esp: %s: go-diskfs wrote %d bytes of its %d", f.Path, n, f.Size)
	}
	if len(runs) == 0 {
		return nil
	}
	if len(runs) == 1 {
		if err := f.WriteAt(ctx, out, runs[0].off); err != nil {
			return fmt.Errorf("esp: write %s: %w", f.Path, err)
		}
		return nil
	}
	tmp, err := os.CreateTemp("", "kiln-esp-")
	if err != nil {
		return fmt.Errorf("esp: write %s: %w", f.Path, err)
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	if err := f.WriteAt(ctx, tmp, 0); err != nil {
		return fmt.Errorf("esp: write %s: %w", f.Path, err)
	}
	for _, r := range runs {
		if err := kcopy.CopyAt(ctx, out, r.off, tmp, r.at, r.len); err != nil {
			return fmt.Errorf("esp: write %s: %w", f.Path, err)
		}
	}
	return nil
}

// copyRun copies exactly n bytes of src to out at off.
func copyRun(ctx context.Context, out *os.File, off int64, src io.Reader, n int64, buf []byte) (int64, error) {
	var done int64
	if sf, ok := src.(*os.File); ok {
		// From its offset, in the kernel where kcopy can; a source shorter
		// than n is copied as far as it goes.
		roff, err := sf.Seek(0, io.SeekCurrent)
		if err != nil {
			return 0, err
		}
		st, err := sf.Stat()
		if err != nil {
			return 0, err
		}
		done = max(0, min(n, st.Size()-roff))
		if err := kcopy.CopyAt(ctx, out, off, sf, roff, done); err != nil {
			return 0, err
		}
		if _, err := sf.Seek(roff+done, io.SeekStart); err != nil {
			return done, err
		}
		if done < n {
			return done, io.ErrUnexpectedEOF
		}
		return done, nil
	}
	for done < n {
		if err := ctx.Err(); err != nil {
			return done, err
		}
		m, err := io.ReadFull(src, buf[:min(int64(len(buf)), n-done)])
		if m > 0 {
			if _, werr := out.WriteAt(buf[:m], off+done); werr != nil {
				return done, werr
			}
			done += int64(m)
		}
		if err != nil {
			return done, err
		}
	}
	return done, nil
}
