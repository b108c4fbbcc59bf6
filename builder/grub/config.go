package grub

import (
	"fmt"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"
	"github.com/siderolabs/talos/pkg/machinery/version"

	"github.com/kiln-dev/kiln/release"
)

// Quote escapes s for a GRUB command line as Talos's grub.Quote does: a
// backslash before each of \{}&$|;<>" (not GRUB's full quoting rules, but
// what Talos's menus carry).
func Quote(s string) string {
	var b strings.Builder

	for i := 0; i < len(s); i++ {
		if strings.IndexByte(`\{}&$|;<>"`, s[i]) >= 0 {
			b.WriteByte('\\')
		}

		b.WriteByte(s[i])
	}

	return b.String()
}

// SupportsResetOption says whether Talos's menus for this version carry the
// reset entry (quirks.SupportsResetGRUBOption: 1.4 and later).
func SupportsResetOption(talosVersion release.Version) bool {
	return quirks.New(talosVersion.String()).SupportsResetGRUBOption()
}

// ISOConfig renders boot/grub/grub.cfg of a Talos ISO (pkg/imager/iso/grub.cfg
// executed by CreateGRUB): the "Talos ISO" entry and, when the version has it,
// "Reset Talos installation" with talos.experimental.wipe=system.
func ISOConfig(talosVersion release.Version, cmdline string) []byte {
	var b strings.Builder

	b.WriteString("set default=0\nset timeout=3\n\ninsmod all_video\n\nterminal_input console\nterminal_output console\n\n")
	fmt.Fprintf(&b, "menuentry \"Talos ISO\" {\n\tset gfxmode=auto\n\tset gfxpayload=text\n\tlinux /boot/vmlinuz %s\n\tinitrd /boot/initramfs.xz\n}\n\n", Quote(cmdline))

	if SupportsResetOption(talosVersion) {
		fmt.Fprintf(&b, "menuentry \"Reset Talos installation\" {\n\tset gfxmode=auto\n\tset gfxpayload=text\n\tlinux /boot/vmlinuz %s talos.experimental.wipe=system\n\tinitrd /boot/initramfs.xz\n}\n", Quote(cmdline))
	}

	return []byte(b.String())
}

// DiskConfig renders grub/grub.cfg of a Talos disk image's BOOT partition
// (bootloader/grub Config.Encode with the single entry A that an image
// install writes): kernel and initramfs under /A, and with reset the
// "Reset Talos installation and return to maintenance mode" entry. Talos adds
// the reset entry for dual-boot images always and for GRUB-only images when
// SupportsResetOption(talosVersion).
func DiskConfig(talosVersion release.Version, cmdline string, reset bool) []byte {
	var b strings.Builder

	name := fmt.Sprintf("A - %s %s", version.Name, talosVersion)

	fmt.Fprintf(&b, "set default=\"%s\"\n", name)
	b.WriteString("\nset timeout=3\n\ninsmod all_video\n\nterminal_input console\nterminal_output console\n\n")
	fmt.Fprintf(&b, "menuentry \"%s\" {\n  set gfxmode=auto\n  set gfxpayload=text\n  linux /A/vmlinuz %s\n  initrd /A/initramfs.xz\n}\n", name, Quote(cmdline))

	if reset {
		fmt.Fprintf(&b, "menuentry \"Reset Talos installation and return to maintenance mode\" {\n  set gfxmode=auto\n  set gfxpayload=text\n  linux /A/vmlinuz %s talos.experimental.wipe=system:EPHEMERAL,STATE\n  initrd /A/initramfs.xz\n}\n", Quote(cmdline))
	}

	return []byte(b.String())
}
