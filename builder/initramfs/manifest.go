package initramfs

import (
	"errors"
	"fmt"
	"strings"

	"github.com/blang/semver/v4"
	"go.yaml.in/yaml/v4"
)

// ManifestVersion is the only extension manifest version Talos accepts.
const ManifestVersion = "v1alpha1"

// ErrInvalidExtension is wrapped by every error about an extension's
// content or manifest, as opposed to I/O failures.
var ErrInvalidExtension = errors.New("invalid system extension")

// Manifest is an extension's manifest.yaml. The types mirror
// pkg/machinery/extensions (field names and YAML keys must stay equal:
// Talos parses extensions.yaml, which embeds Metadata, with them); that
// package is not imported because its dependency tree is not in go.sum.
type Manifest struct {
	Version  string   `yaml:"version"`
	Metadata Metadata `yaml:"metadata"`
}

// Metadata describes an extension; extensions.yaml repeats it per layer.
type Metadata struct {
	Name          string        `yaml:"name"`
	Version       string        `yaml:"version"`
	Author        string        `yaml:"author"`
	Description   string        `yaml:"description"`
	Compatibility Compatibility `yaml:"compatibility"`
	ExtraInfo     string        `yaml:"extraInfo,omitempty"`
}

// Compatibility holds the Talos version constraint.
type Compatibility struct {
	Talos Constraint `yaml:"talos"`
}

// Constraint is a semver range such as ">= v1.0.0".
type Constraint struct {
	Version string `yaml:"version"`
}

// Config is extensions.yaml at the root of the initramfs.
type Config struct {
	Layers []Layer `yaml:"layers"`
}

// Layer is one squashfs layer of extensions.yaml.
type Layer struct {
	Image    string   `yaml:"image"`
	Metadata Metadata `yaml:"metadata"`
}

// parseManifest decodes and validates manifest.yaml against the target
// Talos version.
func parseManifest(data []byte, talos semver.Version) (*Manifest, error) {
	var m Manifest
	if err := yaml.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%w: manifest.yaml: %w", ErrInvalidExtension, err)
	}

	if m.Version != ManifestVersion {
		return nil, fmt.Errorf("%w: manifest version %q, want %q", ErrInvalidExtension, m.Version, ManifestVersion)
	}

	if m.Metadata.Name == "" {
		return nil, fmt.Errorf("%w: manifest has no metadata.name", ErrInvalidExtension)
	}

	if c := m.Metadata.Compatibility.Talos.Version; c != "" {
		r, err := semver.ParseRange(trimV(c))
		if err != nil {
			return nil, fmt.Errorf("%w: Talos version constraint %q: %w", ErrInvalidExtension, c, err)
		}

		// Like Talos, compare the core version only, so that
		// "v1.13.0-beta.1" satisfies ">= v1.13.0".
		if !r(semver.Version{Major: talos.Major, Minor: talos.Minor, Patch: talos.Patch}) {
			return nil, fmt.Errorf("%w: version constraint %q is not satisfied by Talos %s",
				ErrInvalidExtension, c, talos)
		}
	}

	return &m, nil
}

// trimV drops a "v" right before a digit ("v1.0.0" -> "1.0.0"), which
// blang/semver ranges do not accept but manifests use.
func trimV(s string) string {
	var b strings.Builder

	for i := 0; i < len(s); i++ {
		if s[i] == 'v' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9' {
			continue
		}

		b.WriteByte(s[i])
	}

	return b.String()
}
