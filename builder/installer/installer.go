package installer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"

	"github.com/kiln-dev/kiln/release"
)

// ErrInvalid is wrapped by every error about the caller's input (a missing
// asset, a base image of the wrong platform, a duplicate architecture), as
// opposed to failures reading or writing.
var ErrInvalid = errors.New("invalid installer input")

// Blob is file content streamed from Open, exactly Size bytes long.
type Blob struct {
	Size int64
	Open func() (io.ReadCloser, error)
}

// IsZero reports whether b was left unset.
func (b Blob) IsZero() bool { return b.Open == nil }

// FileBlob is the content of the file at path, as it is now (its size is
// taken once; a file that changes size before it is read fails the build).
func FileBlob(path string) (Blob, error) {
	st, err := os.Stat(path)
	if err != nil {
		return Blob{}, err
	}

	if !st.Mode().IsRegular() {
		return Blob{}, fmt.Errorf("%w: %s is not a regular file", ErrInvalid, path)
	}

	return Blob{Size: st.Size(), Open: func() (io.ReadCloser, error) { return os.Open(path) }}, nil
}

// BytesBlob is b as a Blob.
func BytesBlob(b []byte) Blob {
	return Blob{Size: int64(len(b)), Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
}

// Assets are the boot assets of one architecture. Talos 1.10 and later
// install with systemd-boot and take SDBoot and UKI; earlier versions take
// Kernel and Initramfs (UsesUKI tells which).
type Assets struct {
	SDBoot Blob // usr/install/<arch>/systemd-boot.efi
	UKI    Blob // usr/install/<arch>/vmlinuz.efi, the installer's UKI

	Kernel    Blob // usr/install/<arch>/vmlinuz
	Initramfs Blob // usr/install/<arch>/initramfs.xz, with the schematic's extensions
}

// File is one entry of a layer kiln writes.
type File struct {
	// Path inside the image, relative ("overlay/artifacts/arm64/dtb").
	Path string
	// Mode is the tar header's permission bits.
	Mode int64
	// Dir makes a directory entry; Content is ignored.
	Dir     bool
	Content Blob
}

// Overlay is the overlay layer of a schematic with an overlay: the overlay
// image's artifacts under overlay/artifacts/, its installer binary for the
// schematic's overlay name as overlay/installers/default, and the
// schematic's overlay options as overlay/extra-options (Talos writes them
// with gopkg.in/yaml.v3's Marshal). See OverlayFromImage.
type Overlay struct {
	// Artifacts are paths relative to overlay/artifacts/, with their
	// directories.
	Artifacts []File
	// Installer is the overlay installer binary (mode 0o755 unless
	// InstallerMode says otherwise).
	Installer     Blob
	InstallerMode int64
	// ExtraOptions is the YAML of the schematic's overlay options.
	ExtraOptions []byte
}

// Platform is one platform image of the index.
type Platform struct {
	// Arch is "amd64" or "arm64"; the image is linux/<Arch>.
	Arch string
	// Base is the linux/<Arch> image of the release's base installer
	// (release.BaseInstallerRepo): its layers come first and its container
	// config is kept.
	Base v1.Image
	// Assets go into the artifacts layer.
	Assets Assets
	// Overlay, when not nil, adds the overlay layer.
	Overlay *Overlay
}

// Options are what every platform image shares.
type Options struct {
	// Version is the Talos version; it decides the artifacts layer's
	// files. Required.
	Version release.Version
	// Created is the config's created time and every history entry's: the
	// build epoch (builder.SourceDateEpoch), never the clock. Required.
	Created time.Time
	// Dir receives the layers kiln writes, one file each, named by digest.
	// It must exist; the files must stay until the index has been written
	// out, and the caller removes them.
	Dir string
}

// UsesUKI reports whether version's installer carries systemd-boot and the
// UKI (Talos 1.10 and later) rather than the kernel and initramfs.
func UsesUKI(version release.Version) bool {
	return quirks.New(version.String()).UseSDBootForUEFI()
}

// ArtifactFiles are the files of version's artifacts layer for arch, in
// Talos's names (constants.SDBootAssetPath, UKIAssetPath, KernelAssetPath,
// InitramfsAssetPath) and mode 0, as outInstaller leaves them.
func ArtifactFiles(version release.Version, arch string, a Assets) ([]File, error) {
	if version.IsZero() {
		return nil, fmt.Errorf("%w: no Talos version", ErrInvalid)
	}

	uki := UsesUKI(version)

	dir := release.InstallDir + "/" + arch + "/"

	type want struct {
		name, field string
		blob        Blob
	}

	wants := []want{{release.KernelAsset, "Kernel", a.Kernel}, {release.InitramfsAsset, "Initramfs", a.Initramfs}}
	if uki {
		wants = []want{{release.SDBootAsset, "SDBoot", a.SDBoot}, {"vmlinuz.efi", "UKI", a.UKI}}
	}

	files := make([]File, 0, len(wants))

	for _, w := range wants {
		if w.blob.IsZero() {
			return nil, fmt.Errorf("%w: Talos %s installer for %s needs the %s asset (%s)", ErrInvalid, version, arch, w.field, dir+w.name)
		}

		files = append(files, File{Path: dir + w.name, Content: w.blob})
	}

	return files, nil
}

// Build writes the layers of every platform into opts.Dir and returns the
// index over the platform images, in the order given.
func Build(ctx context.Context, opts Options, platforms ...Platform) (*Index, error) {
	if opts.Created.IsZero() {
		return nil, fmt.Errorf("%w: Options.Created (the build epoch) is required", ErrInvalid)
	}

	if opts.Dir == "" {
		return nil, fmt.Errorf("%w: Options.Dir is required", ErrInvalid)
	}

	if opts.Version.IsZero() {
		return nil, fmt.Errorf("%w: Options.Version is required", ErrInvalid)
	}

	if len(platforms) == 0 {
		return nil, fmt.Errorf("%w: no platforms", ErrInvalid)
	}

	// Every input is checked before anything is written, so a bad arm64
	// input does not leave amd64's layers behind.
	plans := make([]*plan, 0, len(platforms))

	for _, p := range platforms {
		for _, q := range plans {
			if q.arch == p.Arch {
				return nil, fmt.Errorf("%w: architecture %q given twice", ErrInvalid, p.Arch)
			}
		}

		pl, err := planImage(opts, p)
		if err != nil {
			return nil, fmt.Errorf("installer linux/%s: %w", p.Arch, err)
		}

		plans = append(plans, pl)
	}

	images := make([]*image, 0, len(plans))

	for _, pl := range plans {
		img, err := pl.write(ctx, opts)
		if err != nil {
			return nil, fmt.Errorf("installer linux/%s: %w", pl.arch, err)
		}

		images = append(images, img)
	}

	return newIndex(images)
}

// plan is one platform image with its inputs checked.
type plan struct {
	arch      string
	base      *base
	artifacts []File
	overlay   []File // nil without an overlay
}

func planImage(opts Options, p Platform) (*plan, error) {
	if !slices.Contains(release.Arches, p.Arch) {
		return nil, fmt.Errorf("%w: unknown architecture %q (want one of %v)", ErrInvalid, p.Arch, release.Arches)
	}

	if p.Base == nil {
		return nil, fmt.Errorf("%w: no base installer image", ErrInvalid)
	}

	base, err := baseParts(p.Base, p.Arch)
	if err != nil {
		return nil, err
	}

	pl := &plan{arch: p.Arch, base: base}

	if pl.artifacts, err = ArtifactFiles(opts.Version, p.Arch, p.Assets); err != nil {
		return nil, err
	}

	if err := checkFiles(pl.artifacts); err != nil {
		return nil, err
	}

	if p.Overlay != nil {
		if pl.overlay, err = overlayFiles(p.Overlay); err != nil {
			return nil, err
		}

		if err := checkFiles(pl.overlay); err != nil {
			return nil, fmt.Errorf("overlay: %w", err)
		}
	}

	return pl, nil
}

// write writes the planned layers and assembles the image.
func (pl *plan) write(ctx context.Context, opts Options) (*image, error) {
	artifacts, err := writeLayer(ctx, opts.Dir, pl.artifacts)
	if err != nil {
		return nil, fmt.Errorf("artifacts layer: %w", err)
	}

	own := []ownLayer{{layer: artifacts, createdBy: "kiln: boot assets (" + release.InstallDir + "/" + pl.arch + "/)"}}

	if pl.overlay != nil {
		l, err := writeLayer(ctx, opts.Dir, pl.overlay)
		if err != nil {
			return nil, fmt.Errorf("overlay layer: %w", err)
		}

		own = append(own, ownLayer{layer: l, createdBy: "kiln: overlay (overlay/)"})
	}

	return assemble(pl.arch, opts.Created, pl.base, own)
}

// Paths of the overlay layer (constants.ImagerOverlay*Path without the
// leading slash).
const (
	overlayArtifactsDir  = "overlay/artifacts"
	overlayInstallerPath = "overlay/installers/default"
	overlayOptionsPath   = "overlay/extra-options"
)

// overlayFiles lays out the overlay layer as outInstaller does: the
// artifacts tree (directories included, the top one not), the installer,
// the options file (0644).
func overlayFiles(o *Overlay) ([]File, error) {
	if o.Installer.IsZero() {
		return nil, fmt.Errorf("%w: overlay without an installer binary", ErrInvalid)
	}

	files := make([]File, 0, len(o.Artifacts)+2)

	for _, f := range o.Artifacts {
		rel, err := cleanRel(f.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: overlay artifact: %w", ErrInvalid, err)
		}

		f.Path = overlayArtifactsDir + "/" + rel
		files = append(files, f)
	}

	mode := o.InstallerMode
	if mode == 0 {
		mode = 0o755
	}

	return append(files,
		File{Path: overlayInstallerPath, Mode: mode, Content: o.Installer},
		File{Path: overlayOptionsPath, Mode: 0o644, Content: BytesBlob(o.ExtraOptions)},
	), nil
}
