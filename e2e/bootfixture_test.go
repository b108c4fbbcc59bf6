//go:build e2e

package e2e

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/kiln-dev/kiln/builder/cpio"
)

// The boot fixture is a Talos-shaped release made of Debian's real parts:
// the kernel of linux-image-amd64, systemd-boot-efi's boot loader and stub,
// and a busybox initramfs whose /init reports what a Talos node would need
// to find (its kernel command line, the extension layers it was given, the
// disks it sees and what META holds), then powers off.

// bootInit is the fixture's /init. Markers are unique lines the test looks
// for on the serial console.
const bootInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
export PATH=/bin
echo "KILN-CMDLINE: $(cat /proc/cmdline)"
echo "KILN-EXTENSIONS-BEGIN"
cat /extensions.yaml 2>/dev/null
echo "KILN-EXTENSIONS-END"
echo "KILN-LAYERS: $(ls / | grep '\.sqsh$' | tr '\n' ' ')"
echo "KILN-FIRMWARE: $(find /usr/lib/firmware -type f 2>/dev/null | tr '\n' ' ')"
for m in $(cat /etc/kiln-modules); do insmod "$m" 2>/dev/null; done
for i in 1 2 3 4 5 6 7 8 9 10; do
  [ -n "$(ls /sys/block | grep -v -e '^loop' -e '^ram')" ] && break
  sleep 1
done
sleep 2
echo "KILN-DISKS: $(ls /sys/block | grep -v -e '^loop' -e '^ram' | tr '\n' ' ')"
for p in /sys/class/block/*; do
  if grep -q '^PARTNAME=META$' "$p/uevent" 2>/dev/null; then
    echo "KILN-META: $(dd if=/dev/$(basename $p) bs=512 count=8 2>/dev/null | base64 | tr -d '\n')"
  fi
done
# The image cache, found the way Talos finds it: a partition labelled
# IMAGECACHE (ext4), or an iso9660/vfat volume whose label starts TALOS_.
mkdir -p /cache
dev=$(findfs LABEL=IMAGECACHE 2>/dev/null)
if [ -n "$dev" ]; then
  if mount -t ext4 -o ro "$dev" /cache; then
    echo "KILN-IMAGECACHE-DISK: $(cd /cache && find manifests -type f | sort | tr '\n' ' ')"
    umount /cache
  else
    echo "KILN-IMAGECACHE-MOUNT-FAILED: $dev $(dmesg | tail -3 | tr '\n' ' ')"
  fi
fi
for b in /sys/block/*; do
  d=/dev/$(basename $b)
  if mount -t iso9660 -o ro "$d" /cache 2>/dev/null; then
    if [ -d /cache/imagecache ]; then
      echo "KILN-IMAGECACHE-ISO: $(cd /cache/imagecache && find manifests -type f 2>/dev/null | sort | tr '\n' ' ')"
    fi
    umount /cache
  fi
done
echo "KILN-BOOT-DONE"
poweroff -f
`

// bootModules are the drivers the fixture loads to see its boot medium:
// virtio disks, AHCI CD-ROMs (q35) and USB sticks on xhci. The Debian
// kernel builds them as modules; their dependencies come from .modinfo.
var bootModules = []string{"virtio_pci", "virtio_blk", "ahci", "sr_mod", "sd_mod", "xhci_pci", "usb_storage", "uas", "isofs", "crc32c_generic", "ext4"}

type bootInputs struct {
	kernelDir string // root of the unpacked linux-image deb
	busybox   string
	sdboot    string // systemd-boot-efi's directory
}

func bootInputsFromEnv(t *testing.T) bootInputs {
	t.Helper()

	in := bootInputs{
		kernelDir: os.Getenv("KILN_E2E_KERNEL"),
		busybox:   "/bin/busybox",
		sdboot:    "/usr/lib/systemd/boot/efi",
	}

	for _, p := range []string{in.kernelDir, in.busybox, filepath.Join(in.sdboot, "systemd-bootx64.efi"), filepath.Join(in.sdboot, "linuxx64.efi.stub")} {
		if p == "" {
			t.Fatal("KILN_E2E_KERNEL is not set: run this suite through make e2e")
		}

		if _, err := os.Stat(p); err != nil {
			t.Fatalf("boot fixture input: %v (make e2e installs it)", err)
		}
	}

	return in
}

// bootAssets returns testrelease Assets for amd64 made of Debian's parts.
func bootAssets(t *testing.T, in bootInputs) (func(arch, file string) ([]byte, error), string) {
	t.Helper()

	kernels, _ := filepath.Glob(filepath.Join(in.kernelDir, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		t.Fatalf("want one kernel in %s/boot, found %v", in.kernelDir, kernels)
	}

	kver := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")

	initramfs, err := bootInitramfs(in, kver)
	if err != nil {
		t.Fatal(err)
	}

	files := map[string]string{
		"vmlinuz":          kernels[0],
		"systemd-boot.efi": filepath.Join(in.sdboot, "systemd-bootx64.efi"),
		"systemd-stub.efi": filepath.Join(in.sdboot, "linuxx64.efi.stub"),
	}

	return func(arch, file string) ([]byte, error) {
		if arch != "amd64" {
			return nil, fs.ErrNotExist
		}

		if file == "initramfs.xz" {
			return initramfs, nil
		}

		if p, ok := files[file]; ok {
			return os.ReadFile(p)
		}

		return nil, fs.ErrNotExist
	}, kver
}

// bootInitramfs is the release initramfs: a zstd newc cpio, as Talos's is.
func bootInitramfs(in bootInputs, kver string) ([]byte, error) {
	modDir := filepath.Join(in.kernelDir, "lib", "modules", kver)

	order, err := moduleOrder(modDir, bootModules)
	if err != nil {
		return nil, err
	}

	var raw bytes.Buffer

	w := cpio.NewWriter(&raw)
	mtime := time.Unix(1559424892, 0)

	add := func(name string, mode uint32, data []byte, link string) error {
		h := &cpio.Header{Name: name, Mode: mode, ModTime: mtime, Size: int64(len(data)), Linkname: link}
		if err := w.WriteHeader(h); err != nil {
			return err
		}

		_, err := w.Write(data)

		return err
	}

	busybox, err := os.ReadFile(in.busybox)
	if err != nil {
		return nil, err
	}

	var list strings.Builder

	entries := []func() error{
		func() error { return add("bin", cpio.TypeDir|0o755, nil, "") },
		func() error { return add("bin/busybox", 0o755, busybox, "") },
		func() error { return add("etc", cpio.TypeDir|0o755, nil, "") },
		func() error { return add("init", 0o755, []byte(bootInit), "") },
	}

	for _, e := range entries {
		if err := e(); err != nil {
			return nil, err
		}
	}

	dirs := map[string]bool{}

	for _, rel := range order {
		for d := filepath.Dir(filepath.Join("lib/modules", kver, rel)); d != "." && !dirs[d]; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}

	sorted := make([]string, 0, len(dirs))
	for d := range dirs {
		sorted = append(sorted, d)
	}

	slices.SortFunc(sorted, func(a, b string) int { return strings.Count(a, "/") - strings.Count(b, "/") })

	if err := add("lib", cpio.TypeDir|0o755, nil, ""); err != nil {
		return nil, err
	}

	for _, d := range sorted {
		if err := add(d, cpio.TypeDir|0o755, nil, ""); err != nil {
			return nil, err
		}
	}

	for _, rel := range order {
		data, err := os.ReadFile(filepath.Join(modDir, rel))
		if err != nil {
			return nil, err
		}

		p := filepath.Join("lib/modules", kver, rel)
		if err := add(p, 0o644, data, ""); err != nil {
			return nil, err
		}

		list.WriteString("/" + p + "\n")
	}

	if err := add("etc/kiln-modules", 0o644, []byte(list.String()), ""); err != nil {
		return nil, err
	}

	if err := w.Close(); err != nil {
		return nil, err
	}

	var out bytes.Buffer

	zw, err := zstd.NewWriter(&out, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, err
	}

	if _, err := zw.Write(raw.Bytes()); err != nil {
		return nil, err
	}

	if err := zw.Close(); err != nil {
		return nil, err
	}

	return out.Bytes(), nil
}

// moduleOrder resolves modules and their dependencies (from each module's
// .modinfo "depends=") to paths under modDir, dependencies first.
func moduleOrder(modDir string, want []string) ([]string, error) {
	index := map[string]string{}

	err := filepath.WalkDir(filepath.Join(modDir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		if !d.IsDir() && strings.HasSuffix(p, ".ko") {
			rel, _ := filepath.Rel(modDir, p)
			index[normModule(strings.TrimSuffix(d.Name(), ".ko"))] = rel
		}

		return nil
	})
	if err != nil {
		return nil, err
	}

	var (
		order []string
		seen  = map[string]bool{}
		visit func(string) error
	)

	visit = func(m string) error {
		m = normModule(m)
		if seen[m] {
			return nil
		}

		seen[m] = true

		rel, ok := index[m]
		if !ok {
			return nil // built into the kernel
		}

		deps, err := moduleDepends(filepath.Join(modDir, rel))
		if err != nil {
			return err
		}

		for _, d := range deps {
			if err := visit(d); err != nil {
				return err
			}
		}

		order = append(order, rel)

		return nil
	}

	for _, m := range want {
		if err := visit(m); err != nil {
			return nil, err
		}
	}

	if len(order) == 0 {
		return nil, errors.New("no boot modules found in " + modDir)
	}

	return order, nil
}

func normModule(n string) string { return strings.ReplaceAll(n, "-", "_") }

func moduleDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()

	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}

	data, err := sec.Data()
	if err != nil {
		return nil, err
	}

	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok && len(v) > 0 {
			return strings.Split(string(v), ","), nil
		}
	}

	return nil, nil
}
