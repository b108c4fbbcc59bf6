package artifacts

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/kiln-dev/kiln/internal/iox"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// Talosctl is the talosctl-all image of a Talos version (from 1.11): a
// talosctl binary for each OS and architecture at the image root, which
// the public factory serves under /talosctl/<version>/. Binaries are
// extracted into the store on first use, one entry each:
//
//	talosctl-<image digest hex>-<file, "." as "_">
type Talosctl struct {
	Version release.Version
	// Image is the verified talosctl-all index.
	Image signing.Verified

	m *Manager
}

// talosctlName is a binary's file name as talosctl-all lays them out
// (talosctl-<os>-<arch>[.exe]); the factory splits the rest at "-" into
// exactly two parts and refuses the image otherwise.
var talosctlName = regexp.MustCompile(`^talosctl-[a-z0-9]+-[a-z0-9]+(\.exe)?$`)

// ErrNoTalosctl is a Talos version that publishes no talosctl-all (before
// 1.11): the factory lists no binaries for it.
var ErrNoTalosctl = errors.New("no talosctl-all before Talos 1.11")

// Talosctl resolves the (locked, verified) talosctl-all image of version.
// Nothing is read from it until Files or Open.
func (m *Manager) Talosctl(ctx context.Context, version string) (*Talosctl, error) {
	v, err := m.CheckVersion(ctx, version)
	if err != nil {
		return nil, err
	}

	if !release.HasTalosctlAll(v) {
		return nil, fmt.Errorf("talosctl of Talos %s: %w", v, ErrNoTalosctl)
	}

	img, err := m.pinned(ctx, release.TalosctlAllRepo, v)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", release.TalosctlAllRepo, v, err)
	}

	return &Talosctl{Version: v, Image: img, m: m}, nil
}

// Files lists the binaries of the image, sorted, reading its file tree once
// per image digest and process.
func (t *Talosctl) Files(ctx context.Context) ([]string, error) {
	key := "talosctl-list:" + t.Image.Digest().DigestStr()

	v, err, _ := t.m.group.Do(key, func() (any, error) {
		t.m.mu.Lock()
		files, ok := t.m.talosctlFiles[key]
		t.m.mu.Unlock()

		if ok {
			return files, nil
		}

		files, err := t.walk(ctx, func(name string, _ io.Reader) error { return nil })
		if err != nil {
			return nil, err
		}

		t.m.mu.Lock()
		if t.m.talosctlFiles == nil {
			t.m.talosctlFiles = map[string][]string{}
		}

		t.m.talosctlFiles[key] = files
		t.m.mu.Unlock()

		return files, nil
	})
	if err != nil {
		return nil, err
	}

	return slices.Clone(v.([]string)), nil
}

// walk calls fn for each talosctl binary of the image (its amd64 image, as
// the factory reads; every platform image carries every binary) and
// returns their names, sorted. An image without any is an error, as the
// factory's "failed to find talosctl binaries".
func (t *Talosctl) walk(ctx context.Context, fn func(name string, r io.Reader) error) ([]string, error) {
	img, err := t.m.src.Image(ctx, t.Image.Digest(), "amd64")
	if err != nil {
		return nil, err
	}

	rc := mutate.Extract(img)
	defer rc.Close()

	tr := tar.NewReader(rc)

	var names []string

	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return nil, fmt.Errorf("%s %s: read: %w", release.TalosctlAllRepo, t.Image.Digest().DigestStr(), err)
		}

		name := strings.TrimPrefix(hdr.Name, "./")
		if hdr.Typeflag != tar.TypeReg || !talosctlName.MatchString(name) {
			continue
		}

		names = append(names, name)

		if err := fn(name, tr); err != nil {
			return nil, err
		}
	}

	if len(names) == 0 {
		return nil, fmt.Errorf("%s %s has no talosctl binaries", release.TalosctlAllRepo, t.Image.Digest().DigestStr())
	}

	slices.Sort(names)

	return names, nil
}

// FileError is a file the talosctl-all image does not have.
type FileError struct {
	Version release.Version
	File    string
	Have    []string
}

func (e *FileError) Error() string {
	return fmt.Sprintf("talosctl of Talos %s has no %q (it has %s)", e.Version, e.File, strings.Join(e.Have, ", "))
}

// Open opens one binary, extracting it into the store first if it is not
// there. A name the image does not have is a *FileError. The caller closes
// the asset.
func (t *Talosctl) Open(ctx context.Context, file string) (storage.Asset, error) {
	files, err := t.Files(ctx)
	if err != nil {
		return nil, err
	}

	if !slices.Contains(files, file) {
		return nil, &FileError{Version: t.Version, File: file, Have: files}
	}

	if t.m.store == nil {
		return nil, errors.New("talosctl: no store to extract it into")
	}

	hex := strings.TrimPrefix(t.Image.Digest().DigestStr(), "sha256:")
	key := "talosctl-" + hex + "-" + strings.ReplaceAll(file, ".", "_")

	a, err := t.m.store.Open(ctx, key)
	if err == nil || (!errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrCorrupt)) {
		return a, err
	}

	err = t.m.extracts.Do(ctx, key, nil, func(ctx context.Context, _ func(struct{})) error {
		// Committed after the walk: mutate.Extract checks each layer's
		// digest once it has read the layer, after handing out its files.
		written := pending{}
		defer written.cancel()

		_, err := t.walk(ctx, func(name string, r io.Reader) error {
			if name != file || written[key] != nil {
				return nil
			}

			w, err := t.m.store.Create(ctx, key)
			if err != nil {
				return err
			}

			written[key] = w

			_, err = iox.Copy(ctx, w, r)

			return err
		})
		if err != nil {
			return err
		}

		return written.commit()
	})
	if err != nil {
		return nil, fmt.Errorf("extract %s: %w", file, err)
	}

	a, err = t.m.store.Open(ctx, key)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, fmt.Errorf("talosctl %s of Talos %s: evicted from the asset cache before it was read: the cache (--asset-cache-size) is too small", file, t.Version)
	}

	return a, err
}
