package compress

import (
	"errors"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// source yields the input in chunks and knows which ranges are holes.
type source struct {
	r io.Reader

	f        *os.File // non-nil: sparse-aware positional reads
	off      int64
	size     int64
	nextData int64 // first data offset ≥ off (size when none), valid when dataKnown
	known    bool
}

func newSource(r io.Reader) *source {
	s := &source{r: r}
	if f, ok := r.(*os.File); ok {
		st, err := f.Stat()
		if err == nil && st.Mode().IsRegular() {
			pos, err := f.Seek(0, io.SeekCurrent)
			if err == nil {
				s.f, s.off, s.size = f, pos, st.Size()
			}
		}
	}
	return s
}

// next fills buf (entirely, unless at EOF) and reports whether the chunk is
// known to be all zeros, in which case buf's content is unspecified. n == 0
// means EOF.
func (s *source) next(buf []byte) (n int, zero bool, err error) {
	if s.f == nil {
		n, err = io.ReadFull(s.r, buf)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			err = nil
		}
		return n, false, err
	}
	want := min(int64(len(buf)), s.size-s.off)
	if want <= 0 {
		return 0, false, nil
	}
	if !s.known || s.nextData < s.off {
		d, err := s.f.Seek(s.off, unix.SEEK_DATA)
		switch {
		case err == nil:
			s.nextData = d
		case errors.Is(err, unix.ENXIO):
			s.nextData = s.size
		default:
			s.nextData = s.off // SEEK_DATA unsupported: everything is data
		}
		s.known = true
	}
	if s.nextData >= s.off+want {
		s.off += want
		return int(want), true, nil
	}
	n, err = s.f.ReadAt(buf[:want], s.off)
	if err == io.EOF && int64(n) == want {
		err = nil
	}
	if err != nil {
		return n, false, err
	}
	s.off += want
	// Keep the file offset in step, as a plain Read would.
	if _, err := s.f.Seek(s.off, io.SeekStart); err != nil {
		return n, false, err
	}
	return n, false, nil
}
