//go:build e2e

package xfs

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// Modules the guest loads, in order: virtio_blk and XFS with its CRC32C.
var guestModules = []string{
	"drivers/virtio/virtio_ring.ko", "drivers/virtio/virtio.ko", "drivers/virtio/virtio_pci_modern_dev.ko",
	"drivers/virtio/virtio_pci_legacy_dev.ko", "drivers/virtio/virtio_pci.ko", "drivers/block/virtio_blk.ko",
	"crypto/crc32c_generic.ko", "lib/libcrc32c.ko", "fs/xfs/xfs.ko",
}

const guestInit = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev /mnt
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in MODULES; do insmod /lib/modules/$m || echo "KILN-INSMOD-FAILED: $m"; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /dev/vda ] && break; sleep 0.5; done
if mount -t xfs -o ro /dev/vda /mnt; then
  cd /mnt && find . -type f | sort | while read f; do echo "KILN-SUM $(sha256sum "$f")"; done
  find . -type d | sort | sed 's/^/KILN-DIR /'
  cd / && umount /mnt && echo KILN-RO-OK
fi
if mount -t xfs /dev/vda /mnt; then
  mkdir /mnt/B && cp /mnt/A/vmlinuz /mnt/B/vmlinuz && cp /mnt/A/initramfs.xz /mnt/B/initramfs.xz &&
    echo new > /mnt/grub/grub.cfg && rm -r /mnt/A /mnt/grub/i386-pc && umount /mnt && echo KILN-RW-OK
fi
dmesg | grep -i xfs | sed 's/^/KILN-DMESG /'
echo KILN-DONE
poweroff -f
`

// TestKernelQEMU boots Debian's kernel (the e2e fixture, Linux 6.1) in QEMU
// with the image as a virtio disk: the guest mounts it read-only and hashes
// every file, then mounts it read-write, writes an upgrade's worth and
// unmounts; xfs_repair -n must then still find it clean. lts_6.12's
// features are the newest Linux 6.1 mounts (lts_6.18 adds exchange, which
// TestExchange shows is only a superblock bit).
func TestKernelQEMU(t *testing.T) {
	testfixture.RequireTool(t, "qemu-system-x86_64", "cpio", "xfs_repair")
	kernel, mods := testfixture.Kernel(), testfixture.ModulesDir()
	testfixture.Require(t, kernel, mods, "/bin/busybox")
	dir := t.TempDir()
	initrd := guestInitrd(t, dir, mods)
	// Small kernel and initramfs: the guest hashes every byte under TCG.
	files := bootFilesSized(300, 3<<20+123, 6<<20+7)
	for _, ss := range []int{512, 4096} {
		t.Run(map[int]string{512: "512", 4096: "4096"}[ss], func(t *testing.T) {
			img := buildImage(t, BootSize, files, Options{Features: &LTS612, SectorSize: ss})
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Second)
			defer cancel()
			args := []string{"-machine", "q35", "-m", "512", "-smp", "1", "-nographic", "-no-reboot",
				"-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 no_timer_check",
				"-drive", "file=" + img + ",format=raw,if=none,id=d0",
				"-device", "virtio-blk-pci,drive=d0,logical_block_size=" + strconv.Itoa(ss) + ",physical_block_size=" + strconv.Itoa(ss)}
			out, err := exec.CommandContext(ctx, "qemu-system-x86_64", args...).CombinedOutput()
			console := string(out)
			if !strings.Contains(console, "KILN-DONE") {
				t.Fatalf("no KILN-DONE (err %v):\n%s", err, tail(console, 4000))
			}
			for _, l := range strings.Split(console, "\n") {
				if strings.HasPrefix(l, "KILN-DMESG") || strings.HasPrefix(l, "KILN-INSMOD") {
					t.Log(strings.TrimSpace(l))
				}
			}
			for _, w := range []string{"KILN-RO-OK", "KILN-RW-OK"} {
				if !strings.Contains(console, w) {
					t.Errorf("console lacks %s:\n%s", w, tail(console, 4000))
				}
			}
			got := map[string]string{}
			for _, l := range strings.Split(console, "\n") {
				l = strings.TrimSpace(l)
				if f := strings.Fields(l); len(f) == 3 && f[0] == "KILN-SUM" {
					got[strings.TrimPrefix(f[2], "./")] = f[1]
				} else if len(f) == 2 && f[0] == "KILN-DIR" && f[1] != "." {
					got[strings.TrimPrefix(f[1], "./")] = "dir"
				}
			}
			w := want(t, files)
			for k, v := range w {
				if got[k] != v {
					t.Errorf("guest: %s = %q, want %q", k, got[k], v)
				}
			}
			if len(got) != len(w) {
				t.Errorf("guest saw %d entries, want %d", len(got), len(w))
			}
			repairClean(t, img)
		})
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func guestInitrd(t *testing.T, dir, mods string) string {
	t.Helper()
	root := filepath.Join(dir, "initrd-root")
	for _, d := range []string{"bin", "lib/modules"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cp := func(src, dst string, mode os.FileMode) {
		in, err := os.Open(src)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		if _, err := io.Copy(out, in); err != nil {
			t.Fatal(err)
		}
	}
	cp("/bin/busybox", filepath.Join(root, "bin/busybox"), 0o755)
	var names []string
	for _, m := range guestModules {
		cp(filepath.Join(mods, "kernel", m), filepath.Join(root, "lib/modules", filepath.Base(m)), 0o644)
		names = append(names, filepath.Base(m))
	}
	init := strings.Replace(guestInit, "MODULES", strings.Join(names, " "), 1)
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "initrd.cpio")
	cmd := exec.Command("sh", "-c", "find . | cpio -o -H newc --quiet > "+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio: %v: %s", err, b)
	}
	return out
}
