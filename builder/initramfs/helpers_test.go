package initramfs

import (
	"archive/tar"
	"bytes"
	"io"
	"slices"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

func emptyImage() v1.Image { return empty.Image }

// tarLayer wraps an uncompressed tar stream as a layer.
func tarLayer(data []byte) (v1.Layer, error) {
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	})
}

// tarLayerOf makes a layer of regular files.
func tarLayerOf(files map[string][]byte) (v1.Layer, error) {
	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)

	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}

	slices.Sort(names)

	for _, n := range names {
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(files[n]))}); err != nil {
			return nil, err
		}

		if _, err := tw.Write(files[n]); err != nil {
			return nil, err
		}
	}

	if err := tw.Close(); err != nil {
		return nil, err
	}

	return tarLayer(buf.Bytes())
}

func getxattr(path, attr string, dest []byte) (int, error) { return syscall.Getxattr(path, attr, dest) }
