package imagecache

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-dev/kiln/internal/layerfile"
)

// treeEntry is one entry of the flat tree in the order the OCI layer's tar
// holds it: sorted by path, directories included.
type treeEntry struct {
	path string
	dir  bool
	data []byte // a manifest
	blob int    // index into the blob list, or -1
}

// treeEntries lists the tree the plan describes, and its blobs in the
// order they appear in it.
func (p *Plan) treeEntries() ([]treeEntry, []*blobSource) {
	dirs := map[string]bool{blobDir: true}
	entries := make([]treeEntry, 0, len(p.manifests)+len(p.blobs)+16)

	for name, data := range p.manifests {
		entries = append(entries, treeEntry{path: name, data: data, blob: -1})

		for d := path.Dir(name); d != "." && !dirs[d]; d = path.Dir(d) {
			dirs[d] = true
		}
	}

	for d := range dirs {
		entries = append(entries, treeEntry{path: d, dir: true, blob: -1})
	}

	byPath := make(map[string]*blobSource, len(p.blobs))

	for _, b := range p.blobs {
		name := blobPath(b.digest)
		byPath[name] = b
		entries = append(entries, treeEntry{path: name, blob: -1})
	}

	slices.SortFunc(entries, func(a, b treeEntry) int {
		switch {
		case a.path < b.path:
			return -1
		case a.path > b.path:
			return 1
		}

		return 0
	})

	blobs := make([]*blobSource, 0, len(p.blobs))

	for i := range entries {
		if b, ok := byPath[entries[i].path]; ok {
			entries[i].blob = len(blobs)
			blobs = append(blobs, b)
		}
	}

	return entries, blobs
}

// packTar streams the tree as a tar (modes 0755/0644, no times or owners:
// what talosctl's filemap writes) into blobs/ as the layer blob, reading
// each blob from its spool as it arrives.
func (w *writer) packTar(ctx context.Context, entries []treeEntry, blobs []*blobSource, spools []*spool, dir string) (*layerfile.Layer, error) {
	tmp := filepath.Join(dir, ".layer")

	f, err := createOut(tmp, !w.opts.NoSync, w.bufs)
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp) //nolint:errcheck // renamed on success

	lw := newLayerWriter(f, w.bufs)
	tw := tar.NewWriter(lw)
	buf := make([]byte, chunk)

	err = func() error {
		for _, e := range entries {
			if err := ctx.Err(); err != nil {
				return err
			}

			switch {
			case e.dir:
				if err := tw.WriteHeader(&tar.Header{Name: e.path, Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
					return err
				}
			case e.blob >= 0:
				s := spools[e.blob]

				if err := tw.WriteHeader(&tar.Header{Name: e.path, Mode: 0o644, Size: blobs[e.blob].size}); err != nil {
					return err
				}

				_, err := s.reader().writeTo(tw, buf)
				s.close()

				if err != nil {
					return err
				}
			default:
				if err := tw.WriteHeader(&tar.Header{Name: e.path, Mode: 0o644, Size: int64(len(e.data))}); err != nil {
					return err
				}

				if _, err := tw.Write(e.data); err != nil {
					return err
				}
			}
		}

		return tw.Close()
	}()

	sums, cerr := lw.Close()
	if err == nil {
		err = cerr
	}

	if err == nil {
		err = f.Close()
	} else {
		f.Close() //nolint:errcheck // already failing
	}

	if err != nil {
		return nil, fmt.Errorf("pack tree: %w", err)
	}

	l := &layerfile.Layer{Path: filepath.Join(dir, sums.Digest.Hex), Sums: sums}

	if err := os.Rename(tmp, l.Path); err != nil {
		return nil, err
	}

	return l, os.Chmod(l.Path, 0o644)
}

// writeLayout writes the OCI layout around layer into out, as talosctl
// does: an OCI image (OCI manifest and config, created, the one layer) in a
// layout whose index.json has a single descriptor with the platform. It
// returns the bytes written, the layer included.
func writeLayout(out string, layer *layerfile.Layer, platform v1.Platform, created time.Time) (int64, error) {
	if created.IsZero() {
		created = time.Unix(0, 0)
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)

	img, err := mutate.CreatedAt(img, v1.Time{Time: created.UTC()})
	if err != nil {
		return 0, err
	}

	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return 0, err
	}

	cfg, err := img.RawConfigFile()
	if err != nil {
		return 0, err
	}

	cfgName, err := img.ConfigName()
	if err != nil {
		return 0, err
	}

	man, err := img.RawManifest()
	if err != nil {
		return 0, err
	}

	manDigest, err := img.Digest()
	if err != nil {
		return 0, err
	}

	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add: img,
		Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Size:      int64(len(man)),
			Digest:    manDigest,
			Platform:  &platform,
		},
	})

	index, err := idx.RawManifest()
	if err != nil {
		return 0, err
	}

	blobs := filepath.Join(out, "blobs", "sha256")
	files := []struct {
		path string
		data []byte
	}{
		{filepath.Join(blobs, cfgName.Hex), cfg},
		{filepath.Join(blobs, manDigest.Hex), man},
		{filepath.Join(out, "oci-layout"), []byte(ociLayoutFile)},
		{filepath.Join(out, "index.json"), index},
	}

	n := layer.Sums.Size

	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, 0o644); err != nil {
			return 0, err
		}

		n += int64(len(f.data))
	}

	return n, nil
}
