package schematic

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"

	"go.yaml.in/yaml/v4"
)

// Schematic is the requested image customization.
//
// The declaration order of fields and their YAML tags decide the canonical
// form and therefore the ID: never reorder, rename or drop omitempty here.
type Schematic struct {
	// Owner is set by an authenticating factory; kiln, like the community
	// factory, has no owners and refuses the field (see Validate).
	Owner string `yaml:"owner,omitempty"`
	// Overlay selects a board overlay (single-board computers).
	Overlay Overlay `yaml:"overlay,omitempty"`
	// Customization is always present in the canonical form, even empty.
	Customization Customization `yaml:"customization"`
}

// Customization is the Talos image customization.
type Customization struct {
	// EmbeddedMachineConfiguration is a machine config document embedded into
	// the image (Talos 1.12 and later).
	EmbeddedMachineConfiguration string `yaml:"embeddedMachineConfiguration,omitempty"`
	// ExtraKernelArgs are appended to the kernel command line.
	ExtraKernelArgs []string `yaml:"extraKernelArgs,omitempty"`
	// Meta is the initial content of the META partition.
	Meta []MetaValue `yaml:"meta,omitempty"`
	// SystemExtensions lists the official extensions to install.
	SystemExtensions SystemExtensions `yaml:"systemExtensions,omitempty"`
	// Bootloader forces a boot loader for disk images.
	Bootloader Bootloader `yaml:"bootloader,omitempty"`
	// SecureBoot customises SecureBoot images.
	SecureBoot SecureBootCustomization `yaml:"secureboot,omitempty"`
	// DiskImage customises disk images.
	DiskImage DiskImageCustomization `yaml:"diskImage,omitempty"`
	// ImageCache embeds container images into ISOs and disk images, so a
	// node boots and installs with no registry. It is kiln's own section:
	// a schematic that omits it keeps the public factory's ID, one that uses
	// it has an ID of its own (and is refused by the public factory).
	ImageCache ImageCache `yaml:"imageCache,omitempty"`
}

// ImageCache says which images an ISO or disk image carries.
type ImageCache struct {
	// Kubernetes adds the Kubernetes images of the target Talos version
	// (what `talosctl images default` lists for it).
	Kubernetes bool `yaml:"kubernetes,omitempty"`
	// Images are more image references, e.g. "docker.io/library/nginx:1.27".
	Images []string `yaml:"images,omitempty"`
	// Platforms are the cached platforms ("linux/amd64", "all"); empty
	// means the architecture of the asset being built.
	Platforms []string `yaml:"platforms,omitempty"`
}

// Enabled reports whether the schematic asks for an image cache.
func (c ImageCache) Enabled() bool { return c.Kubernetes || len(c.Images) > 0 }

// MetaValue is one META key and its value.
type MetaValue struct {
	Key   uint8  `yaml:"key"`
	Value string `yaml:"value"`
}

// SystemExtensions lists official extensions by image name, for example
// "siderolabs/iscsi-tools"; the version is picked per Talos release.
type SystemExtensions struct {
	OfficialExtensions []string `yaml:"officialExtensions,omitempty"`
}

// Overlay is a board overlay: its image, its name within the image and
// free-form options handed to the overlay installer.
type Overlay struct {
	Image   string         `yaml:"image"`
	Name    string         `yaml:"name"`
	Options map[string]any `yaml:"options,omitempty"`
}

// SecureBootCustomization customises SecureBoot images. Type names show in
// the parser's messages ("field x not found in type
// schematic.SecureBootCustomization"), so they are the factory's.
type SecureBootCustomization struct {
	// EnrollKeys selects which keys sd-boot auto-enrolls.
	EnrollKeys string `yaml:"enrollKeys,omitempty"`
	// IncludeWellKnownCertificates adds the well-known UEFI certificates to
	// the auto-enrollment database.
	IncludeWellKnownCertificates bool `yaml:"includeWellKnownCertificates,omitempty"`
}

// DiskImageCustomization customises disk images.
type DiskImageCustomization struct {
	// SectorSize is the logical sector size of the disk image, 512 or 4096.
	SectorSize uint `yaml:"sectorSize,omitempty"`
}

// ErrInvalid marks every error that says a schematic is malformed; the
// server maps it to InvalidArgument / HTTP 400.
var ErrInvalid = errors.New("invalid schematic")

// invalidError keeps the parser's own message as the error text (clients
// compare it with the public factory's) while matching ErrInvalid.
type invalidError struct{ err error }

func (e *invalidError) Error() string       { return e.err.Error() }
func (e *invalidError) Unwrap() []error     { return []error{e.err, ErrInvalid} }
func invalid(format string, a ...any) error { return &invalidError{fmt.Errorf(format, a...)} }

// Parse reads a schematic from YAML or JSON (JSON is YAML). Unknown fields and
// wrong types are refused: a typo would otherwise be dropped silently and the
// ID would be that of a different image. Parse also runs Validate.
func Parse(data []byte) (*Schematic, error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)

	var s Schematic
	if err := dec.Decode(&s); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, invalid("schematic is empty")
		}

		return nil, &invalidError{err}
	}

	if err := onlyDocument(dec); err != nil {
		return nil, err
	}

	if err := s.Validate(); err != nil {
		return nil, err
	}

	return &s, nil
}

// Validate refuses what the canonical form could carry but this factory must
// not accept. It checks no more than the public factory does at creation
// time, so that a schematic accepted there is accepted here, with one
// exception: a schematic whose canonical form does not read back as itself.
// The YAML library (the factory's too) writes some multi-line strings, those
// that start with a space, a tab or an empty line, as block scalars it cannot
// read back or reads back differently. The factory stores such a schematic
// and hands out its ID, then cannot read it to serve it or build from it;
// kiln refuses it when it is created instead. Values that only fail for some
// outputs (a sector size, an unknown extension) are refused when an asset is
// built.
func (s *Schematic) Validate() error {
	if s.Owner != "" {
		return invalid("owner is not supported: this factory has no authentication, remove the owner field")
	}

	canonical, err := s.Marshal()
	if err != nil {
		return invalid("%w", err)
	}

	dec := yaml.NewDecoder(bytes.NewReader(canonical))
	dec.KnownFields(true)

	var back Schematic
	if err := dec.Decode(&back); err != nil {
		return invalid("%s: %w", errUnstorable, err)
	}

	if again, err := back.Marshal(); err != nil || !bytes.Equal(again, canonical) {
		return invalid("%s: it reads back as a different schematic", errUnstorable)
	}

	return nil
}

// errUnstorable starts the refusal of a schematic whose canonical form does
// not read back as itself.
const errUnstorable = "schematic cannot be stored: its canonical YAML does not read back " +
	"(a limit of the YAML library, for multi-line strings that start with a space, a tab or an empty line)"

// Marshal is the canonical YAML form, the bytes the ID hashes and what
// GET /schematics/{id} answers.
func (s *Schematic) Marshal() ([]byte, error) {
	data, err := yaml.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("marshal schematic: %w", err)
	}

	return data, nil
}

// ID is the hex SHA-256 of the canonical form.
func (s *Schematic) ID() (string, error) {
	data, err := s.Marshal()
	if err != nil {
		return "", err
	}

	return IDOf(data), nil
}

// IDOf is the ID of an already canonical form.
func IDOf(canonical []byte) string {
	sum := sha256.Sum256(canonical)

	return hex.EncodeToString(sum[:])
}

// ValidID reports whether id has the shape of a schematic ID: 64 lower-case
// hex digits. Anything else cannot name a stored schematic.
func ValidID(id string) bool {
	if len(id) != sha256.Size*2 {
		return false
	}

	for i := range len(id) {
		c := id[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}

	return true
}
