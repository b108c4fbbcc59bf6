package schematic

import (
	"fmt"
	"strings"
)

// Bootloader is the boot loader a disk image uses. The zero value lets Talos
// choose. It is text in YAML, as Talos's imageropts.BootloaderKind is, so the
// canonical form is the same as the public factory's.
type Bootloader int

// Boot loaders in the order Talos numbers them.
const (
	BootloaderAuto Bootloader = iota
	BootloaderDualBoot
	BootloaderSDBoot
	BootloaderGrub
)

var bootloaderNames = [...]string{"auto", "dual-boot", "sd-boot", "grub"}

// String is the YAML spelling.
func (b Bootloader) String() string {
	if b < 0 || int(b) >= len(bootloaderNames) {
		return fmt.Sprintf("Bootloader(%d)", int(b))
	}

	return bootloaderNames[b]
}

// ParseBootloader accepts the names case-insensitively; "none" is Talos 1.13's
// name for the automatic choice.
func ParseBootloader(s string) (Bootloader, error) {
	name := strings.ToLower(s)
	if name == "none" || name == "" {
		return BootloaderAuto, nil
	}

	for i, n := range bootloaderNames {
		if n == name {
			return Bootloader(i), nil
		}
	}

	return 0, fmt.Errorf("bootloader %q is not one of %s", s, strings.Join(bootloaderNames[:], ", "))
}

// MarshalText implements encoding.TextMarshaler.
func (b Bootloader) MarshalText() ([]byte, error) {
	if b < 0 || int(b) >= len(bootloaderNames) {
		return nil, fmt.Errorf("bootloader %d is out of range", int(b))
	}

	return []byte(bootloaderNames[b]), nil
}

// UnmarshalText implements encoding.TextUnmarshaler.
func (b *Bootloader) UnmarshalText(text []byte) error {
	v, err := ParseBootloader(string(text))
	if err != nil {
		return err
	}

	*b = v

	return nil
}
