//go:build e2e

package iso_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/cpio"
	"github.com/kiln-dev/kiln/builder/grub"
	"github.com/kiln-dev/kiln/builder/uki"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

var kernel = testfixture.Kernel()

const (
	stub       = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	busybox    = "/usr/bin/busybox"
	ovmfCode   = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars   = "/usr/share/OVMF/OVMF_VARS_4M.fd"
	bootMarker = "KILN-ISO-BOOTED"
	// bootTimeout bounds one QEMU run; a boot takes ~10 s under TCG on an
	// idle machine, the rest is headroom for a shared one.
	bootTimeout = 240 * time.Second
)

// usbModules are the fixture kernel's modules the guest loads, in
// dependency order, to see the USB stick and mount its partition 1.
var usbModules = []string{
	"drivers/usb/common/usb-common.ko", "drivers/usb/core/usbcore.ko", "drivers/usb/host/xhci-hcd.ko",
	"drivers/usb/host/xhci-pci.ko", "drivers/scsi/scsi_common.ko", "drivers/scsi/scsi_mod.ko",
	"crypto/crct10dif_common.ko", "crypto/crct10dif_generic.ko", "lib/crc-t10dif.ko", "lib/crc64.ko",
	"crypto/crc64_rocksoft_generic.ko", "lib/crc64-rocksoft.ko", "block/t10-pi.ko", "drivers/scsi/sd_mod.ko",
	"drivers/usb/storage/usb-storage.ko", "drivers/cdrom/cdrom.ko", "fs/isofs/isofs.ko",
}

// initrd is a busybox initramfs whose /init prints the marker and the
// kernel command line on the console; then, if the boot medium is a USB
// stick (sda), mounts its partition 1 as iso9660 and prints its volume id,
// root directory mode and loader.conf's first line; then powers off.
func initrd(t *testing.T) []byte {
	t.Helper()
	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/busybox sh\n" +
		"/bin/busybox --install -s /bin\n" +
		"export PATH=/bin\n" +
		"mkdir -p /proc /sys /dev /mnt\n" +
		"mount -t proc proc /proc\n" +
		"mount -t sysfs sysfs /sys\n" +
		"mount -t devtmpfs devtmpfs /dev\n" +
		"echo \"" + bootMarker + " cmdline=[$(cat /proc/cmdline)]\"\n" +
		"for m in /lib/modules/*.ko; do insmod $m 2>/dev/null; done\n" +
		"for i in $(seq 1 40); do [ -e /dev/sda1 ] && break; sleep 0.5; done\n" +
		"if [ -e /dev/sda1 ]; then\n" +
		"  if mount -t iso9660 -o ro /dev/sda1 /mnt; then\n" +
		"    echo \"KILN-P1 volid=[$(dd if=/dev/sda1 bs=1 skip=32808 count=32 2>/dev/null | tr -d ' ')] mode=$(stat -c %a /mnt) loader=[$(head -n 1 /mnt/loader/loader.conf)]\"\n" +
		"  else\n" +
		"    echo KILN-P1-MOUNT-FAILED\n" +
		"  fi\n" +
		"fi\n" +
		"poweroff -f\n"
	var buf bytes.Buffer
	w := cpio.NewWriter(&buf)
	type entry struct {
		h    cpio.Header
		data []byte
	}
	entries := []entry{
		{cpio.Header{Name: "bin", Mode: cpio.TypeDir | 0o755}, nil},
		{cpio.Header{Name: "dev", Mode: cpio.TypeDir | 0o755}, nil},
		{cpio.Header{Name: "dev/console", Mode: cpio.TypeChar | 0o600, RDevMajor: 5, RDevMinor: 1}, nil},
		{cpio.Header{Name: "bin/busybox", Mode: cpio.TypeReg | 0o755, Size: int64(len(bb))}, bb},
		{cpio.Header{Name: "init", Mode: cpio.TypeReg | 0o755, Size: int64(len(script))}, []byte(script)},
		{cpio.Header{Name: "lib", Mode: cpio.TypeDir | 0o755}, nil},
		{cpio.Header{Name: "lib/modules", Mode: cpio.TypeDir | 0o755}, nil},
	}
	for i, m := range usbModules {
		b, err := os.ReadFile(filepath.Join(testfixture.ModulesDir(), "kernel", m))
		if err != nil {
			t.Fatal(err)
		}
		// Numbered so the shell glob loads them in dependency order.
		name := fmt.Sprintf("lib/modules/%02d-%s", i, filepath.Base(m))
		entries = append(entries, entry{cpio.Header{Name: name, Mode: cpio.TypeReg | 0o644, Size: int64(len(b))}, b})
	}
	for _, e := range entries {
		h := e.h
		if err := w.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// makeUKI assembles a single-profile UKI with kiln's builder/uki from
// Debian's stub and kernel (Debian's 252 stub knows no profiles).
func makeUKI(t *testing.T, dir, cmdline string) string {
	t.Helper()
	st, err := os.Open(stub)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	k, err := os.Open(kernel)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Close()
	ki, _ := k.Stat()
	rd := initrd(t)
	osrel, err := uki.OSRelease("Talos", talosVer)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "uki.efi")
	out, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	_, err = uki.Assemble(context.Background(), st, uki.Sections{
		OSRel:   osrel,
		Cmdline: cmdline,
		Uname:   strings.TrimPrefix(filepath.Base(kernel), "vmlinuz-"),
		Linux:   uki.Blob{R: k, Size: ki.Size()},
		Initrd:  uki.Blob{R: bytes.NewReader(rd), Size: int64(len(rd))},
	}, out, uki.Options{StripSymbols: true})
	if err != nil {
		t.Fatalf("uki.Assemble: %v", err)
	}
	return p
}

func TestBootQEMU(t *testing.T) {
	mustTool(t, "qemu-system-x86_64")
	dir := t.TempDir()
	cmdline := "console=ttyS0 talos.platform=metal kiln.test=iso"
	ukiPath := makeUKI(t, dir, cmdline)
	// timeout 0: boot the default entry at once (Talos uses 10 s).
	bt := newBootTree(t, dir, ukiPath, "# systemd-boot configuration\n\ntimeout 0\n\nsecure-boot-enroll off\n", nil)
	img, l := buildISO(t, dir, bt, 0)
	t.Logf("ISO %s: %+v (FAT16 ESP, El Torito count exact)", img, l)
	// A FAT32 ESP over 32 MiB: El Torito sector count 0, "to the end of the volume".
	dir32 := filepath.Join(dir, "fat32")
	if err := os.Mkdir(dir32, 0o755); err != nil {
		t.Fatal(err)
	}
	img32, l32 := buildISO(t, dir32, bt, 64<<20)
	t.Logf("ISO %s: %+v (FAT32 ESP, El Torito count 0)", img32, l32)

	usb := func(p string) []string {
		return []string{"-drive", "if=none,id=stick,format=raw,file=" + p, "-device", "qemu-xhci", "-device", "usb-storage,drive=stick"}
	}
	for _, tc := range []struct {
		name  string
		media []string
		usb   bool
	}{
		{"cdrom", []string{"-cdrom", img}, false},
		{"usb-disk", usb(img), true},
		{"cdrom-fat32-esp", []string{"-cdrom", img32}, false},
		{"usb-disk-fat32-esp", usb(img32), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vars := filepath.Join(t.TempDir(), "OVMF_VARS.fd")
			b, err := os.ReadFile(ovmfVars)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(vars, b, 0o644); err != nil {
				t.Fatal(err)
			}
			args := append([]string{
				"-machine", "q35", "-m", "512", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
				"-drive", "if=pflash,format=raw,readonly=on,file=" + ovmfCode,
				"-drive", "if=pflash,format=raw,file=" + vars,
			}, tc.media...)
			ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
			defer cancel()
			start := time.Now()
			cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			err = cmd.Run()
			got := out.String()
			line, p1 := "", ""
			sc := bufio.NewScanner(strings.NewReader(got))
			for sc.Scan() {
				if strings.Contains(sc.Text(), bootMarker) {
					line = sc.Text()
				}
				if strings.Contains(sc.Text(), "KILN-P1") {
					p1 = strings.TrimSpace(sc.Text())
				}
			}
			if line == "" {
				tail := got
				if len(tail) > 4000 {
					tail = tail[len(tail)-4000:]
				}
				t.Fatalf("no %s on serial after %s (err %v):\n%s", bootMarker, time.Since(start).Round(time.Second), err, tail)
			}
			if !strings.Contains(line, cmdline) {
				t.Fatalf("booted with another command line: %s", line)
			}
			t.Logf("booted in %s: %s", time.Since(start).Round(100*time.Millisecond), line)
			if tc.usb {
				// The guest kernel mounts partition 1 of the stick on its own.
				want := "KILN-P1 volid=[TALOS_V1_13_0] mode=755 loader=[# systemd-boot configuration]"
				if p1 != want {
					t.Fatalf("partition 1 in the guest: %q, want %q", p1, want)
				}
				t.Logf("guest: %s", p1)
			}
		})
	}
}

// TestBootQEMUDualBoot boots kiln's dual-boot ISO (GRUB from the host's
// i386-pc tree, Debian 12's 2.06) under SeaBIOS as a CD-ROM and as a USB
// stick through GRUB's "Talos ISO" entry, and under OVMF through
// systemd-boot; from the stick the guest kernel mounts GPT partition 1 on
// its own (mode 555: grub-mkrescue's mkisofs -r).
func TestBootQEMUDualBoot(t *testing.T) {
	mustTool(t, "qemu-system-x86_64")
	dir := t.TempDir()
	cmdline := "console=ttyS0 talos.platform=metal kiln.test=dual-boot"
	ukiPath := makeUKI(t, dir, cmdline+" kiln.via=sd-boot")
	kb, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	v, err := release.ParseVersion(talosVer)
	if err != nil {
		t.Fatal(err)
	}
	bt := newBootTree(t, dir, ukiPath, "# systemd-boot configuration\n\ntimeout 0\n\nsecure-boot-enroll off\n", map[string][]byte{
		"boot/vmlinuz":       kb,
		"boot/initramfs.xz":  initrd(t),
		"boot/grub/grub.cfg": grub.ISOConfig(v, cmdline),
	})
	img, l := buildDualBoot(t, dir, bt, hostGrubPC, 0)
	t.Logf("ISO %s: %+v", img, l)
	// A FAT32 ESP over 32 MiB: El Torito sector count 0, "to the end of the volume".
	dir32 := filepath.Join(dir, "fat32")
	if err := os.Mkdir(dir32, 0o755); err != nil {
		t.Fatal(err)
	}
	img32, l32 := buildDualBoot(t, dir32, bt, hostGrubPC, 64<<20)
	t.Logf("ISO %s: %+v", img32, l32)

	for _, tc := range []struct {
		name  string
		uefi  bool
		media []string
		want  string
	}{
		{"seabios-cdrom", false, []string{"-cdrom", img}, "BOOT_IMAGE=/boot/vmlinuz " + cmdline},
		{"seabios-usb", false, []string{"-drive", "if=none,id=stick,format=raw,file=" + img, "-device", "qemu-xhci", "-device", "usb-storage,drive=stick"},
			"BOOT_IMAGE=/boot/vmlinuz " + cmdline},
		{"ovmf-cdrom", true, []string{"-cdrom", img}, cmdline + " kiln.via=sd-boot"},
		{"ovmf-cdrom-fat32-esp", true, []string{"-cdrom", img32}, cmdline + " kiln.via=sd-boot"},
		{"seabios-cdrom-fat32-esp", false, []string{"-cdrom", img32}, "BOOT_IMAGE=/boot/vmlinuz " + cmdline},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"-machine", "q35", "-m", "512", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"}
			if tc.uefi {
				vars := filepath.Join(t.TempDir(), "OVMF_VARS.fd")
				b, err := os.ReadFile(ovmfVars)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(vars, b, 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode, "-drive", "if=pflash,format=raw,file="+vars)
			}
			ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
			defer cancel()
			start := time.Now()
			out, err := exec.CommandContext(ctx, "qemu-system-x86_64", append(args, tc.media...)...).CombinedOutput()
			var line, p1 string
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				if strings.Contains(sc.Text(), bootMarker) {
					line = sc.Text()
				}
				if strings.Contains(sc.Text(), "KILN-P1") {
					p1 = strings.TrimSpace(sc.Text())
				}
			}
			if !strings.Contains(line, "cmdline=["+tc.want+"]") {
				tail := string(out)
				if len(tail) > 4000 {
					tail = tail[len(tail)-4000:]
				}
				t.Fatalf("want cmdline=[%s] on serial, got %q after %s (err %v):\n%s", tc.want, line, time.Since(start).Round(time.Second), err, tail)
			}
			t.Logf("booted in %s: %s", time.Since(start).Round(100*time.Millisecond), line)
			if tc.name == "seabios-usb" {
				want := "KILN-P1 volid=[TALOS_V1_13_0] mode=555 loader=[# systemd-boot configuration]"
				if p1 != want {
					t.Fatalf("partition 1 in the guest: %q, want %q", p1, want)
				}
				t.Logf("guest: %s", p1)
			}
		})
	}
}

// TestBootQEMUGrubOnly boots kiln's GRUB-only ISO (the host's i386-pc and
// x86_64-efi GRUB, Debian 12's 2.06) through GRUB's "Talos ISO" entry:
// under SeaBIOS and under OVMF, each as a CD-ROM and as a USB stick
// (under OVMF GRUB's EFI image from the FAT image, its prefix ()/boot/grub
// the device it was loaded from).
func TestBootQEMUGrubOnly(t *testing.T) {
	mustTool(t, "qemu-system-x86_64")
	dir := t.TempDir()
	cmdline := "console=ttyS0 talos.platform=metal kiln.test=grub-only"
	kb, err := os.ReadFile(kernel)
	if err != nil {
		t.Fatal(err)
	}
	v, err := release.ParseVersion(talosVer)
	if err != nil {
		t.Fatal(err)
	}
	img, l := buildGrubOnly(t, dir, grubOnlyTree(t, map[string][]byte{
		"boot/vmlinuz":       kb,
		"boot/initramfs.xz":  initrd(t),
		"boot/grub/grub.cfg": grub.ISOConfig(v, cmdline),
	}))
	t.Logf("ISO %s: %+v", img, l)
	want := "BOOT_IMAGE=/boot/vmlinuz " + cmdline

	for _, tc := range []struct {
		name  string
		uefi  bool
		media []string
	}{
		{"seabios-cdrom", false, []string{"-cdrom", img}},
		{"seabios-usb", false, []string{"-drive", "if=none,id=stick,format=raw,file=" + img, "-device", "qemu-xhci", "-device", "usb-storage,drive=stick"}},
		{"ovmf-cdrom", true, []string{"-cdrom", img}},
		{"ovmf-usb", true, []string{"-drive", "if=none,id=stick,format=raw,file=" + img, "-device", "qemu-xhci", "-device", "usb-storage,drive=stick"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := []string{"-machine", "q35", "-m", "512", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"}
			if tc.uefi {
				vars := filepath.Join(t.TempDir(), "OVMF_VARS.fd")
				b, err := os.ReadFile(ovmfVars)
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(vars, b, 0o644); err != nil {
					t.Fatal(err)
				}
				args = append(args, "-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode, "-drive", "if=pflash,format=raw,file="+vars)
			}
			ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
			defer cancel()
			start := time.Now()
			out, err := exec.CommandContext(ctx, "qemu-system-x86_64", append(args, tc.media...)...).CombinedOutput()
			var line string
			sc := bufio.NewScanner(bytes.NewReader(out))
			for sc.Scan() {
				if strings.Contains(sc.Text(), bootMarker) {
					line = sc.Text()
				}
			}
			if !strings.Contains(line, "cmdline=["+want+"]") {
				tail := string(out)
				if len(tail) > 4000 {
					tail = tail[len(tail)-4000:]
				}
				t.Fatalf("want cmdline=[%s] on serial, got %q after %s (err %v):\n%s", want, line, time.Since(start).Round(time.Second), err, tail)
			}
			t.Logf("booted in %s: %s", time.Since(start).Round(100*time.Millisecond), line)
		})
	}
}
