package builder

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
)

// Version is the builder's own version. It is part of every plan key:
// change it whenever the same inputs would produce different bytes.
const Version = "kiln-builder/2"

// SourceDateEpoch is the fixed time stamped into every asset
// (the public factory's SOURCE_DATE_EPOCH), so builds are reproducible.
const SourceDateEpoch = 1559424892

// Plan names everything that decides an asset's bytes. Its Key is the
// asset cache key: equal plans are equal assets.
type Plan struct {
	Builder     string      `json:"builder"`
	SchematicID string      `json:"schematic"`
	Version     string      `json:"version"`
	Output      Output      `json:"output"`
	Imager      string      `json:"imager"`
	Extensions  []PlanInput `json:"extensions,omitempty"`
	// ImageCache is the ID of the resolved image cache (every image by
	// digest), for ISOs and disks of schematics that ask for one.
	ImageCache string `json:"imageCache,omitempty"`
	Epoch      int64  `json:"epoch"`
	FactoryURL string `json:"factoryURL"`
	schematic  *schematic.Schematic
	canonical  []byte
	imagerRef  name.Digest
	extRefs    []name.Digest
	cachePlan  *imagecache.Plan
	cacheOpts  imagecache.Options
}

// PlanInput is one verified input image.
type PlanInput struct {
	Name string `json:"name"`
	Ref  string `json:"ref"`
}

// Key is the hex sha256 of the plan's canonical JSON.
func (p *Plan) Key() string {
	out := p.Output
	out.Path = "" // the requested spelling (x86_64, ?filename) does not change the bytes

	data, err := json.Marshal(struct {
		*Plan
		Output Output `json:"output"`
	}{p, out})
	if err != nil {
		panic(fmt.Sprintf("plan is not JSON: %v", err)) // only plain strings and ints: cannot happen
	}

	sum := sha256.Sum256(data)

	return hex.EncodeToString(sum[:])
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

// ExtensionError is a schematic extension the release does not have.
type ExtensionError struct{ Name, Version string }

func (e *ExtensionError) Error() string {
	return fmt.Sprintf("extension %q is not available for Talos %s (see /version/%s/extensions/official)", e.Name, e.Version, e.Version)
}

// findExtension matches a schematic's extension name against the catalog,
// as the public factory does: by repository path, then through an alias.
func findExtension(catalog []release.Extension, want string) (release.Extension, bool) {
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

	return release.Extension{}, false
}
