package uki

import (
	"fmt"

	"github.com/siderolabs/talos/pkg/machinery/constants"
	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"

	"github.com/kiln-dev/kiln/release"
)

// Reset is the reset profile Talos puts beside the main one, chosen by what
// the UKI boots from (pkg/imager buildUKI, by output kind).
type Reset int

const (
	// NoReset: a UKI download (<platform>-<arch>-uki.efi) has the main
	// profile only.
	NoReset Reset = iota
	// ResetSystemDisk is the ISO's: ID=reset, which wipes the system disk.
	ResetSystemDisk
	// ResetToMaintenance is the disk image's and the installer's (the UKI
	// an installed node boots): ID=reset-maintenance, which wipes STATE and
	// EPHEMERAL and leaves the node in maintenance mode.
	ResetToMaintenance
)

// Talos's profile IDs. systemd-boot lists profile N > 0 of EFI/Linux/X.efi
// as the entry "x.efi@<ID>" (lower-cased), profile 0 as "x.efi".
const (
	ProfileMain             = "main"
	ProfileReset            = "reset"
	ProfileResetMaintenance = "reset-maintenance"
)

const (
	keyID, keyTitle         = "ID=", "\nTITLE="
	titleResetSystemDisk    = "Reset system disk"
	titleResetToMaintenance = "Reset to maintenance mode"
	wipeSystem              = "system"
	wipeSystemToMaintenance = "system:EPHEMERAL,STATE"
)

// TalosProfiles returns the .profile sections Talos's imager gives a UKI of
// talosVersion whose main command line is cmdline: "ID=main" with no
// .cmdline of its own (the stub then uses the base .cmdline), then, for
// ResetSystemDisk or ResetToMaintenance, the reset profile with cmdline plus
// talos.experimental.wipe=... as its .cmdline. Before Talos 1.10 (quirks
// SupportsUKIProfiles) Talos UKIs have no profiles and the result is nil.
//
// The texts are Talos's Profile.String ("ID=<id>" and "\nTITLE=<title>"
// when there is a title, no trailing newline); the reset command line is
// the main one with " <wipe argument>" appended as a string, as Talos does.
func TalosProfiles(talosVersion release.Version, cmdline string, reset Reset) ([]Profile, error) {
	if talosVersion.IsZero() {
		return nil, fmt.Errorf("%w: no Talos version", ErrInput)
	}

	if !quirks.New(talosVersion.String()).SupportsUKIProfiles() {
		return nil, nil
	}

	profiles := []Profile{{Profile: keyID + ProfileMain}}

	switch reset {
	case NoReset:
	case ResetSystemDisk:
		profiles = append(profiles, Profile{
			Profile: keyID + ProfileReset + keyTitle + titleResetSystemDisk,
			Cmdline: cmdline + " " + constants.KernelParamWipe + "=" + wipeSystem,
		})
	case ResetToMaintenance:
		profiles = append(profiles, Profile{
			Profile: keyID + ProfileResetMaintenance + keyTitle + titleResetToMaintenance,
			Cmdline: cmdline + " " + constants.KernelParamWipe + "=" + wipeSystemToMaintenance,
		})
	default:
		return nil, fmt.Errorf("%w: unknown reset profile %d", ErrInput, reset)
	}

	return profiles, nil
}
