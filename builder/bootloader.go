package builder

import (
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
)

// selectBootloader is the boot loader Talos's imager puts on an ISO or a
// disk image of this release, architecture and schematic: Talos v1.13.9's
// Output.FillDefaults and selectBootloader (pkg/imager/profile/output.go)
// and the ISO switch of outISO (pkg/imager/out.go), with the public
// factory's rule that the schematic's customization.bootloader, when set,
// is the profile's choice (internal/profile/profile.go).
//
// It answers for KindISO and KindDisk only; other kinds carry no boot loader.
func selectBootloader(kind Kind, arch string, v release.Version, want schematic.Bootloader, secureboot bool) schematic.Bootloader {
	sdbootForUEFI := v.AtLeast(1, 10) // quirks.UseSDBootForUEFI

	if kind == KindISO {
		switch {
		case secureboot:
			return schematic.BootloaderSDBoot
		case v.AtLeast(1, 12): // quirks.ISOSupportsSettingBootloader
			// falls through to the image rules below
		case sdbootForUEFI:
			// 1.10 and 1.11 make every non-SecureBoot ISO hybrid,
			// whatever the schematic asks.
			return schematic.BootloaderDualBoot
		default:
			return schematic.BootloaderGrub
		}
	}

	switch {
	case want != schematic.BootloaderNone && !secureboot:
		return want
	case secureboot:
		return schematic.BootloaderSDBoot
	case arch == "arm64" && sdbootForUEFI:
		return schematic.BootloaderSDBoot
	case !sdbootForUEFI:
		return schematic.BootloaderGrub
	default:
		return schematic.BootloaderDualBoot
	}
}
