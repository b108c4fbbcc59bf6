package cmdline

import (
	"fmt"
	"net/url"
	"strings"
)

// PXEOptions describe one iPXE script.
type PXEOptions struct {
	// BaseURL is the externally visible PXE base URL (the factory's
	// externalPXEURL), optionally with credentials.
	BaseURL string
	// SchematicID is the schematic ID as requested.
	SchematicID string
	// Version is the Talos version; a missing "v" prefix is added.
	Version string
	// Platform and Arch name the assets. Arch must already be canonical:
	// the caller maps the iPXE ${buildarch} aliases x86_64 and i386 to
	// amd64 before building the command line and the script.
	Platform, Arch string
	// Cmdline is the output of Build for the same profile.
	Cmdline string
	// SecureBoot boots the signed UKI instead of kernel + initramfs.
	SecureBoot bool
}

// PXEScript returns the iPXE script of the public Image Factory
// (/pxe/:schematic/:version/:path), byte for byte:
//
//	#!ipxe
//
//	imgfree
//	kernel <base>/image/<id>/<version>/kernel-<arch> <cmdline>
//	initrd <base>/image/<id>/<version>/initramfs-<arch>.xz
//	boot
//
// and, for SecureBoot, a single kernel line with
// <platform>-<arch>-secureboot-uki.efi and the command line, then boot.
// URLs are joined as net/url JoinPath does.
func PXEScript(o PXEOptions) (string, error) {
	base, err := url.Parse(o.BaseURL)
	if err != nil {
		return "", fmt.Errorf("pxe base URL: %w", err)
	}

	if o.SchematicID == "" || o.Version == "" || o.Platform == "" || o.Arch == "" {
		return "", fmt.Errorf("%w: pxe script needs schematic, version, platform and arch", ErrUnsupported)
	}

	version := o.Version
	if !strings.HasPrefix(version, "v") {
		version = "v" + version
	}

	asset := func(name string) string {
		return base.JoinPath("image", o.SchematicID, version, name).String()
	}

	if o.SecureBoot {
		return fmt.Sprintf("#!ipxe\n\nimgfree\nkernel %s %s\nboot\n",
			asset(fmt.Sprintf("%s-%s-secureboot-uki.efi", o.Platform, o.Arch)), o.Cmdline), nil
	}

	return fmt.Sprintf("#!ipxe\n\nimgfree\nkernel %s %s\ninitrd %s\nboot\n",
		asset("kernel-"+o.Arch), o.Cmdline, asset("initramfs-"+o.Arch+".xz")), nil
}
