package release

import (
	"archive/tar"
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"go.yaml.in/yaml/v4"
)

// ErrInvalidCatalog marks a catalog image whose content cannot be read.
var ErrInvalidCatalog = errors.New("invalid catalog")

// Extension is one entry of an extensions catalog.
type Extension struct {
	// Line is the image-digests line, the key of descriptions.yaml.
	Line string
	// Ref is the upstream tagged reference, e.g. ghcr.io/siderolabs/gvisor:20240826.0.
	Ref name.Tag
	// Digest is "sha256:<hex>".
	Digest      string
	Author      string
	Description string
}

// Name is the extension's name as schematics spell it: the repository path,
// e.g. "siderolabs/gvisor".
func (e Extension) Name() string { return e.Ref.RepositoryStr() }

// Overlay is one entry of an overlays catalog.
type Overlay struct {
	// Name is the overlay's name within its image, e.g. "rpi_generic".
	Name string
	// Ref is the upstream tagged reference of the overlay image.
	Ref name.Tag
	// Digest is "sha256:<hex>".
	Digest string
}

// Image is the overlay image's repository path, e.g. "siderolabs/sbc-raspberrypi".
func (o Overlay) Image() string { return o.Ref.RepositoryStr() }

type description struct {
	Author      string `yaml:"author"`
	Description string `yaml:"description"`
}

// ParseExtensions reads an extensions catalog from its two files. Lines
// without a digest are skipped, as upstream does; descriptions are optional.
func ParseExtensions(imageDigests, descriptions []byte) ([]Extension, error) {
	var descs map[string]description

	if len(bytes.TrimSpace(descriptions)) > 0 {
		if err := yaml.Unmarshal(descriptions, &descs); err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalidCatalog, DescriptionsFile, err)
		}
	}

	var exts []Extension

	sc := bufio.NewScanner(bytes.NewReader(imageDigests))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())

		tagged, digest, ok := strings.Cut(line, "@")
		if !ok {
			continue
		}

		ref, err := name.NewTag(tagged, name.StrictValidation)
		if err != nil {
			return nil, fmt.Errorf("%w: %s line %d: %w", ErrInvalidCatalog, ImageDigestsFile, n, err)
		}

		if _, err := v1.NewHash(digest); err != nil {
			return nil, fmt.Errorf("%w: %s line %d: digest %q: %w", ErrInvalidCatalog, ImageDigestsFile, n, digest, err)
		}

		d := descs[line]
		exts = append(exts, Extension{Line: line, Ref: ref, Digest: digest, Author: d.Author, Description: d.Description})
	}

	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidCatalog, ImageDigestsFile, err)
	}

	return exts, nil
}

type overlaysFile struct {
	Overlays []struct {
		Name   string `yaml:"name"`
		Image  string `yaml:"image"`
		Digest string `yaml:"digest"`
	} `yaml:"overlays"`
}

// ParseOverlays reads overlays.yaml.
func ParseOverlays(data []byte) ([]Overlay, error) {
	var f overlaysFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidCatalog, OverlaysFile, err)
	}

	out := make([]Overlay, 0, len(f.Overlays))

	for i, o := range f.Overlays {
		ref, err := name.NewTag(o.Image, name.StrictValidation)
		if err != nil {
			return nil, fmt.Errorf("%w: %s overlay %d (%s): %w", ErrInvalidCatalog, OverlaysFile, i, o.Name, err)
		}

		if _, err := v1.NewHash(o.Digest); err != nil {
			return nil, fmt.Errorf("%w: %s overlay %d (%s): digest %q: %w", ErrInvalidCatalog, OverlaysFile, i, o.Name, o.Digest, err)
		}

		out = append(out, Overlay{Name: o.Name, Ref: ref, Digest: o.Digest})
	}

	return out, nil
}

// maxCatalogFile bounds what is read of one catalog file: they are text
// listings of a few KiB, and a larger one is a mistake or an attack.
const maxCatalogFile = 16 << 20

// ReadFiles returns the named files of an image's flattened filesystem
// (leading "/" or "./" ignored). Missing files are absent from the map.
func ReadFiles(img v1.Image, files ...string) (map[string][]byte, error) {
	want := map[string]bool{}
	for _, f := range files {
		want[f] = true
	}

	rc := mutate.Extract(img)
	defer rc.Close()

	out := map[string][]byte{}
	tr := tar.NewReader(rc)

	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out, nil
		}

		if err != nil {
			return nil, fmt.Errorf("read image filesystem: %w", err)
		}

		p := strings.TrimPrefix(strings.TrimPrefix(hdr.Name, "./"), "/")
		if !want[p] || hdr.Typeflag != tar.TypeReg {
			continue
		}

		data, err := io.ReadAll(io.LimitReader(tr, maxCatalogFile+1))
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}

		if len(data) > maxCatalogFile {
			return nil, fmt.Errorf("%w: %s is larger than %d bytes", ErrInvalidCatalog, p, maxCatalogFile)
		}

		out[p] = data
	}
}

// ExtensionsFromImage reads the extensions catalog image.
func ExtensionsFromImage(img v1.Image) ([]Extension, error) {
	files, err := ReadFiles(img, ImageDigestsFile, DescriptionsFile)
	if err != nil {
		return nil, err
	}

	if _, ok := files[ImageDigestsFile]; !ok {
		return nil, fmt.Errorf("%w: no %s in the extensions catalog", ErrInvalidCatalog, ImageDigestsFile)
	}

	return ParseExtensions(files[ImageDigestsFile], files[DescriptionsFile])
}

// OverlaysFromImage reads the overlays catalog image.
func OverlaysFromImage(img v1.Image) ([]Overlay, error) {
	files, err := ReadFiles(img, OverlaysFile)
	if err != nil {
		return nil, err
	}

	data, ok := files[OverlaysFile]
	if !ok {
		return nil, fmt.Errorf("%w: no %s in the overlays catalog", ErrInvalidCatalog, OverlaysFile)
	}

	return ParseOverlays(data)
}

// extensionAliases are the public factory's renames (image-factory
// internal/profile extensionNameAlias): a schematic written with the old
// name still gets the extension. The alias is tried only when the name
// itself is not in the catalog, as the factory does.
var extensionAliases = map[string]string{
	"siderolabs/v4l-uvc":                        "siderolabs/v4l-uvc-drivers",
	"siderolabs/usb-modem":                      "siderolabs/usb-modem-drivers",
	"siderolabs/gasket":                         "siderolabs/gasket-driver",
	"siderolabs/talos-vmtoolsd":                 "siderolabs/vmtoolsd-guest-agent",
	"siderolabs/xe-guest-utilities":             "siderolabs/xen-guest-agent",
	"siderolabs/nvidia-container-toolkit":       "siderolabs/nvidia-container-toolkit-lts",
	"siderolabs/nvidia-open-gpu-kernel-modules": "siderolabs/nvidia-open-gpu-kernel-modules-lts",
	"siderolabs/nonfree-kmod-nvidia":            "siderolabs/nonfree-kmod-nvidia-lts",
	"siderolabs/nvidia-fabricmanager":           "siderolabs/nvidia-fabric-manager-lts",
	"siderolabs/i915-ucode":                     "siderolabs/i915",
	"siderolabs/amdgpu-firmware":                "siderolabs/amdgpu",
}

// FindExtension matches a schematic's extension name against the catalog,
// as the public factory does: by repository path, then through an alias.
func FindExtension(catalog []Extension, want string) (Extension, bool) {
	want = strings.TrimSpace(want)

	for _, n := range []string{want, extensionAliases[want]} {
		if n == "" {
			continue
		}

		for _, e := range catalog {
			if e.Name() == n {
				return e, true
			}
		}
	}

	return Extension{}, false
}
