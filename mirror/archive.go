package mirror

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// An Archive is a plain (uncompressed) POSIX tar of an OCI image layout:
//
//	blobs/sha256/<hex>   one entry per blob or manifest, in the order copied
//	...
//	oci-layout           last but one
//	index.json           last: root manifests, annotated as in a Layout
//
// Blobs are already compressed, so the tar is not. Readers index the
// entries by scanning the headers once and read blobs in place
// (io.SectionReader), so nothing is unpacked. `tar -xf` of the file gives a
// Layout directory.
//
// Writing appends to <path>.partial and, on commit, appends oci-layout and
// index.json and renames it to <path>. Adding to an existing archive renames
// it to <path>.partial first, drops its trailing oci-layout/index.json and
// appends. After an interruption, the next run scans <path>.partial, cuts a
// truncated last entry and goes on. A run with nothing new does not touch
// the file.

const (
	tarIndex     = "index.json"
	tarOCILayout = "oci-layout"
	partialExt   = ".partial"
)

func (a Archive) openSource(context.Context) (source, error) {
	f, err := os.Open(a.Path)
	if err != nil {
		return nil, fmt.Errorf("archive %s: %w", a.Path, err)
	}

	b := &tarBackend{path: a.Path, f: f}
	if err := b.scan(false); err != nil {
		f.Close()
		return nil, fmt.Errorf("archive %s: %w", a.Path, err)
	}

	if b.index == nil {
		f.Close()
		return nil, fmt.Errorf("archive %s: no index.json", a.Path)
	}

	return newLayoutStore(b)
}

func (a Archive) openDestination(context.Context) (destination, error) {
	b := &tarBackend{path: a.Path, entries: map[string]tarEntry{}}

	f, err := os.OpenFile(a.Path+partialExt, os.O_RDWR, 0)
	switch {
	case err == nil:
		b.f, b.writable = f, true
		if err := b.scan(true); err != nil {
			f.Close()
			return nil, fmt.Errorf("archive %s: %w", f.Name(), err)
		}

		if err := f.Truncate(b.end); err != nil {
			f.Close()
			return nil, err
		}
	case errors.Is(err, fs.ErrNotExist):
		f, err := os.Open(a.Path)
		if errors.Is(err, fs.ErrNotExist) {
			break
		}

		if err != nil {
			return nil, fmt.Errorf("archive %s: %w", a.Path, err)
		}

		b.f = f
		if err := b.scan(false); err != nil {
			f.Close()
			return nil, fmt.Errorf("archive %s: %w", a.Path, err)
		}
	default:
		return nil, fmt.Errorf("archive %s: %w", a.Path, err)
	}

	return newLayoutStore(b)
}

type tarEntry struct {
	hdr       int64 // where the entry's header starts
	off, size int64 // its data
}

// tarBackend is a blobBackend over a tar file.
type tarBackend struct {
	path string

	mu       sync.Mutex
	f        *os.File // nil: no file yet
	writable bool     // f is <path>.partial, open for writing at end
	entries  map[string]tarEntry
	end      int64  // where the next entry goes (writable)
	index    []byte // the last index.json read
}

var _ blobBackend = (*tarBackend)(nil)

func blobEntry(d v1.Hash) string { return "blobs/" + d.Algorithm + "/" + d.Hex }

func pad512(n int64) int64 { return (n + 511) &^ 511 }

// scan indexes the entries of b.f. Trailing oci-layout/index.json entries
// are read and left out of b.end, so appending replaces them. tolerant
// accepts a truncated tail (an interrupted .partial) and drops it.
func (b *tarBackend) scan(tolerant bool) error {
	fi, err := b.f.Stat()
	if err != nil {
		return err
	}

	size := fi.Size()
	b.entries = map[string]tarEntry{}

	if _, err := b.f.Seek(0, io.SeekStart); err != nil {
		return err
	}

	tr := tar.NewReader(b.f)
	prevEnd, metaStart := int64(0), int64(-1)
	lastBlob := ""

	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			if tolerant {
				break
			}

			return err
		}

		off, err := b.f.Seek(0, io.SeekCurrent)
		if err != nil {
			return err
		}

		if off+hdr.Size > size {
			if tolerant {
				break
			}

			return fmt.Errorf("entry %s: %w", hdr.Name, io.ErrUnexpectedEOF)
		}

		b.entries[hdr.Name] = tarEntry{hdr: prevEnd, off: off, size: hdr.Size}

		switch hdr.Name {
		case tarIndex, tarOCILayout:
			if metaStart < 0 {
				metaStart = prevEnd
			}

			if hdr.Name == tarIndex {
				if hdr.Size > maxManifestSize {
					return errors.New("index.json too large")
				}

				if b.index, err = io.ReadAll(tr); err != nil {
					return err
				}
			}
		default:
			metaStart = -1
			lastBlob = hdr.Name
		}

		prevEnd = off + pad512(hdr.Size)
	}

	b.end = prevEnd
	if metaStart >= 0 {
		b.end = metaStart
	}

	// An interrupted run may have written the last blob's bytes before
	// checking them: check that one again.
	if tolerant && lastBlob != "" && metaStart < 0 {
		e := b.entries[lastBlob]
		h := sha256.New()

		if _, err := io.Copy(h, io.NewSectionReader(b.f, e.off, e.size)); err != nil {
			return err
		}

		if "blobs/sha256/"+hex.EncodeToString(h.Sum(nil)) != lastBlob {
			delete(b.entries, lastBlob)
			b.end = e.hdr
		}
	}

	return nil
}

func (b *tarBackend) has(d v1.Hash) (bool, error) {
	b.mu.Lock()
	defer b.mu.Unlock()

	_, ok := b.entries[blobEntry(d)]

	return ok, nil
}

func (b *tarBackend) open(d v1.Hash) (io.ReadCloser, error) {
	b.mu.Lock()
	defer b.mu.Unlock()

	e, ok := b.entries[blobEntry(d)]
	if !ok {
		return nil, fmt.Errorf("%s: %w", d, ErrNotFound)
	}

	return io.NopCloser(io.NewSectionReader(b.f, e.off, e.size)), nil
}

// makeWritable turns b.f into <path>.partial, open for appending at b.end.
// Callers hold b.mu.
func (b *tarBackend) makeWritable() error {
	if b.writable {
		return nil
	}

	partial := b.path + partialExt

	if b.f != nil {
		if err := b.f.Close(); err != nil {
			return err
		}

		b.f = nil

		if err := os.Rename(b.path, partial); err != nil {
			return err
		}
	}

	f, err := os.OpenFile(partial, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}

	if err := f.Truncate(b.end); err != nil {
		f.Close()
		return err
	}

	b.f, b.writable = f, true

	return nil
}

// appendEntry writes one tar entry at b.end; on error the file is cut back.
// Callers hold b.mu.
func (b *tarBackend) appendEntry(name string, size int64, fill func(io.Writer) error) (rerr error) {
	if err := b.makeWritable(); err != nil {
		return err
	}

	start := b.end

	defer func() {
		if rerr != nil {
			if err := b.f.Truncate(start); err != nil {
				rerr = errors.Join(rerr, err)
			}
		}
	}()

	if _, err := b.f.Seek(start, io.SeekStart); err != nil {
		return err
	}

	tw := tar.NewWriter(b.f)
	if err := tw.WriteHeader(&tar.Header{
		Typeflag: tar.TypeReg,
		Name:     name,
		Size:     size,
		Mode:     0o644,
		ModTime:  time.Unix(0, 0),
		Format:   tar.FormatUSTAR,
	}); err != nil {
		return err
	}

	off, err := b.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return err
	}

	if err := fill(tw); err != nil {
		return err
	}

	if err := tw.Flush(); err != nil {
		return err
	}

	b.entries[name] = tarEntry{hdr: start, off: off, size: size}
	b.end = off + pad512(size)

	return nil
}

func (b *tarBackend) write(d v1.Hash, size int64, r io.Reader) error {
	b.mu.Lock()
	defer b.mu.Unlock()

	if _, ok := b.entries[blobEntry(d)]; ok {
		return nil
	}

	return b.appendEntry(blobEntry(d), size, func(w io.Writer) error {
		return copyVerified(w, r, d, size)
	})
}

func (b *tarBackend) readIndex() ([]byte, error) { return b.index, nil }

func (b *tarBackend) commit(index []byte) error {
	b.mu.Lock()
	defer b.mu.Unlock()

	if index == nil && b.f != nil && !b.writable {
		return nil // a complete archive with nothing new
	}

	if index == nil {
		index = b.index
	}

	if index == nil {
		index = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	}

	for _, e := range []struct {
		name string
		data []byte
	}{{tarOCILayout, []byte(ociLayoutFile)}, {tarIndex, index}} {
		if err := b.appendEntry(e.name, int64(len(e.data)), func(w io.Writer) error {
			_, err := w.Write(e.data)
			return err
		}); err != nil {
			return err
		}
	}

	// End-of-archive: two zero blocks.
	if _, err := b.f.WriteAt(make([]byte, 1024), b.end); err != nil {
		return err
	}

	if err := b.f.Truncate(b.end + 1024); err != nil {
		return err
	}

	if err := b.f.Sync(); err != nil {
		return err
	}

	if err := os.Rename(b.path+partialExt, b.path); err != nil {
		return err
	}

	b.writable = false
	b.index = index
	// The next append replaces oci-layout and index.json again.
	b.end = b.entries[tarOCILayout].hdr
	delete(b.entries, tarIndex)
	delete(b.entries, tarOCILayout)

	return nil
}

func (b *tarBackend) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()

	if b.f == nil {
		return nil
	}

	err := b.f.Close()
	b.f = nil

	return err
}
