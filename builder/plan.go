package builder

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
)

// Version is the builder's own version. It is part of every plan key:
// change it whenever the same inputs would produce different bytes.
const Version = "kiln-builder/4"

// SourceDateEpoch is the fixed time stamped into every asset
// (the public factory's SOURCE_DATE_EPOCH), so builds are reproducible.
const SourceDateEpoch = 1559424892

// Plan names everything that decides an asset's bytes. Its Key is the
// asset cache key: equal plans are equal assets.
type Plan struct {
	Builder     string          `json:"builder"`
	SchematicID string          `json:"schematic"`
	Version     release.Version `json:"version"`
	Output      Output          `json:"output"`
	Imager      string          `json:"imager"`
	Extensions  []PlanInput     `json:"extensions,omitempty"`
	// InstallerBase is the verified base installer (repository@digest) of
	// an installer tarball.
	InstallerBase string `json:"installerBase,omitempty"`
	// ImageCache is the ID of the resolved image cache (every image by
	// digest), for ISOs and disks of schematics that ask for one.
	ImageCache string `json:"imageCache,omitempty"`
	// Bootloader is the boot loader of an ISO or a disk image, as
	// selectBootloader picks it for the version, arch and schematic; part of
	// the key, so an asset of one layout is never served for another.
	Bootloader string `json:"bootloader,omitempty"`
	Epoch      int64  `json:"epoch"`
	FactoryURL string `json:"factoryURL"`
	schematic  *schematic.Schematic
	canonical  []byte
	// boot and exts are the verified pieces Imager and Extensions name.
	boot      *artifacts.BootAssets
	exts      []*artifacts.Image
	base      *artifacts.Image
	cachePlan *imagecache.Plan
	cacheOpts imagecache.Options
	// unpublished: the image cache should carry the installer, which is
	// not built yet; such a plan is only looked up, and finds nothing.
	unpublished bool
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
