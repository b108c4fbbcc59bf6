package cmdline

import (
	"fmt"
	"net/url"

	"github.com/kiln-dev/kiln/release"
)

// PXEOptions describe one iPXE script.
type PXEOptions struct {
	// BaseURL is the externally visible PXE base URL (the factory's
	// externalPXEURL), optionally with credentials.
	BaseURL string
	// SchematicID is the schematic ID as requested.
	SchematicID string
	// Version is the Talos version.
	Version release.Version
	// Platform and Arch name the assets. Arch must already be canonical:
	// the caller maps the iPXE ${buildarch} aliases x86_64 and i386 to
	// amd64 before building the command line and the script.
	Platform, Arch string
	// Cmdline is the output of Build for the same profile.
	Cmdline string
	// SecureBoot boots the signed UKI instead of kernel + initramfs.
	SecureBoot bool
}

// PXEScript returns the iPXE script for /pxe/:schematic/:version/:path.
//
// The public Image Factory serves
//
//	#!ipxe
//
//	imgfree
//	kernel <base>/image/<id>/<version>/kernel-<arch> <cmdline>
//	initrd <base>/image/<id>/<version>/initramfs-<arch>.xz
//	boot
//
// which leaves an EFI-stub kernel without its initramfs under iPXE builds
// from before its LoadFile2 support (February 2023, after the 1.21.1
// release; Debian 12's 2019 ipxe-qemu, many NIC ROMs): they hand an initrd
// to the stub only as a file the kernel line names with initrd=<name>. So
// the initrd gets a name, and on ${platform} efi (x86 and arm64 alike) the
// kernel line gains initrd=<name>; the BIOS path runs the factory's kernel
// line byte for byte. Current iPXE passes the initrd through the stub's
// LoadFile2 protocol and the stub then ignores the argument. The branch
// uses only iseq, ${platform}, goto and a label; make e2e boots the script
// with Debian 12's iPXE (2019) and Debian 13's (1.21.1+git20250501) under
// SeaBIOS and OVMF.
//
// SecureBoot keeps the factory's script (a single kernel line with
// <platform>-<arch>-secureboot-uki.efi and the command line, then boot):
// the UKI carries its initramfs and its stub hands it over itself.
//
// URLs are joined as net/url JoinPath does.
func PXEScript(o PXEOptions) (string, error) {
	base, err := url.Parse(o.BaseURL)
	if err != nil {
		return "", fmt.Errorf("pxe base URL: %w", err)
	}

	if o.SchematicID == "" || o.Version.IsZero() || o.Platform == "" || o.Arch == "" {
		return "", fmt.Errorf("%w: pxe script needs schematic, version, platform and arch", ErrUnsupported)
	}

	asset := func(name string) string {
		return base.JoinPath("image", o.SchematicID, o.Version.String(), name).String()
	}

	if o.SecureBoot {
		return fmt.Sprintf("#!ipxe\n\nimgfree\nkernel %s %s\nboot\n",
			asset(fmt.Sprintf("%s-%s-secureboot-uki.efi", o.Platform, o.Arch)), o.Cmdline), nil
	}

	initrdName := "initramfs-" + o.Arch + ".xz"
	kernel := fmt.Sprintf("kernel %s %s", asset("kernel-"+o.Arch), o.Cmdline)
	initrd := fmt.Sprintf("initrd --name %s %s", initrdName, asset(initrdName))

	return "#!ipxe\n\nimgfree\n" +
		"iseq ${platform} efi && goto efi ||\n" +
		kernel + "\n" + initrd + "\nboot\n" +
		":efi\n" +
		kernel + " initrd=" + initrdName + "\n" + initrd + "\nboot\n", nil
}
