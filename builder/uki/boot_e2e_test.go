//go:build e2e

package uki_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/cmdline"
	"github.com/kiln-dev/kiln/builder/uki"
)

const (
	busybox = "/bin/busybox"
	ovmf    = "/usr/share/ovmf/OVMF.fd"
)

// newc writes a minimal "newc" cpio archive (what the kernel unpacks as
// initramfs).
type newc struct {
	buf bytes.Buffer
	ino int
}

func (c *newc) add(name string, mode uint32, data []byte, rdevMajor, rdevMinor int) {
	c.ino++
	fmt.Fprintf(&c.buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.buf.WriteString(name + "\x00")
	c.pad()
	c.buf.Write(data)
	c.pad()
}

func (c *newc) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

func (c *newc) bytes() []byte {
	c.add("TRAILER!!!", 0, nil, 0, 0)

	for c.buf.Len()%512 != 0 {
		c.buf.WriteByte(0)
	}

	return c.buf.Bytes()
}

// TestBootUKI builds a UKI from Debian's stub and kernel with a busybox
// initramfs that prints /proc/cmdline, boots it with OVMF from a FAT ESP
// (EFI/BOOT/BOOTX64.EFI) and checks the command line the kernel got.
func TestBootUKI(t *testing.T) {
	need(t, debianStub, debianKernel, busybox, ovmf)

	for _, tool := range []string{"qemu-system-x86_64", "mkfs.vfat", "mmd", "mcopy"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}

	bb, err := os.ReadFile(busybox)
	if err != nil {
		t.Fatal(err)
	}

	init := "#!/bin/busybox sh\n" +
		"/bin/busybox mount -t proc proc /proc\n" +
		"/bin/busybox echo \"KILN-CMDLINE[$(/bin/busybox cat /proc/cmdline)]\"\n" +
		"/bin/busybox poweroff -f\n"

	var cpio newc
	cpio.add("bin", 0o40755, nil, 0, 0)
	cpio.add("bin/busybox", 0o100755, bb, 0, 0)
	cpio.add("dev", 0o40755, nil, 0, 0)
	cpio.add("dev/console", 0o20600, nil, 5, 1)
	cpio.add("proc", 0o40755, nil, 0, 0)
	cpio.add("init", 0o100755, []byte(init), 0, 0)
	initrd := cpio.bytes()

	// The Talos metal command line with the serial console added by
	// extra args, as a user of the factory would do.
	line, err := cmdline.Build(cmdline.Options{
		Platform: "metal", Arch: "amd64", TalosVersion: "v1.13.0",
		ExtraArgs: []string{"console=ttyS0", "-module.sig_enforce", "panic=-1"},
	})
	if err != nil {
		t.Fatal(err)
	}

	kernel, err := os.Open(debianKernel)
	if err != nil {
		t.Fatal(err)
	}
	defer kernel.Close()

	st, err := kernel.Stat()
	if err != nil {
		t.Fatal(err)
	}

	stub, err := os.Open(debianStub)
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()

	osrel, err := uki.OSRelease("Talos", "v1.13.0")
	if err != nil {
		t.Fatal(err)
	}

	start := time.Now()

	ukiPath, _ := assembleFile(t, stub, uki.Sections{
		OSRel:   osrel,
		Cmdline: line,
		Uname:   "6.1.0-56-amd64",
		Linux:   uki.Blob{R: kernel, Size: st.Size()},
		Initrd:  uki.Blob{R: bytes.NewReader(initrd), Size: int64(len(initrd))},
	}, uki.Options{StripSymbols: true})

	t.Logf("assembled in %v", time.Since(start))

	dir := t.TempDir()
	esp := filepath.Join(dir, "esp.img")

	run := func(name string, args ...string) {
		t.Helper()

		if out, err := exec.CommandContext(t.Context(), name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}

	run("mkfs.vfat", "-C", esp, "65536") // 64 MiB, FAT16
	run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT")
	run("mcopy", "-i", esp, ukiPath, "::/EFI/BOOT/BOOTX64.EFI")

	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()

	start = time.Now()

	cmd := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-machine", "q35,accel=tcg", "-m", "512", "-nographic", "-no-reboot",
		"-bios", ovmf,
		"-drive", "file="+esp+",format=raw,if=ide",
		"-net", "none",
	)

	out, err := cmd.CombinedOutput()

	t.Logf("qemu ran %v", time.Since(start))

	if ctx.Err() != nil {
		t.Fatalf("qemu timed out; output tail:\n%s", tail(out))
	}

	if err != nil {
		t.Logf("qemu: %v", err)
	}

	_, after, ok := strings.Cut(string(out), "KILN-CMDLINE[")
	if !ok {
		t.Fatalf("no command line on the console; output tail:\n%s", tail(out))
	}

	got, _, _ := strings.Cut(after, "]")
	t.Logf("kernel cmdline: %s", got)
	if got = strings.TrimSpace(got); got != line {
		t.Errorf("kernel saw cmdline\n%q\nwant\n%q", got, line)
	}
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}

	return string(b)
}
