//go:build e2e

package e2e

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/kiln-dev/kiln/builder/cpio"
)

// The boot fixture is a Talos-shaped release made of Debian's real parts:
// the kernel of linux-image-amd64, systemd-boot-efi's boot loader and stub,
// and an initramfs shaped like Talos's: /init (a busybox script standing in
// for Talos's Go init) and /rootfs.sqsh, a zstd squashfs made by mksquashfs
// as Talos makes its own, holding busybox, Debian's kmod (modprobe, with
// its libraries) and getfattr, and a base module tree with depmod's files
// (fat.ko and md-mod.ko, which the extension modules need).
//
// /init does what Talos's init does where it matters (internal/app/init
// main.go mountRootFS and bindMountFirmware): it mounts every layer
// extensions.yaml lists (loop device, squashfs, read-only) at
// /layers/layer<i>, rootfs.sqsh at /layers/root, overlays them read-only
// with lowerdir layerN-1:...:layer0:root (later layers win), bind-mounts
// the initramfs's /usr/lib/firmware into the new root, and fails loudly
// (KILN-BOOT-FAILED, then power-off) when a layer does not mount or is not
// xz or zstd: Debian's kernel mounts gzip squashfs, the Talos kernel does
// not (CONFIG_SQUASHFS_ZLIB unset), so the fixture refuses it itself. In
// the new root it loads extension modules by name, vfat with kmod's
// modprobe (libkmod reads only the .bin indexes, as udevd does) and raid1
// with busybox's (the text modules.dep, as the loader of Talos's machined
// reads it), and reports the firmware and the SELinux labels it finds.
// Markers are unique lines the tests look for on the serial console.
const bootInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
/bin/busybox --install -s /bin
export PATH=/bin
fail() {
  echo "KILN-BOOT-FAILED: $*"
  poweroff -f
  sleep 60
}
echo "KILN-CMDLINE: $(cat /proc/cmdline)"
echo "KILN-EXTENSIONS-BEGIN"
cat /extensions.yaml 2>/dev/null
echo "KILN-EXTENSIONS-END"
for m in $(cat /etc/kiln-modules); do insmod "$m" 2>/dev/null; done
# The squashfs compressor id is the little-endian u16 at offset 20.
check_sqsh() {
  comp=$(dd if="$1" bs=1 skip=20 count=2 2>/dev/null | od -An -tu2 | tr -d ' ')
  case "$comp" in
    4|6) ;;
    *) fail "$1 has squashfs compressor $comp; the Talos kernel mounts xz (4) and zstd (6) only" ;;
  esac
}
mkdir -p /root /layers/root
check_sqsh /rootfs.sqsh
images=$(sed -n 's/^[ -]*image: *//p' /extensions.yaml 2>/dev/null)
if [ -z "$images" ]; then
  mount -t squashfs -o loop,ro /rootfs.sqsh /root || fail "rootfs.sqsh did not mount: $(dmesg | tail -3 | tr '\n' ' ')"
  echo "KILN-LAYERS: "
else
  i=0
  lower=""
  for img in $images; do
    check_sqsh "/$img"
    mkdir -p /layers/layer$i
    mount -t squashfs -o loop,ro "/$img" /layers/layer$i || fail "layer $img did not mount: $(dmesg | tail -3 | tr '\n' ' ')"
    lower="/layers/layer$i${lower:+:}$lower"
    i=$((i+1))
  done
  mount -t squashfs -o loop,ro /rootfs.sqsh /layers/root || fail "rootfs.sqsh did not mount: $(dmesg | tail -3 | tr '\n' ' ')"
  mount -t overlay overlay -o ro,lowerdir="$lower:/layers/root" /root || fail "overlay $lower did not mount: $(dmesg | tail -3 | tr '\n' ' ')"
  echo "KILN-LAYERS: $(echo $images)"
  echo "KILN-LOWERDIR: $lower:/layers/root"
fi
[ -d /usr/lib/firmware ] && { mount --bind /usr/lib/firmware /root/usr/lib/firmware || fail "firmware bind mount"; }
mount -t proc proc /root/proc
mount -t sysfs sys /root/sys
mount -t devtmpfs dev /root/dev
echo "KILN-ROOT: $(cat /root/etc/kiln-rootfs)"
echo "KILN-FIRMWARE: $(cd /root && find usr/lib/firmware -type f | sort | tr '\n' ' ')"
echo "KILN-SELINUX: $(chroot /root getfattr -R -h --absolute-names -m security.selinux -d /usr/local /etc/cri /usr/lib/firmware /usr/lib/modules 2>/dev/null | grep . | tr '\n' ' ')"
if out=$(chroot /root /usr/sbin/modprobe vfat 2>&1); then
  echo "KILN-MODPROBE-KMOD: $(cut -d' ' -f1 /proc/modules | grep -x -e vfat -e fat | sort | tr '\n' ' ')"
else
  echo "KILN-MODPROBE-KMOD-FAILED: $out"
fi
if out=$(chroot /root /usr/bin/busybox modprobe raid1 2>&1); then
  echo "KILN-MODPROBE-BUSYBOX: $(cut -d' ' -f1 /proc/modules | grep -x -e raid1 -e md_mod | sort | tr '\n' ' ')"
else
  echo "KILN-MODPROBE-BUSYBOX-FAILED: $out"
fi
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
  case "$d" in /dev/loop*) continue ;; esac
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

// bootModules are the drivers the fixture loads from its initramfs: virtio
// disks, AHCI CD-ROMs (q35) and USB sticks on xhci to see its boot medium,
// and loop, squashfs and overlay to mount its root as Talos does (the
// Talos kernel has them built in, Debian's as modules). Their dependencies
// come from .modinfo.
var bootModules = []string{"virtio_pci", "virtio_blk", "ahci", "sr_mod", "sd_mod", "xhci_pci", "usb_storage", "uas", "isofs",
	"crc32c_generic", "ext4", "loop", "squashfs", "overlay"}

// baseTreeModules are the base module tree of the fixture's rootfs.sqsh:
// the dependencies of the extension modules (ExtensionModules), which
// must come from the base, as a real extension's do.
var baseTreeModules = []string{"kernel/fs/fat/fat.ko", "kernel/drivers/md/md-mod.ko"}

// extensionModules are real modules of the fixture kernel for the
// kernel-module extension, each needing one base module: vfat needs fat,
// raid1 needs md-mod. Debian's 6.1 modules are not compressed (and Talos
// has no module compression either).
func extensionModules(t *testing.T, in bootInputs, kver string) map[string][]byte {
	t.Helper()

	out := map[string][]byte{}

	for dst, src := range map[string]string{"extras/vfat.ko": "kernel/fs/fat/vfat.ko", "extras/raid1.ko": "kernel/drivers/md/raid1.ko"} {
		data, err := os.ReadFile(filepath.Join(in.kernelDir, "lib", "modules", kver, src))
		if err != nil {
			t.Fatal(err)
		}

		out[dst] = data
	}

	return out
}

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

// bootAssets returns demo release Assets for amd64 made of Debian's parts.
func bootAssets(t *testing.T, in bootInputs) (func(arch, file string) ([]byte, error), string) {
	t.Helper()

	kernels, _ := filepath.Glob(filepath.Join(in.kernelDir, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		t.Fatalf("want one kernel in %s/boot, found %v", in.kernelDir, kernels)
	}

	kver := strings.TrimPrefix(filepath.Base(kernels[0]), "vmlinuz-")

	rootfs := bootRootfs(t, in, kver)

	initramfs, err := bootInitramfs(in, kver, rootfs)
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

// bootInitramfs is the release initramfs: a zstd newc cpio, as Talos's is,
// with /init and /rootfs.sqsh, and (what Talos's kernel has built in) the
// busybox that runs /init and the drivers it loads.
func bootInitramfs(in bootInputs, kver string, rootfs []byte) ([]byte, error) {
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
		func() error { return add("rootfs.sqsh", 0o644, rootfs, "") },
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

// bootRootfs makes the fixture's rootfs.sqsh with the real mksquashfs,
// zstd level 18 and all files root's, as Talos's labeled-squashfs.sh does:
// busybox, kmod (modprobe) and getfattr with the libraries ldd names, a
// usr-merged layout (bin, sbin, lib, lib64 link into usr, as in Talos from
// 1.10), an empty usr/lib/firmware to bind the initramfs's firmware onto,
// and usr/lib/modules/<kver> holding baseTreeModules, Debian's
// modules.order, modules.builtin and modules.builtin.modinfo and what
// Debian's depmod makes of them (Talos's Dockerfile runs depmod -b too).
// The image is built once per test binary.
func bootRootfs(t *testing.T, in bootInputs, kver string) []byte {
	t.Helper()

	rootfsOnce.Do(func() { rootfsImage, rootfsErr = makeBootRootfs(in, kver) })

	if rootfsErr != nil {
		t.Fatalf("boot fixture rootfs.sqsh: %v", rootfsErr)
	}

	return rootfsImage
}

var (
	rootfsOnce  sync.Once
	rootfsImage []byte
	rootfsErr   error
)

func makeBootRootfs(in bootInputs, kver string) ([]byte, error) {
	for _, tool := range []string{"mksquashfs", "depmod", "ldd", "/usr/bin/kmod", "/usr/bin/getfattr"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s (make e2e-debs installs it): %w", tool, err)
		}
	}

	dir, err := os.MkdirTemp("", "kiln-boot-rootfs-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)

	root := filepath.Join(dir, "root")

	copyIn := func(src, dst string, mode os.FileMode) error {
		data, err := os.ReadFile(src)
		if err != nil {
			return err
		}

		p := filepath.Join(root, dst)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}

		return os.WriteFile(p, data, mode)
	}

	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib/firmware", "usr/lib64", "etc", "proc", "sys", "dev", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return nil, err
		}
	}

	for link, target := range map[string]string{"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64",
		"usr/sbin/modprobe": "../bin/kmod"} {
		if err := os.Symlink(target, filepath.Join(root, link)); err != nil {
			return nil, err
		}
	}

	if err := os.WriteFile(filepath.Join(root, "etc/kiln-rootfs"), []byte("kiln boot fixture root filesystem\n"), 0o644); err != nil {
		return nil, err
	}

	for src, dst := range map[string]string{in.busybox: "usr/bin/busybox", "/usr/bin/kmod": "usr/bin/kmod", "/usr/bin/getfattr": "usr/bin/getfattr"} {
		if err := copyIn(src, dst, 0o755); err != nil {
			return nil, err
		}
	}

	// The shared libraries, where the loader looks for them: /lib/... and
	// /lib64/... resolve through the usr-merge links.
	for _, bin := range []string{"/usr/bin/kmod", "/usr/bin/getfattr"} {
		out, err := exec.Command("ldd", bin).Output()
		if err != nil {
			return nil, fmt.Errorf("ldd %s: %w", bin, err)
		}

		for _, f := range strings.Fields(string(out)) {
			if !strings.HasPrefix(f, "/") {
				continue
			}

			if err := copyIn(f, "usr/"+strings.TrimPrefix(strings.TrimPrefix(f, "/usr"), "/"), 0o755); err != nil {
				return nil, err
			}
		}
	}

	src := filepath.Join(in.kernelDir, "lib", "modules", kver)
	dst := "usr/lib/modules/" + kver + "/"

	for _, f := range append([]string{"modules.order", "modules.builtin", "modules.builtin.modinfo"}, baseTreeModules...) {
		if err := copyIn(filepath.Join(src, f), dst+f, 0o644); err != nil {
			return nil, err
		}
	}

	if out, err := exec.Command("depmod", "-b", filepath.Join(root, "usr"), kver).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("depmod: %w: %s", err, out)
	}

	img := filepath.Join(dir, "rootfs.sqsh")
	if out, err := exec.Command("mksquashfs", root, img, "-all-root", "-noappend", "-comp", "zstd", "-Xcompression-level", "18",
		"-no-progress", "-quiet").CombinedOutput(); err != nil {
		return nil, fmt.Errorf("mksquashfs: %w: %s", err, out)
	}

	return os.ReadFile(img)
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
