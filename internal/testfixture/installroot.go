package testfixture

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// virtioModules are virtio_blk and its dependencies in load order (modinfo
// depends), under the fixture kernel's kernel/drivers.
var virtioModules = []string{
	"virtio/virtio_ring.ko", "virtio/virtio.ko", "virtio/virtio_pci_modern_dev.ko",
	"virtio/virtio_pci_legacy_dev.ko", "virtio/virtio_pci.ko", "block/virtio_blk.ko",
}

// InstallerInitramfs turns root, an installer image's unpacked file system,
// into an initramfs for the fixture kernel (written to out as a newc cpio)
// that does what a node's install does: with Debian's static busybox and the
// virtio block driver added, its /init runs the image's entrypoint with the
// image's environment onto the blank /dev/vda, prints KILN-INSTALL-OK or
// KILN-INSTALL-FAILED and powers off. Boot it with Kernel() and
// "console=ttyS0 panic=-1".
func InstallerInitramfs(tb testing.TB, root string, entrypoint, env []string, out string) {
	tb.Helper()

	modules := ModulesDir()
	Require(tb, "/bin/busybox", modules)
	RequireTool(tb, "cpio")

	copyFile(tb, "/bin/busybox", filepath.Join(root, "bin", "busybox"), 0o755)

	var names []string

	for _, m := range virtioModules {
		copyFile(tb, filepath.Join(modules, "kernel", "drivers", m), filepath.Join(root, "lib", "modules", filepath.Base(m)), 0o644)
		names = append(names, strings.TrimSuffix(filepath.Base(m), ".ko"))
	}

	var exports strings.Builder
	for _, e := range env {
		exports.WriteString("export '" + strings.ReplaceAll(e, "'", `'\''`) + "'\n")
	}

	// /tmp on its own tmpfs: the installer's temp image is then on
	// another file system than the image's files, so copy_file_range
	// refuses (EXDEV) and builder/esp's read/write fallback is what copies.
	init := "#!/bin/busybox sh\n" +
		"/bin/busybox --install -s /bin\nexport PATH=/bin:/usr/bin\n" +
		"mkdir -p /proc /sys /dev /tmp\nmount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev\n" +
		"mount -t tmpfs tmpfs /tmp\n" +
		"for m in " + strings.Join(names, " ") + "; do insmod /lib/modules/$m.ko || echo KILN-INSMOD-FAILED $m; done\n" +
		"for i in $(seq 20); do [ -e /dev/vda ] && break; sleep 0.5; done\n" +
		exports.String() +
		strings.Join(entrypoint, " ") + " install --disk /dev/vda --timeout 0 --efi-size 64 && echo KILN-INSTALL-OK || echo KILN-INSTALL-FAILED\n" +
		"poweroff -f\n"

	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		tb.Fatal(err)
	}

	Newc(tb, root, out)
}

// Newc archives dir as a newc cpio (what the kernel unpacks as an
// initramfs) with Debian's cpio.
func Newc(tb testing.TB, dir, out string) {
	tb.Helper()

	cmd := exec.Command("sh", "-c", "find . | LC_ALL=C sort | cpio -o -H newc --quiet > \"$0\"", out)
	cmd.Dir = dir

	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("cpio: %v: %s", err, b)
	}
}

func copyFile(tb testing.TB, src, dst string, mode os.FileMode) {
	tb.Helper()

	b, err := os.ReadFile(src)
	if err != nil {
		tb.Fatal(err)
	}

	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		tb.Fatal(err)
	}

	if err := os.WriteFile(dst, b, mode); err != nil {
		tb.Fatal(err)
	}
}
