package artifacts

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"testing/fstest"

	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/storage"
)

// GRUB's platform directories are kept in the store as one entry each, a
// tar of the directory's regular files:
//
//	imager-<imager digest hex>-grub-<platform>   usr/lib/grub/<platform>/** of the imager
//
// A real directory is a few MiB (i386-pc ≈ 3.5 MiB, 290 files); the bounds
// refuse an imager that would make kiln hold much more in memory.
const (
	maxGrubTree  = 64 << 20
	maxGrubFiles = 4096
)

// Grub returns the imager's GRUB platform directory usr/lib/grub/<platform>
// (release.GrubPC, GrubAMD64, GrubARM64) as a file tree, what builder/grub
// reads (grub.MakeImage, BootImage) and what an ISO copies under
// boot/grub/<platform>. The imager's trees are extracted into the store in
// one pass the first time one is asked for. The tree is held in memory; it
// does not depend on b.Arch (the imager carries every platform).
func (b *BootAssets) Grub(ctx context.Context, platform string) (fs.FS, error) {
	if !slices.Contains(release.GrubPlatforms, platform) {
		return nil, fmt.Errorf("GRUB platform %q: want one of %v", platform, release.GrubPlatforms)
	}

	if b.m.store == nil {
		return nil, errors.New("GRUB files: no store to extract them into")
	}

	key := b.grubKey(platform)

	a, err := b.m.store.Open(ctx, key)
	if errors.Is(err, storage.ErrNotFound) || errors.Is(err, storage.ErrCorrupt) {
		if err := b.extractGrub(ctx); err != nil {
			return nil, err
		}

		a, err = b.m.store.Open(ctx, key)
		if errors.Is(err, storage.ErrNotFound) {
			if b.m.lacks(key) {
				return nil, fmt.Errorf("imager %s has no %s/%s: the release carries no GRUB for this platform",
					b.Imager.Digest(), release.GrubDir, platform)
			}

			return nil, fmt.Errorf("GRUB %s of imager %s: evicted from the asset cache before it was read: the cache (--asset-cache-size) is too small",
				platform, b.Imager.Digest())
		}
	}

	if err != nil {
		return nil, fmt.Errorf("GRUB %s of imager %s: %w", platform, b.Imager.Digest(), err)
	}
	defer a.Close()

	tree, err := readTree(a)
	if err != nil {
		return nil, fmt.Errorf("GRUB %s of imager %s: %w", platform, b.Imager.Digest(), err)
	}

	return tree, nil
}

func (b *BootAssets) grubKey(platform string) string {
	hex := strings.TrimPrefix(b.Imager.Digest().DigestStr(), "sha256:")

	return "imager-" + hex + "-grub-" + platform
}

// readTree loads a tree stored by extractGrub.
func readTree(r io.Reader) (fs.FS, error) {
	tree := fstest.MapFS{}
	tr := tar.NewReader(r)

	var total int64

	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return tree, nil
		}

		if err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}

		total += hdr.Size
		if total > maxGrubTree || len(tree) >= maxGrubFiles {
			return nil, errors.New("stored tree exceeds its bounds")
		}

		data, err := io.ReadAll(io.LimitReader(tr, hdr.Size))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", hdr.Name, err)
		}

		tree[hdr.Name] = &fstest.MapFile{Data: data, Mode: 0o644}
	}
}

// treeWriter is one platform directory being stored.
type treeWriter struct {
	w     storage.AssetWriter
	tw    *tar.Writer
	files int
	size  int64
}

// extractGrub stores each GRUB platform directory of the imager (see the
// layout above) in one pass over the image, once for every build that asks
// at the same time. A platform the imager lacks is remembered (lacks).
func (b *BootAssets) extractGrub(ctx context.Context) error {
	return b.m.extracts.Do(ctx, b.grubKey(""), nil, func(ctx context.Context, _ func(struct{})) error {
		img, err := b.m.src.Image(ctx, b.Imager.Digest(), "amd64")
		if err != nil {
			return err
		}

		writers := map[string]*treeWriter{}

		defer func() {
			for _, t := range writers {
				if t.w != nil {
					t.w.Cancel() //nolint:errcheck // failing or done
				}
			}
		}()

		rc := mutate.Extract(img)
		defer rc.Close()

		tr := tar.NewReader(rc)

		for {
			hdr, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}

			if err != nil {
				return fmt.Errorf("imager %s: read: %w", b.Imager.Digest(), err)
			}

			p := path.Clean(strings.TrimPrefix(hdr.Name, "./"))

			rest, ok := strings.CutPrefix(p, release.GrubDir+"/")
			if !ok || hdr.Typeflag != tar.TypeReg {
				continue
			}

			platform, rel, ok := strings.Cut(rest, "/")
			if !ok || !slices.Contains(release.GrubPlatforms, platform) || !fs.ValidPath(rel) {
				continue
			}

			t := writers[platform]
			if t == nil {
				w, err := b.m.store.Create(ctx, b.grubKey(platform))
				if err != nil {
					return err
				}

				t = &treeWriter{w: w, tw: tar.NewWriter(w)}
				writers[platform] = t
			}

			t.files++
			t.size += hdr.Size

			if t.files > maxGrubFiles || t.size > maxGrubTree {
				return fmt.Errorf("imager %s: %s/%s holds more than %d files or %d bytes", b.Imager.Digest(), release.GrubDir, platform, maxGrubFiles, maxGrubTree)
			}

			if err := t.tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: hdr.Size, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
				return err
			}

			if _, err := io.Copy(t.tw, tr); err != nil {
				return fmt.Errorf("imager %s: extract %s: %w", b.Imager.Digest(), p, err)
			}
		}

		for _, platform := range release.GrubPlatforms {
			t := writers[platform]
			if t == nil {
				b.m.mu.Lock()
				b.m.absent[b.grubKey(platform)] = true
				b.m.mu.Unlock()

				continue
			}

			if err := t.tw.Close(); err != nil {
				return err
			}

			w := t.w
			t.w = nil

			if err := w.Commit(); err != nil {
				return fmt.Errorf("imager %s: store %s/%s: %w", b.Imager.Digest(), release.GrubDir, platform, err)
			}
		}

		return nil
	})
}
