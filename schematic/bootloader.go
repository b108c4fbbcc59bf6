package schematic

import "github.com/siderolabs/talos/pkg/machinery/imager/imageropts"

// Bootloader is the boot loader a disk image uses. It is Talos's own type,
// the one the public factory's schematic carries, so the names it accepts
// (none, dual-boot, sd-boot, grub, in any case), the text it writes and the
// words of its refusal ("lilo does not belong to BootloaderKind values") are
// the factory's by construction. The zero value, none, lets Talos choose and
// is omitted from the canonical form.
type Bootloader = imageropts.BootloaderKind

// Boot loaders in the order Talos numbers them.
const (
	BootloaderNone     = imageropts.BootLoaderKindNone
	BootloaderDualBoot = imageropts.BootLoaderKindDualBoot
	BootloaderSDBoot   = imageropts.BootLoaderKindSDBoot
	BootloaderGrub     = imageropts.BootLoaderKindGrub
)
