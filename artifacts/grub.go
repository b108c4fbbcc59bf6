package artifacts

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"slices"
	"strings"
	"testing/fstest"

	"github.com/kiln-dev/kiln/internal/iox"
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

// ErrNotInRelease marks a piece the release's imager does not carry (a
// GRUB platform directory of an older or a synthetic release).
var ErrNotInRelease = errors.New("not in the release")

// Grub returns the imager's GRUB platform directory usr/lib/grub/<platform>
// (release.GrubPC, GrubAMD64, GrubARM64) as a file tree, what builder/grub
// reads (grub.MakeImage, BootImage) and what an ISO copies under
// boot/grub/<platform>. The imager's trees are extracted into the store in
// one pass the first time one is asked for. The tree is held in memory; it
// does not depend on b.Arch (the imager carries every platform). A platform
// the imager lacks is an error wrapping ErrNotInRelease.
func (b *BootAssets) Grub(ctx context.Context, platform string) (fs.FS, error) {
	a, err := b.openGrub(ctx, platform)
	if err != nil {
		return nil, err
	}
	defer a.Close()

	tree, err := readTree(a)
	if err != nil {
		return nil, fmt.Errorf("GRUB %s of imager %s: %w", platform, b.Imager.Digest(), err)
	}

	return tree, nil
}

// CheckGrub says whether the imager carries the GRUB platform directory
// (nil) or not (an error wrapping ErrNotInRelease), extracting the trees
// if the store has not got them, without reading one: what a build plan
// asks before it promises a GRUB image.
func (b *BootAssets) CheckGrub(ctx context.Context, platform string) error {
	a, err := b.openGrub(ctx, platform)
	if err != nil {
		return err
	}

	return a.Close()
}

func (b *BootAssets) openGrub(ctx context.Context, platform string) (storage.Asset, error) {
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
				return nil, fmt.Errorf("imager %s has no %s/%s: %w", b.Imager.Digest(), release.GrubDir, platform, ErrNotInRelease)
			}

			return nil, fmt.Errorf("GRUB %s of imager %s: evicted from the asset cache before it was read: the cache (--asset-cache-size) is too small",
				platform, b.Imager.Digest())
		}
	}

	if err != nil {
		return nil, fmt.Errorf("GRUB %s of imager %s: %w", platform, b.Imager.Digest(), err)
	}

	return a, nil
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
// layout above) in one walk over the image (walkLayers: a directory may
// take files from every layer, so the walk reads them all), once for every
// build of the architecture that asks at the same time, committed only once every layer read
// matched its digest. A platform the imager lacks is remembered (lacks).
// The boot files of b.Arch that the store lacks are taken in the same
// walk: a GRUB or dual-boot build (the amd64 ISO's default) asks for both,
// and the imager is then read once.
func (b *BootAssets) extractGrub(ctx context.Context) error {
	return b.m.extracts.Do(ctx, b.grubFlight(), nil, func(ctx context.Context, _ func(struct{})) error {
		img, err := b.m.src.Image(ctx, b.Imager.Digest(), "amd64")
		if err != nil {
			return err
		}

		// Unless their own extraction is running (a prefetch, say).
		boot := map[string]string{}
		if b.m.extracts.Waiters(b.key("")) == 0 {
			boot = b.missingBootFiles(ctx)
		}
		bootWritten := pending{}
		writers := map[string]*treeWriter{}

		defer func() {
			bootWritten.cancel()

			for _, t := range writers {
				if t.w != nil {
					t.w.Cancel() //nolint:errcheck // failing or done
				}
			}
		}()

		err = b.m.walkLayers(ctx, img, func(hdr *tar.Header, p string, r io.Reader) error {
			if key, ok := boot[p]; ok {
				delete(boot, p)

				if hdr.Typeflag != tar.TypeReg {
					return nil
				}

				w, err := b.m.store.Create(ctx, key)
				if err != nil {
					return err
				}

				bootWritten[key] = w

				_, err = iox.Copy(ctx, w, r)

				return err
			}

			rest, ok := strings.CutPrefix(p, release.GrubDir+"/")
			if !ok || hdr.Typeflag != tar.TypeReg {
				return nil
			}

			platform, rel, ok := strings.Cut(rest, "/")
			if !ok || !slices.Contains(release.GrubPlatforms, platform) || !fs.ValidPath(rel) {
				return nil
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
				return fmt.Errorf("%s/%s holds more than %d files or %d bytes", release.GrubDir, platform, maxGrubFiles, maxGrubTree)
			}

			if err := t.tw.WriteHeader(&tar.Header{Name: rel, Mode: 0o644, Size: hdr.Size, Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
				return err
			}

			_, err := io.Copy(t.tw, r)

			return err
		})
		if err != nil {
			return fmt.Errorf("imager %s: %w", b.Imager.Digest(), err)
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

		// Boot files the imager lacks are left to their own extraction,
		// which records that.
		if err := bootWritten.commit(); err != nil {
			return fmt.Errorf("imager %s: %w", b.Imager.Digest(), err)
		}

		return nil
	})
}

// grubFlight is the flight of a GRUB walk, one per architecture: each
// takes its architecture's boot files.
func (b *BootAssets) grubFlight() string { return b.grubKey("") + "-with-" + b.Arch }

// missingBootFiles maps the image path of each boot file of b.Arch the
// store does not hold to its key.
func (b *BootAssets) missingBootFiles(ctx context.Context) map[string]string {
	want := map[string]string{}

	for _, file := range bootFiles {
		key := b.key(file)

		if a, err := b.m.store.Open(ctx, key); err == nil {
			a.Close()

			continue
		}

		want[release.InstallDir+"/"+b.Arch+"/"+file] = key
	}

	return want
}
