package installer

import (
	"archive/tar"
	"cmp"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-dev/kiln/internal/iox"
	"github.com/kiln-dev/kiln/internal/layerfile"
)

// gzipLevel is go-containerregistry's default for layers
// (tarball.LayerFromOpener), which Talos's filemap.Layer uses: the same tar
// bytes then give the same compressed bytes as the imager's.
const gzipLevel = gzip.BestSpeed

// cleanRel checks that p is a clean relative slash path inside the layer.
func cleanRel(p string) (string, error) {
	if p == "" || strings.HasPrefix(p, "/") || path.Clean(p) != p || p == "." || p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("path %q is not a clean relative path", p)
	}

	return p, nil
}

// writeLayer writes files as a gzip-compressed tar into a file of dir,
// hashing the tar (diff ID) and the compressed stream (digest) as it goes,
// and names the file by its digest. Entries are sorted by path and carry
// only name, mode, size and type, as Talos's filemap.Build writes them.
func writeLayer(ctx context.Context, dir string, files []File) (*layerfile.Layer, error) {
	files = sortedFiles(files)
	if err := checkFiles(files); err != nil {
		return nil, err
	}

	tmp, err := os.CreateTemp(dir, "layer-*.partial")
	if err != nil {
		return nil, err
	}

	committed := false

	defer func() {
		if !committed {
			tmp.Close()           //nolint:errcheck // already failing
			os.Remove(tmp.Name()) //nolint:errcheck // best effort: a partial layer is never used
		}
	}()

	digest, diffID := sha256.New(), sha256.New()
	size := &countWriter{}

	gz, err := gzip.NewWriterLevel(io.MultiWriter(tmp, digest, size), gzipLevel)
	if err != nil {
		return nil, err
	}

	tw := tar.NewWriter(io.MultiWriter(gz, diffID))

	for _, f := range files {
		if err := writeEntry(ctx, tw, f); err != nil {
			return nil, err
		}
	}

	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("closing tar: %w", err)
	}

	if err := gz.Close(); err != nil {
		return nil, fmt.Errorf("closing gzip: %w", err)
	}

	if err := tmp.Close(); err != nil {
		return nil, err
	}

	sums := layerfile.Sums{Digest: sum(digest), DiffID: sum(diffID), Size: size.n}
	l := &layerfile.Layer{Path: filepath.Join(dir, sums.Digest.Algorithm+"-"+sums.Digest.Hex+".tar.gz"), Sums: sums}

	// The same content may already be there (the other arch, a rebuild):
	// the rename replaces it with identical bytes.
	if err := os.Rename(tmp.Name(), l.Path); err != nil {
		return nil, err
	}

	committed = true

	return l, nil
}

func sortedFiles(files []File) []File {
	files = slices.Clone(files)
	slices.SortFunc(files, func(a, b File) int { return cmp.Compare(a.Path, b.Path) })

	return files
}

// checkFiles checks a layer's entries: clean relative paths, each once,
// content for every file.
func checkFiles(files []File) error {
	files = sortedFiles(files)

	for i, f := range files {
		if _, err := cleanRel(f.Path); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}

		if i > 0 && files[i-1].Path == f.Path {
			return fmt.Errorf("%w: path %q given twice", ErrInvalid, f.Path)
		}

		if !f.Dir && (f.Content.IsZero() || f.Content.Size < 0) {
			return fmt.Errorf("%w: %s has no content", ErrInvalid, f.Path)
		}
	}

	return nil
}

// writeEntry writes one tar entry with Talos's header fields.
func writeEntry(ctx context.Context, tw *tar.Writer, f File) error {
	if f.Dir {
		if err := tw.WriteHeader(&tar.Header{Name: f.Path, Mode: f.Mode, Typeflag: tar.TypeDir}); err != nil {
			return fmt.Errorf("tar header %s: %w", f.Path, err)
		}

		return nil
	}

	if err := tw.WriteHeader(&tar.Header{Name: f.Path, Mode: f.Mode, Size: f.Content.Size}); err != nil {
		return fmt.Errorf("tar header %s: %w", f.Path, err)
	}

	rc, err := f.Content.Open()
	if err != nil {
		return fmt.Errorf("opening %s: %w", f.Path, err)
	}
	defer rc.Close() //nolint:errcheck // read-only

	n, err := iox.Copy(ctx, tw, io.LimitReader(rc, f.Content.Size))
	if err != nil {
		return fmt.Errorf("writing %s: %w", f.Path, err)
	}

	if n != f.Content.Size {
		return fmt.Errorf("%s: content is %d bytes, %d were announced", f.Path, n, f.Content.Size)
	}

	// A longer source means the announced size was stale: the layer would
	// silently hold a truncated file.
	var one [1]byte
	if m, _ := io.ReadFull(rc, one[:]); m > 0 {
		return fmt.Errorf("%s: content is longer than the %d bytes announced", f.Path, f.Content.Size)
	}

	return nil
}

func sum(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))

	return len(p), nil
}
