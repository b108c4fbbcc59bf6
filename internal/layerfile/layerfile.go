// Package layerfile is an OCI layer kept as a gzip file whose digests were
// computed while it was written, so that learning them never costs a read
// of the file (go-containerregistry's tarball layers read it back).
package layerfile

import (
	"errors"
	"fmt"
	"io"
	"os"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
)

// Sums are what the writer of a layer file learned as it wrote it.
type Sums struct {
	// Digest is the sha256 of the gzip file, DiffID that of the tar in it.
	Digest, DiffID v1.Hash
	// Size is the gzip file's length.
	Size int64
}

// Layer is the gzip-compressed tar at Path; Sums must describe its bytes,
// nothing here checks them.
type Layer struct {
	Path string
	Sums Sums
}

var _ v1.Layer = (*Layer)(nil)

func (l *Layer) Digest() (v1.Hash, error)            { return l.Sums.Digest, nil }
func (l *Layer) DiffID() (v1.Hash, error)            { return l.Sums.DiffID, nil }
func (l *Layer) Size() (int64, error)                { return l.Sums.Size, nil }
func (l *Layer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l *Layer) Compressed() (io.ReadCloser, error)  { return os.Open(l.Path) }

func (l *Layer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.Path)
	if err != nil {
		return nil, err
	}

	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close() //nolint:errcheck // read-only, already failing

		return nil, fmt.Errorf("layer %s: %w", l.Sums.Digest, err)
	}

	return &gunzipCloser{Reader: zr, f: f}, nil
}

type gunzipCloser struct {
	*gzip.Reader
	f *os.File
}

func (g *gunzipCloser) Close() error {
	return errors.Join(g.Reader.Close(), g.f.Close())
}
