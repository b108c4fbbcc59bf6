package cmdline

import "github.com/siderolabs/talos/pkg/machinery/imager/quirks"

// ForInstaller returns the command line of the UKI in an installer image,
// which the public factory also gives a standalone UKI download
// (<platform>-<arch>-uki.efi): both get their kernel arguments only from the
// UKI, so the factory builds them by one rule (image-factory
// internal/profile EnhanceFromSchematic, OutKindInstaller and OutKindUKI):
//
//   - no META: the factory sets no META contents for these outputs, so the
//     imager puts no talos.environment=INSTALLER_META_BASE64=… on the line
//     (META reaches a node from the boot medium it installs from);
//   - the schematic's extraKernelArgs only with SecureBoot or from Talos
//     1.10 (quirks SupportsUnifiedInstaller); older installers carry the
//     kernel and initramfs, not a UKI, and a UKI download gets the bare line;
//   - never talos.halt_if_installed=1, which is the ISO's (o.ISO is ignored).
//
// The platform's console arguments are the same as for every other output:
// the imager builds all of them with one buildCmdline. On metal amd64 that is
// console=tty0 from Talos 1.8 (quirks SupportsMetalPlatformConsoleTTYS0);
// before 1.8 it is console=ttyS0 console=tty0, there as on
// cmdline-metal-amd64, and an installer of those versions has a UKI only
// with SecureBoot. So the factory's tests, which check installer UKIs from
// 1.10 on, expect no console=ttyS0: not an installer rule, the metal
// arguments of those versions.
func ForInstaller(o Options) (string, error) {
	o.ISO = false
	o.Meta, o.IncludeMeta = nil, false

	if !o.SecureBoot && !quirks.New(o.TalosVersion.String()).SupportsUnifiedInstaller() {
		o.ExtraArgs = nil
	}

	return Build(o)
}
