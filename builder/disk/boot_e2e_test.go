//go:build e2e

package disk

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/meta"
)

const (
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// TestBootOVMF boots the raw disk (systemd-boot → UKI with Debian's kernel
// and a busybox initrd) in QEMU/OVMF under TCG and checks the serial console.
func TestBootOVMF(t *testing.T) {
	needFixtures(t)
	needTools(t, "qemu-system-x86_64")
	for _, p := range []string{ovmfCode, ovmfVars} {
		if _, err := os.Stat(p); err != nil {
			t.Skip(err)
		}
	}
	dir := t.TempDir()
	uki := buildUKI(t, dir, "console=ttyS0 kiln.test=raw-disk", buildInitrd(t, dir))
	files := bootESP(t, dir, uki, "# systemd-boot configuration\n\ntimeout 0\n")
	metaImg, err := meta.Partition([]meta.Value{{Key: 0x0c, Value: "boot-test"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, sector := range []int{512, 4096} {
		t.Run(map[int]string{512: "512", 4096: "4096"}[sector], func(t *testing.T) {
			img := filepath.Join(dir, "disk.raw")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			p := Params{SectorSize: sector, EFI: ESP(files, esp.Options{}), META: bytes.NewReader(metaImg)}
			if err := Write(context.Background(), f, p); err != nil {
				t.Fatal(err)
			}
			f.Close()
			vars := filepath.Join(dir, "vars.fd")
			cp(t, ovmfVars, vars, 0o644)

			ctx, cancel := context.WithTimeout(context.Background(), 240*time.Second)
			defer cancel()
			drive := "-drive"
			args := []string{"-machine", "q35", "-m", "512", "-smp", "1", "-nographic", "-no-reboot",
				"-drive", "if=pflash,format=raw,readonly=on,file=" + ovmfCode,
				"-drive", "if=pflash,format=raw,file=" + vars,
			}
			if sector == 512 {
				args = append(args, drive, "file="+img+",format=raw,if=virtio")
			} else {
				args = append(args, drive, "file="+img+",format=raw,if=none,id=d0",
					"-device", "virtio-blk-pci,drive=d0,logical_block_size=4096,physical_block_size=4096")
			}
			start := time.Now()
			out, err := exec.CommandContext(ctx, "qemu-system-x86_64", args...).CombinedOutput()
			console := string(out)
			t.Logf("QEMU ran %v (err %v)", time.Since(start).Round(time.Millisecond), err)
			if !strings.Contains(console, "KILN-DONE") {
				t.Fatalf("no KILN-DONE on the console:\n%s", tail(console, 3000))
			}
			disks := uint64(SDBootDiskSize / 512)
			for _, want := range []string{
				"KILN-CMDLINE: console=ttyS0 kiln.test=raw-disk",
				"KILN-DISK: vda " + itoa(disks) + " " + itoa(uint64(sector)),
				" vda1\r", " vda2\r",
			} {
				if !strings.Contains(console, want) {
					t.Errorf("console lacks %q:\n%s", want, tail(console, 3000))
				}
			}
			if strings.Contains(console, "KILN-INSMOD-FAILED") {
				t.Errorf("insmod failed:\n%s", tail(console, 3000))
			}
			for _, l := range strings.Split(console, "\n") {
				if strings.HasPrefix(l, "KILN-") {
					t.Log(strings.TrimSpace(l))
				}
			}
		})
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// virtio_blk and its dependencies in load order (modinfo depends).
var virtioModules = []string{
	"virtio/virtio_ring.ko", "virtio/virtio.ko", "virtio/virtio_pci_modern_dev.ko",
	"virtio/virtio_pci_legacy_dev.ko", "virtio/virtio_pci.ko", "block/virtio_blk.ko",
}

const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in MODULES; do insmod /lib/modules/$m.ko || echo "KILN-INSMOD-FAILED: $m"; done
for i in 1 2 3 4 5 6 7 8 9 10; do [ -e /sys/block/vda ] && break; sleep 0.5; done
echo "KILN-CMDLINE: $(cat /proc/cmdline)"
for d in /sys/block/vd*; do echo "KILN-DISK: ${d##*/} $(cat $d/size) $(cat $d/queue/logical_block_size)"; done
sed 's/^/KILN-PART: /' /proc/partitions
echo KILN-DONE
poweroff -f
`

// buildInitrd writes a newc cpio with busybox, the virtio modules and /init.
func buildInitrd(t testing.TB, dir string) string {
	t.Helper()
	root := filepath.Join(dir, "initrd-root")
	for _, d := range []string{"bin", "lib/modules", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cp(t, busyboxStatic, filepath.Join(root, "bin/busybox"), 0o755)
	var names []string
	for _, m := range virtioModules {
		cp(t, filepath.Join(fixtureModules, m), filepath.Join(root, "lib/modules", filepath.Base(m)), 0o644)
		names = append(names, strings.TrimSuffix(filepath.Base(m), ".ko"))
	}
	init := strings.Replace(initScript, "MODULES", strings.Join(names, " "), 1)
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

// buildUKI assembles a single-profile UKI from Debian's stub with objcopy.

func cp(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()
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

// fileOnDisk describes a host file as an esp.File.
