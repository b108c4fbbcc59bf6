package iso

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/diskfs/go-diskfs/backend"

	"github.com/kiln-dev/kiln/builder/internal/kcopy"
	"github.com/kiln-dev/kiln/internal/iox"
)

// The file contents never pass through go-diskfs. The staging directory
// holds placeholders of at most one byte (with the mode, owner and link
// count the file would have had staged as a copy or a hard link, as the
// Rock Ridge PX entries record them); go-diskfs lays the tree out from
// them, and its writes of their zeros are dropped (sparseWrites); relayout
// then gives each file its real size and extent, as go-diskfs would have
// from full-size files; writeContents puts each file's bytes there, read
// once from its Source or reader (in the kernel from a file or a section of
// one), or written there by its WriteAt. Before, every byte was written into the
// staging directory, then read and written again by go-diskfs in 2 KiB
// pieces.

// zeros is compared against, never written to.
var zeros [64 << 10]byte

func allZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}

// sparseStorage is the go-diskfs backend of a fresh (all-zero) region: an
// all-zero write at or past everything written so far cannot change a
// byte, so it is dropped.
type sparseStorage struct {
	backend.Storage
	w *sparseWrites
}

func (s sparseStorage) Writable() (backend.WritableFile, error) {
	w, err := s.Storage.Writable()
	if err != nil {
		return nil, err
	}
	s.w.WritableFile = w
	return s.w, nil
}

type sparseWrites struct {
	backend.WritableFile
	end int64 // end of the highest write made
}

func (w *sparseWrites) WriteAt(b []byte, off int64) (int, error) {
	if off >= w.end && allZero(b) {
		return len(b), nil
	}
	n, err := w.WritableFile.WriteAt(b, off)
	w.end = max(w.end, off+int64(n))
	return n, err
}

// staged is what stage did for one file.
type staged struct {
	f      File
	linked bool   // the Source itself is linked in: go-diskfs copied its bytes (staged at full size)
	source string // Source linked into the side directory, for the link count
	dst    string
}

// stage lays the tree out in ws: for every file an empty file of its size,
// with the metadata the old staging gave it: a Source that can be hard
// linked gets its mode and owner and the link count a link would give;
// anything else is a new 0644 file of the process. side is a directory of
// the same file system for the extra links.
func stage(ctx context.Context, ws, side string, files []File, dirs []string) ([]staged, error) {
	if err := os.Mkdir(filepath.Join(ws, ImageCacheDir), 0o755); err != nil {
		return nil, fmt.Errorf("iso: stage: %w", err)
	}
	for _, d := range dirs {
		if err := os.MkdirAll(filepath.Join(ws, filepath.FromSlash(d)), 0o755); err != nil {
			return nil, fmt.Errorf("iso: stage: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(ws, placeholder), make([]byte, blockSize), 0o444); err != nil {
		return nil, fmt.Errorf("iso: stage: %w", err)
	}
	out := make([]staged, 0, len(files))
	for i, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		s := staged{f: f, dst: filepath.Join(ws, filepath.FromSlash(f.Path))}
		if err := os.MkdirAll(filepath.Dir(s.dst), 0o755); err != nil {
			return nil, fmt.Errorf("iso: stage: %w", err)
		}
		var st *syscall.Stat_t
		if f.Source != "" {
			fi, err := os.Stat(f.Source)
			if err != nil {
				return nil, fmt.Errorf("iso: %s: %w", f.Path, err)
			}
			if !fi.Mode().IsRegular() || fi.Size() != f.Size {
				return nil, fmt.Errorf("iso: %s: source %s is not a regular file of %d bytes", f.Path, f.Source, f.Size)
			}
			link := filepath.Join(side, fmt.Sprintf("s%d", i))
			if os.Link(f.Source, link) == nil {
				s.source = link
				st, _ = fi.Sys().(*syscall.Stat_t)
			}
		}
		w, err := os.OpenFile(s.dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return nil, fmt.Errorf("iso: stage %s: %w", f.Path, err)
		}
		err = w.Truncate(min(f.Size, 1)) // relayout gives it its size
		if err == nil && s.source != "" {
			err = ownAs(w, st)
		} else if err == nil && f.Source == "" && f.Mode != 0 {
			err = w.Chmod(f.Mode.Perm())
		}
		if cerr := w.Close(); err == nil {
			err = cerr
		}
		if errors.Is(err, errCannotOwn) {
			// Stage the Source itself, as before: go-diskfs copies it.
			err = errors.Join(os.Remove(s.dst), os.Remove(s.source))
			if err == nil {
				err = os.Link(f.Source, s.dst)
			}
			s.linked, s.source = true, ""
		}
		if err != nil {
			return nil, fmt.Errorf("iso: stage %s: %w", f.Path, err)
		}
		out = append(out, s)
	}
	// The link count of a linked Source once every link to it is made
	// (one per use in the tree, the side links standing in for them).
	for i, s := range out {
		if s.source == "" {
			continue
		}
		fi, err := os.Stat(s.source)
		if err != nil {
			return nil, fmt.Errorf("iso: stage %s: %w", s.f.Path, err)
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil, fmt.Errorf("iso: stage %s: no link count", s.f.Path)
		}
		for j := uint64(1); j < uint64(st.Nlink); j++ {
			if err := os.Link(s.dst, filepath.Join(side, fmt.Sprintf("p%d-%d", i, j))); err != nil {
				return nil, fmt.Errorf("iso: stage %s: %w", s.f.Path, err)
			}
		}
	}
	return out, nil
}

var errCannotOwn = errors.New("cannot take the source's owner")

// ownAs gives w the mode and owner of st.
func ownAs(w *os.File, st *syscall.Stat_t) error {
	if st == nil {
		return errCannotOwn
	}
	if err := w.Chmod(os.FileMode(st.Mode & 0o777)); err != nil {
		return err
	}
	if st.Mode&0o7000 != 0 {
		return errCannotOwn // setuid and co.: leave it to a real link
	}
	mine, err := w.Stat()
	if err != nil {
		return err
	}
	if m, ok := mine.Sys().(*syscall.Stat_t); ok && m.Uid == st.Uid && m.Gid == st.Gid {
		return nil
	}
	if w.Chown(int(st.Uid), int(st.Gid)) != nil {
		return errCannotOwn
	}
	return nil
}

// fileRecord is the directory record of a file: its Rock Ridge path, its
// extent, and the record's byte offset in the image.
type fileRecord struct {
	path string
	extent
	at int64
}

// relayout gives every file its real size. go-diskfs laid the data out
// from placeholders of at most one byte, in its order, each file from the
// block where the previous one ends; relayout lays the same order out again
// with the real sizes, as go-diskfs would have, and rewrites the file
// records and the volume size. The hidden El Torito placeholder has no
// record: its extent is the catalog's. It returns the extent of each file
// by path.
func relayout(out *os.File, vd *volumeDescriptors, recs []fileRecord, files []staged) (map[string]extent, error) {
	sizes := make(map[string]int64, len(files))
	linked := map[string]bool{}
	for _, s := range files {
		sizes[s.f.Path] = s.f.Size
		linked[s.f.Path] = s.linked
	}
	cat := make([]byte, 64)
	if _, err := out.ReadAt(cat, vd.base+int64(vd.catalogBlock)*blockSize); err != nil {
		return nil, fmt.Errorf("iso: read boot catalog: %w", err)
	}
	items := append(recs[:len(recs):len(recs)], fileRecord{path: "/" + placeholder, at: -1,
		extent: extent{lba: binary.LittleEndian.Uint32(cat[32+8:]), size: blockSize}})
	// Equal blocks: an empty file takes none and sits where the next begins.
	sort.SliceStable(items, func(i, j int) bool {
		a, b := items[i], items[j]
		return a.lba < b.lba || a.lba == b.lba && a.size == 0 && b.size != 0
	})
	blocks := func(n int64) uint32 { return uint32((n + blockSize - 1) / blockSize) }
	compact, real := items[0].lba, items[0].lba
	extents := make(map[string]extent, len(items))
	rec := make([]byte, 16)
	for _, it := range items {
		if it.lba != compact {
			return nil, fmt.Errorf("iso: %s at block %d, expected %d: unexpected layout from go-diskfs", it.path, it.lba, compact)
		}
		compact += blocks(int64(it.size))
		size, ok := sizes[it.path]
		if !ok {
			size = int64(it.size)
		}
		e := extent{lba: real, size: uint32(size)}
		real += blocks(size)
		extents[it.path] = e
		if it.at < 0 || e == it.extent {
			continue
		}
		if linked[it.path] && e.lba != it.lba {
			// go-diskfs copied it there; it is written again where it goes.
			for o, end := int64(0), int64(blocks(int64(it.size)))*blockSize; o < end; o += int64(len(zeros)) {
				if _, err := out.WriteAt(zeros[:min(int64(len(zeros)), end-o)], vd.base+int64(it.lba)*blockSize+o); err != nil {
					return nil, fmt.Errorf("iso: clear %s: %w", it.path, err)
				}
			}
		}
		setBoth32(rec[0:], e.lba)
		setBoth32(rec[8:], e.size)
		n := 16
		if !ok {
			n = 8 // the boot catalog: normalize sets its size
		}
		if _, err := out.WriteAt(rec[:n], it.at+2); err != nil {
			return nil, fmt.Errorf("iso: write directory record: %w", err)
		}
	}
	if compact != vd.volumeBlocks {
		return nil, fmt.Errorf("iso: files end at block %d, volume at %d: unexpected layout from go-diskfs", compact, vd.volumeBlocks)
	}
	vd.volumeBlocks = real
	setBoth32(rec, real)
	if _, err := out.WriteAt(rec[:8], vd.base+vd.pvdBlock*blockSize+80); err != nil {
		return nil, fmt.Errorf("iso: write PVD: %w", err)
	}
	return extents, nil
}

// extent is where a file's data is, in blocks of the volume.
type extent struct {
	lba  uint32
	size uint32
}

// writeContents writes each file's bytes at its extent (volume block lba
// is at byte base+lba*blockSize of out).
func writeContents(ctx context.Context, out *os.File, base int64, files []staged, extents map[string]extent) error {
	var buf []byte
	for _, s := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		e, ok := extents[s.f.Path]
		if !ok {
			return fmt.Errorf("iso: %s: no directory record in the written volume", s.f.Path)
		}
		if int64(e.size) != s.f.Size {
			return fmt.Errorf("iso: %s: directory record of %d bytes, expected %d", s.f.Path, e.size, s.f.Size)
		}
		if s.f.Size == 0 {
			continue
		}
		if buf == nil {
			buf = make([]byte, copyChunk)
		}
		if err := writeContent(ctx, out, base+int64(e.lba)*blockSize, s.f, buf); err != nil {
			return err
		}
	}
	return nil
}

func writeContent(ctx context.Context, out *os.File, at int64, f File, buf []byte) (err error) {
	if f.WriteAt != nil {
		if err := f.WriteAt(ctx, out, at); err != nil {
			return fmt.Errorf("iso: write %s: %w", f.Path, err)
		}
		return nil
	}
	var src io.ReadCloser
	if f.Source != "" {
		src, err = os.Open(f.Source)
	} else {
		src, err = f.Open()
	}
	if err != nil {
		return fmt.Errorf("iso: open %s: %w", f.Path, err)
	}
	defer src.Close()
	var n int64
	if sec, ok := kcopy.Opened(src, f.Size); ok {
		if err := kcopy.CopySection(ctx, out, at, sec); err != nil {
			return fmt.Errorf("iso: write %s: %w", f.Path, err)
		}
		return nil
	} else if sf, ok := src.(*os.File); ok {
		n, err = copyFileRange(ctx, out, at, sf, f.Size)
		if err == nil && n == f.Size {
			// One byte more would be content beyond the declared size.
			var m int
			m, err = io.ReadFull(sf, buf[:1])
			n += int64(m)
			if err == io.EOF {
				err = nil
			}
		}
	} else {
		n, err = io.CopyBuffer(io.NewOffsetWriter(out, at), iox.ContextReader(ctx, io.LimitReader(src, f.Size+1)), buf)
	}
	if err != nil {
		return fmt.Errorf("iso: write %s: %w", f.Path, err)
	}
	if n != f.Size {
		return fmt.Errorf("iso: %s: read %d bytes or more, declared %d", f.Path, n, f.Size)
	}
	return nil
}

// copyFileRange copies n bytes from src's current offset to out at at
// (kcopy: in the kernel where it can), or what is left of src if it is
// shorter; it advances src's offset past what it copied.
func copyFileRange(ctx context.Context, out *os.File, at int64, src *os.File, n int64) (int64, error) {
	roff, err := src.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0, err
	}
	st, err := src.Stat()
	if err != nil {
		return 0, err
	}
	n = max(0, min(n, st.Size()-roff))
	if err := kcopy.CopyAt(ctx, out, at, src, roff, n); err != nil {
		return 0, err
	}
	if _, err := src.Seek(roff+n, io.SeekStart); err != nil {
		return n, err
	}
	return n, nil
}
