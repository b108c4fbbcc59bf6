// Package iox holds the one copy loop kiln uses for large data and the one
// way it replaces a small file whole.
package iox

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
)

// ChunkSize is the copy buffer: go-diskfs and disks want writes of at
// least 1 MiB (32 KiB writes cost 15-40×, go-diskfs-findings.md).
const ChunkSize = 1 << 20

// Copy copies r to w in ChunkSize chunks, stopping when ctx ends. It never
// hands r to w's ReadFrom (or w to r's WriteTo), which could bypass the
// chunk size.
func Copy(ctx context.Context, w io.Writer, r io.Reader) (int64, error) {
	buf := make([]byte, ChunkSize)

	var n int64

	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}

		m, err := r.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return n, werr
			}

			n += int64(m)
		}

		if errors.Is(err, io.EOF) {
			return n, nil
		}

		if err != nil {
			return n, err
		}
	}
}

// ContextReader reads r until ctx ends, then fails with ctx's error: a
// file read does not notice cancellation. It has only Read, so a copy
// through it keeps to its buffer.
func ContextReader(ctx context.Context, r io.Reader) io.Reader { return ctxReader{ctx, r} }

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}

	return c.r.Read(p)
}

// WriteFile replaces path by data with mode perm through a temp file in the
// same directory, synced before the rename, so that a reader (or a restart
// after a crash) finds the old file or the whole new one, never a part. The
// temp file is named ".<name>.*.tmp" and removed on failure.
func WriteFile(path string, data []byte, perm os.FileMode) (rerr error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}

	defer func() {
		if rerr != nil {
			f.Close()           //nolint:errcheck // already failing
			os.Remove(f.Name()) //nolint:errcheck // best effort
		}
	}()

	if err := f.Chmod(perm); err != nil {
		return err
	}

	if _, err := f.Write(data); err != nil {
		return err
	}

	if err := f.Sync(); err != nil {
		return err
	}

	if err := f.Close(); err != nil {
		return err
	}

	return os.Rename(f.Name(), path)
}
