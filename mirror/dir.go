package mirror

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-dev/kiln/internal/iox"
)

// On disk, a Layout directory is a standard OCI image layout:
//
//	<dir>/oci-layout                 {"imageLayoutVersion":"1.0.0"}
//	<dir>/index.json                 root manifests, annotated (see layout.go)
//	<dir>/blobs/sha256/<hex>         blobs and manifests
//	<dir>/blobs/sha256/.<hex>.*.tmp  a blob being written (removed or renamed)

const ociLayoutFile = `{"imageLayoutVersion":"1.0.0"}`

func (l Layout) openSource(context.Context) (source, error) {
	if _, err := os.Stat(filepath.Join(l.Dir, "index.json")); err != nil {
		return nil, fmt.Errorf("layout %s: %w", l.Dir, err)
	}

	return newLayoutStore(dirBackend{dir: l.Dir})
}

func (l Layout) openDestination(context.Context) (destination, error) {
	if err := os.MkdirAll(filepath.Join(l.Dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("layout %s: %w", l.Dir, err)
	}

	return newLayoutStore(dirBackend{dir: l.Dir})
}

type dirBackend struct {
	dir string
}

var _ blobBackend = dirBackend{}

func (b dirBackend) path(d v1.Hash) string {
	return filepath.Join(b.dir, "blobs", d.Algorithm, d.Hex)
}

func (b dirBackend) has(d v1.Hash) (bool, error) {
	_, err := os.Stat(b.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}

	return err == nil, err
}

func (b dirBackend) open(d v1.Hash) (io.ReadCloser, error) {
	f, err := os.Open(b.path(d))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", d, ErrNotFound)
	}

	return f, err
}

func (b dirBackend) write(d v1.Hash, size int64, r io.Reader) (rerr error) {
	dir := filepath.Dir(b.path(d))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}

	f, err := os.CreateTemp(dir, "."+d.Hex+".*.tmp")
	if err != nil {
		return err
	}

	defer func() {
		if rerr != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()

	if err := copyVerified(f, r, d, size); err != nil {
		return err
	}

	if err := f.Sync(); err != nil {
		return err
	}

	if err := f.Close(); err != nil {
		return err
	}

	return os.Rename(f.Name(), b.path(d))
}

func (b dirBackend) readIndex() ([]byte, error) {
	raw, err := os.ReadFile(filepath.Join(b.dir, "index.json"))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}

	return raw, err
}

func (b dirBackend) commit(index []byte) error {
	if _, err := os.Stat(filepath.Join(b.dir, "oci-layout")); errors.Is(err, fs.ErrNotExist) {
		if err := iox.WriteFile(filepath.Join(b.dir, "oci-layout"), []byte(ociLayoutFile), 0o644); err != nil {
			return err
		}
	}

	if index == nil {
		if _, err := os.Stat(filepath.Join(b.dir, "index.json")); err == nil {
			return nil
		}

		index = []byte(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}`)
	}

	return iox.WriteFile(filepath.Join(b.dir, "index.json"), index, 0o644)
}

func (dirBackend) Close() error { return nil }

// copyBufSize is the chunk size of every blob copy (style §5.9).
const copyBufSize = 1 << 20

// copyVerified copies exactly size bytes of r to w and checks their sha256
// digest is d. WriterTo/ReaderFrom are hidden so the 1 MiB buffer is used.
func copyVerified(w io.Writer, r io.Reader, d v1.Hash, size int64) error {
	if d.Algorithm != "sha256" {
		return fmt.Errorf("blob %s: unsupported digest algorithm", d)
	}

	h := sha256.New()
	buf := make([]byte, copyBufSize)

	n, err := io.CopyBuffer(struct{ io.Writer }{io.MultiWriter(w, h)}, struct{ io.Reader }{io.LimitReader(r, size+1)}, buf)
	if err != nil {
		return err
	}

	if n != size {
		return fmt.Errorf("blob %s: %d bytes, want %d: %w", d, n, size, errShortBlob)
	}

	if got := hex.EncodeToString(h.Sum(nil)); got != d.Hex {
		return fmt.Errorf("blob %s: content has digest sha256:%s", d, got)
	}

	return nil
}
