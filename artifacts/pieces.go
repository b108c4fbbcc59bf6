package artifacts

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// The pieces of a release kiln builds from, each handed out verified: the
// image it comes from is read at the digest the version's release lock
// records and passes the Checker as the upstream repository it stands for
// before anything of it is used. Files extracted from an image are kept in
// the asset store (Deps.Store), under the same size bound as the assets
// built from them, one entry each:
//
//	imager-<imager digest hex>-<arch>-<file, "." as "_">   usr/install/<arch>/<file> of the imager
//
// An entry is checked against the digest recorded when it was stored each
// time it is first opened (storage.Assets.Open), and written again from the
// image when it is missing (never extracted, evicted, or found corrupt).

// BootAssets are the boot files of one Talos version for one architecture:
// usr/install/<arch>/ of the version's imager (release.KernelAsset,
// InitramfsAsset, SDBootAsset, SDStubAsset). Later pieces of the imager
// (GRUB's module trees, boot.img) are more files of the same extraction.
type BootAssets struct {
	Version release.Version
	Arch    string
	// Imager is the verified imager the files come from; its digest names
	// them in build plans.
	Imager signing.Verified

	m *Manager
}

// BootAssets resolves the (locked, verified) imager of v for arch. Nothing
// is extracted until a file is opened.
func (m *Manager) BootAssets(ctx context.Context, v release.Version, arch string) (*BootAssets, error) {
	if !slices.Contains(release.Arches, arch) {
		return nil, fmt.Errorf("boot assets of Talos %s: architecture %q: want one of %v", v, arch, release.Arches)
	}

	imager, err := m.pinned(ctx, release.ImagerRepo, v)
	if err != nil {
		return nil, fmt.Errorf("imager %s: %w", v, err)
	}

	return &BootAssets{Version: v, Arch: arch, Imager: imager, m: m}, nil
}

// bootFiles are the files of usr/install/<arch>/ that are extracted.
var bootFiles = []string{release.KernelAsset, release.InitramfsAsset, release.SDBootAsset, release.SDStubAsset}

// Open opens one boot file, extracting the imager's boot files for the
// architecture into the store first if it is not there. The caller closes
// it.
func (b *BootAssets) Open(ctx context.Context, file string) (storage.Asset, error) {
	if !slices.Contains(bootFiles, file) {
		return nil, fmt.Errorf("boot asset %q: want one of %v", file, bootFiles)
	}

	if b.m.store == nil {
		return nil, errors.New("boot assets: no store to extract them into")
	}

	key := b.key(file)

	a, err := b.m.store.Open(ctx, key)
	if err == nil || (!errors.Is(err, storage.ErrNotFound) && !errors.Is(err, storage.ErrCorrupt)) {
		return a, err
	}

	// A GRUB walk in progress takes the boot files too (extractGrub):
	// joined rather than raced, unless their own extraction runs already.
	if b.m.extracts.Waiters(b.key("")) == 0 && b.m.extracts.Waiters(b.grubFlight()) > 0 {
		if err := b.extractGrub(ctx); err != nil {
			return nil, err
		}

		if a, err := b.m.store.Open(ctx, key); err == nil {
			return a, nil
		}
	}

	if err := b.extract(ctx); err != nil {
		return nil, err
	}

	a, err = b.m.store.Open(ctx, key)
	if !errors.Is(err, storage.ErrNotFound) {
		return a, err
	}

	if b.m.lacks(key) {
		return nil, fmt.Errorf("imager %s has no %s/%s/%s", b.Imager.Digest(), release.InstallDir, b.Arch, file)
	}

	// Extracted, and evicted by the builds committing meanwhile.
	return nil, fmt.Errorf("boot asset %s of imager %s: evicted from the asset cache before it was read: the cache (--asset-cache-size) is too small for the boot files of a release",
		file, b.Imager.Digest())
}

// key is the store entry of a boot file (see the layout above).
func (b *BootAssets) key(file string) string {
	hex := strings.TrimPrefix(b.Imager.Digest().DigestStr(), "sha256:")

	return "imager-" + hex + "-" + b.Arch + "-" + strings.ReplaceAll(file, ".", "_")
}

// extract writes the imager's boot files for the architecture into the
// store, once for every build that asks at the same time.
func (b *BootAssets) extract(ctx context.Context) error {
	return b.m.extracts.Do(ctx, b.key(""), nil, func(ctx context.Context, _ func(struct{})) error {
		// Every platform image of the imager carries both architectures'
		// assets; any one will do.
		img, err := b.m.src.Image(ctx, b.Imager.Digest(), "amd64")
		if err != nil {
			return err
		}

		prefix := release.InstallDir + "/" + b.Arch + "/"

		want := map[string]string{}
		for _, file := range bootFiles {
			want[prefix+file] = b.key(file)
		}

		found, err := b.m.extractFiles(ctx, img, want)
		if err != nil {
			return fmt.Errorf("imager %s: %w", b.Imager.Digest(), err)
		}

		if len(found) == 0 {
			return fmt.Errorf("imager %s has no %s boot assets", b.Imager.Digest(), prefix)
		}

		return nil
	})
}

// extractFiles reads img's files (walkLayers) and stores each regular file
// want maps (path in the image, "usr/install/amd64/vmlinuz") to a store
// key, digested as it is written (never read back), all committed once
// every layer they came from matched its digest: a walk that fails leaves
// none of them. The walk stops at the layer where the last of them was
// found. It returns the keys it stored; the keys of want the image lacks
// are remembered (lacks).
func (m *Manager) extractFiles(ctx context.Context, img v1.Image, want map[string]string) (map[string]bool, error) {
	written := pending{}
	defer written.cancel()

	found := map[string]bool{}

	err := m.walkLayers(ctx, img, func(hdr *tar.Header, name string, r io.Reader) error {
		key, ok := want[name]
		if !ok || found[key] {
			return nil
		}

		// Found, whatever its type: a lower layer's file of this name is
		// hidden by it.
		found[key] = true

		if hdr.Typeflag == tar.TypeReg {
			w, err := m.store.Create(ctx, key)
			if err != nil {
				return err
			}

			written[key] = w

			if _, err := pipeCopy(ctx, w, r, &m.chunks); err != nil {
				return fmt.Errorf("extract: %w", err)
			}
		}

		if len(found) == len(want) {
			return errWalkDone
		}

		return nil
	})
	if err != nil {
		return nil, err
	}

	stored := map[string]bool{}
	for key := range written {
		stored[key] = true
	}

	if err := written.commit(); err != nil {
		return nil, err
	}

	m.mu.Lock()
	defer m.mu.Unlock()

	for _, key := range want {
		if !stored[key] {
			m.absent[key] = true
		}
	}

	return stored, nil
}

// lacks reports whether an extraction found no file for key in its image.
func (m *Manager) lacks(key string) bool {
	m.mu.Lock()
	defer m.mu.Unlock()

	return m.absent[key]
}

// Image is a verified image of a release that kiln builds from: a system
// extension, an overlay, the installer base.
type Image struct {
	// Name is the image as the release names it: "siderolabs/gvisor",
	// "siderolabs/installer-base".
	Name string
	// Verified is the image in the mirror, repository@digest (an index):
	// what build plans name.
	Verified signing.Verified

	src *Source
}

// Platform returns the linux/<arch> image of i.
func (i *Image) Platform(ctx context.Context, arch string) (v1.Image, error) {
	return i.src.Image(ctx, i.Verified.Digest(), arch)
}

// ExtensionError is a schematic extension the release does not have.
type ExtensionError struct {
	Name    string
	Version release.Version
}

func (e *ExtensionError) Error() string {
	return fmt.Sprintf("extension %q is not available for Talos %s (see /version/%s/extensions/official)", e.Name, e.Version, e.Version)
}

// Extension finds an official system extension of v in the version's
// (locked, verified) catalog, by name or by one of the public factory's
// old names (release.FindExtension), and verifies its image, at the digest
// the catalog names, as the upstream repository it stands for. An
// extension the catalog lacks is an *ExtensionError.
func (m *Manager) Extension(ctx context.Context, v release.Version, name string) (*Image, error) {
	catalog, err := m.extensionsOf(ctx, v)
	if err != nil {
		return nil, err
	}

	ext, ok := release.FindExtension(catalog, name)
	if !ok {
		return nil, &ExtensionError{Name: name, Version: v}
	}

	repo, err := m.src.Repo(release.MirrorPath(ext.Ref.Context()))
	if err != nil {
		return nil, err
	}

	verified, err := m.verifyMirrored(ctx, repo.Digest(ext.Digest))
	if err != nil {
		return nil, fmt.Errorf("extension %s: %w", ext.Name(), err)
	}

	return &Image{Name: ext.Name(), Verified: verified, src: m.src}, nil
}

// Overlay would find an overlay of v in the version's overlays catalog,
// verified like an extension; kiln builds no overlays yet, so it is
// errors.ErrUnsupported. Extracting an overlay's files (its artifacts and
// installer) goes with BootAssets' extraction: more keys of extractFiles.
func (m *Manager) Overlay(_ context.Context, v release.Version, name string) (*Image, error) {
	return nil, fmt.Errorf("overlay %q of Talos %s: %w", name, v, errors.ErrUnsupported)
}

// InstallerBase is the image v's installers are built from
// (release.BaseInstallerRepo: installer-base from 1.10, the full installer
// before), at its locked digest, verified. Platform picks an architecture.
func (m *Manager) InstallerBase(ctx context.Context, v release.Version) (*Image, error) {
	path := release.BaseInstallerRepo(v)

	verified, err := m.pinned(ctx, path, v)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", path, v, err)
	}

	return &Image{Name: path, Verified: verified, src: m.src}, nil
}
