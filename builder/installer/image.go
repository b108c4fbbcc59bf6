package installer

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/internal/layerfile"
)

// base is what an installer image takes from the base installer.
type base struct {
	config v1.Config
	descs  []v1.Descriptor // the kept layers' manifest descriptors
	layers []v1.Layer
	diffs  []v1.Hash
}

// baseParts reads the kept layers and the container config of the base
// installer, checking that it is the linux/<arch> image it is used as.
func baseParts(img v1.Image, arch string) (*base, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("base installer config: %w", err)
	}

	if cf.OS != "linux" || cf.Architecture != arch {
		return nil, fmt.Errorf("%w: base installer is %s/%s, not linux/%s", ErrInvalid, cf.OS, cf.Architecture, arch)
	}

	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("base installer manifest: %w", err)
	}

	if len(m.Layers) == 0 {
		return nil, fmt.Errorf("%w: base installer has no layers", ErrInvalid)
	}

	if len(cf.RootFS.DiffIDs) != len(m.Layers) {
		return nil, fmt.Errorf("%w: base installer config lists %d diff IDs for %d layers", ErrInvalid, len(cf.RootFS.DiffIDs), len(m.Layers))
	}

	descs := m.Layers
	// outInstaller: a base of exactly two layers is the legacy installer,
	// whose second layer holds the boot assets the new layer replaces.
	if len(descs) == 2 {
		descs = descs[:1]
	}

	b := &base{config: *cf.Config.DeepCopy()}

	for i, d := range descs {
		l, err := img.LayerByDigest(d.Digest)
		if err != nil {
			return nil, fmt.Errorf("base installer layer %s: %w", d.Digest, err)
		}

		// Only what Talos's mutate.AppendLayers keeps of a descriptor.
		b.descs = append(b.descs, v1.Descriptor{MediaType: d.MediaType, Size: d.Size, Digest: d.Digest})
		b.layers = append(b.layers, l)
		b.diffs = append(b.diffs, cf.RootFS.DiffIDs[i])
	}

	return b, nil
}

// ownLayer is a layer kiln wrote, with its history line.
type ownLayer struct {
	layer     *layerfile.Layer
	createdBy string
}

// assemble writes the config and manifest of one platform image.
func assemble(arch string, created time.Time, b *base, own []ownLayer) (*image, error) {
	at := v1.Time{Time: created.UTC()}

	cf := v1.ConfigFile{
		Architecture: arch,
		OS:           "linux",
		Created:      at,
		Config:       b.config,
		RootFS:       v1.RootFS{Type: "layers", DiffIDs: append([]v1.Hash(nil), b.diffs...)},
	}

	for i := range b.layers {
		cf.History = append(cf.History, v1.History{Created: at, CreatedBy: fmt.Sprintf("base installer layer %d", i+1)})
	}

	img := &image{layers: append([]v1.Layer(nil), b.layers...)}
	descs := append([]v1.Descriptor(nil), b.descs...)

	for _, o := range own {
		l := o.layer
		cf.RootFS.DiffIDs = append(cf.RootFS.DiffIDs, l.Sums.DiffID)
		cf.History = append(cf.History, v1.History{Created: at, CreatedBy: o.createdBy})
		descs = append(descs, v1.Descriptor{MediaType: types.OCILayer, Size: l.Sums.Size, Digest: l.Sums.Digest})
		img.layers = append(img.layers, l)
	}

	var err error

	if img.rawConfig, err = json.Marshal(cf); err != nil {
		return nil, err
	}

	img.config = digestOf(img.rawConfig)

	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: types.OCIConfigJSON, Size: int64(len(img.rawConfig)), Digest: img.config},
		Layers:        descs,
	}

	if img.rawManifest, err = json.Marshal(m); err != nil {
		return nil, err
	}

	img.digest = digestOf(img.rawManifest)
	img.arch = arch

	return img, nil
}

func digestOf(b []byte) v1.Hash {
	s := sha256.Sum256(b)

	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(s[:])}
}

// image is one platform image: fixed manifest and config bytes over the
// base's layers and kiln's file layers.
type image struct {
	arch        string
	rawManifest []byte
	rawConfig   []byte
	digest      v1.Hash
	config      v1.Hash
	layers      []v1.Layer
}

var _ v1.Image = (*image)(nil)

func (i *image) Layers() ([]v1.Layer, error)         { return append([]v1.Layer(nil), i.layers...), nil }
func (i *image) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }
func (i *image) Size() (int64, error)                { return int64(len(i.rawManifest)), nil }
func (i *image) ConfigName() (v1.Hash, error)        { return i.config, nil }
func (i *image) RawConfigFile() ([]byte, error)      { return i.rawConfig, nil }
func (i *image) Digest() (v1.Hash, error)            { return i.digest, nil }
func (i *image) RawManifest() ([]byte, error)        { return i.rawManifest, nil }

func (i *image) ConfigFile() (*v1.ConfigFile, error) {
	return v1.ParseConfigFile(bytes.NewReader(i.rawConfig))
}

func (i *image) Manifest() (*v1.Manifest, error) {
	return v1.ParseManifest(bytes.NewReader(i.rawManifest))
}

func (i *image) LayerByDigest(h v1.Hash) (v1.Layer, error) {
	if h == i.config {
		return static.NewLayer(i.rawConfig, types.OCIConfigJSON), nil
	}

	for _, l := range i.layers {
		if d, err := l.Digest(); err == nil && d == h {
			return l, nil
		}
	}

	return nil, fmt.Errorf("installer image %s has no layer %s", i.digest, h)
}

func (i *image) LayerByDiffID(h v1.Hash) (v1.Layer, error) {
	cf, err := i.ConfigFile()
	if err != nil {
		return nil, err
	}

	for n, d := range cf.RootFS.DiffIDs {
		if d == h {
			return i.layers[n], nil
		}
	}

	return nil, fmt.Errorf("installer image %s has no layer with diff ID %s", i.digest, h)
}

// Index is the installer's OCI index: one linux/<arch> image per platform.
type Index struct {
	raw    []byte
	digest v1.Hash
	images []*image
}

var _ v1.ImageIndex = (*Index)(nil)

func newIndex(images []*image) (*Index, error) {
	im := v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex}

	for _, img := range images {
		im.Manifests = append(im.Manifests, v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Size:      int64(len(img.rawManifest)),
			Digest:    img.digest,
			Platform:  &v1.Platform{Architecture: img.arch, OS: "linux"},
		})
	}

	raw, err := json.Marshal(im)
	if err != nil {
		return nil, err
	}

	return &Index{raw: raw, digest: digestOf(raw), images: images}, nil
}

func (x *Index) MediaType() (types.MediaType, error) { return types.OCIImageIndex, nil }
func (x *Index) Digest() (v1.Hash, error)            { return x.digest, nil }
func (x *Index) Size() (int64, error)                { return int64(len(x.raw)), nil }
func (x *Index) RawManifest() ([]byte, error)        { return x.raw, nil }

func (x *Index) IndexManifest() (*v1.IndexManifest, error) {
	return v1.ParseIndexManifest(bytes.NewReader(x.raw))
}

// Image returns the platform image with digest h.
func (x *Index) Image(h v1.Hash) (v1.Image, error) {
	for _, img := range x.images {
		if img.digest == h {
			return img, nil
		}
	}

	return nil, fmt.Errorf("installer index %s has no image %s", x.digest, h)
}

// ImageIndex fails: an installer index holds only images.
func (x *Index) ImageIndex(h v1.Hash) (v1.ImageIndex, error) {
	return nil, fmt.Errorf("installer index %s has no child index %s", x.digest, h)
}

// Arch returns the linux/<arch> image.
func (x *Index) Arch(arch string) (v1.Image, error) {
	for _, img := range x.images {
		if img.arch == arch {
			return img, nil
		}
	}

	return nil, fmt.Errorf("%w: installer index %s has no linux/%s image", ErrInvalid, x.digest, arch)
}
