//go:build e2e

package e2e

import (
	"bytes"
	"context"
	le "encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"

	"github.com/kiln-dev/kiln/builder/cpio"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

// ovmf returns the firmware code and a fresh writable copy of its variables.
func ovmf(t *testing.T) (code, vars string) {
	t.Helper()

	code = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	src := "/usr/share/OVMF/OVMF_VARS_4M.fd"

	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatalf("OVMF (make e2e installs ovmf): %v", err)
	}

	vars = filepath.Join(t.TempDir(), "vars.fd")
	if err := os.WriteFile(vars, data, 0o644); err != nil {
		t.Fatal(err)
	}

	return code, vars
}

// qemu boots with args under TCG and returns the serial console once the
// guest powers off (or the timeout hits).
func qemu(t *testing.T, timeout time.Duration, uefi bool, args ...string) string {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	base := []string{"-M", "q35", "-m", "1024", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio"}

	if uefi {
		code, vars := ovmf(t)
		base = append(base,
			"-drive", "if=pflash,format=raw,readonly=on,file="+code,
			"-drive", "if=pflash,format=raw,file="+vars)
	}

	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", append(base, args...)...)

	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("QEMU did not power off within %s; console:\n%s", timeout, tail(string(out), 4000))
	}

	if err != nil {
		t.Fatalf("QEMU: %v\n%s", err, tail(string(out), 4000))
	}

	return string(out)
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}

	return s
}

// consoleLine returns the value of a "KILN-<key>: " line.
func consoleLine(console, key string) string {
	for _, line := range strings.Split(console, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimRight(line, "\r"), "KILN-"+key+":"); ok {
			return strings.TrimSpace(v)
		}
	}

	return ""
}

// bootDirect boots the fixture kernel with initrd and a blank virtio disk.
func bootDirect(t *testing.T, kernel []byte, initrd []byte, cmdline string) string {
	t.Helper()

	dir := t.TempDir()

	for name, data := range map[string][]byte{"vmlinuz": kernel, "initrd": initrd, "disk.raw": make([]byte, 1<<20)} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	return qemu(t, 2*time.Minute, false,
		"-kernel", filepath.Join(dir, "vmlinuz"), "-initrd", filepath.Join(dir, "initrd"),
		"-append", "console=ttyS0 panic=-1 "+cmdline,
		"-drive", "file="+filepath.Join(dir, "disk.raw")+",format=raw,if=virtio")
}

// TestBootFixture boots the fixture's kernel and initramfs directly, so a
// failure of the kiln boot tests is kiln's, not the fixture's. With no
// extensions, /init mounts rootfs.sqsh alone (as Talos's init does) and the
// extension modules are not there to load.
func TestBootFixture(t *testing.T) {
	in := bootInputsFromEnv(t)
	assets, _ := bootAssets(t, in)

	kernel, _ := assets("amd64", "vmlinuz")
	initrd, _ := assets("amd64", "initramfs.xz")

	console := bootDirect(t, kernel, initrd, "kiln.fixture=1")

	if !strings.Contains(consoleLine(console, "CMDLINE"), "kiln.fixture=1") || !strings.Contains(consoleLine(console, "DISKS"), "vda") ||
		!strings.Contains(console, "KILN-BOOT-DONE") || strings.Contains(console, "KILN-BOOT-FAILED") {
		t.Fatalf("fixture did not report its cmdline and virtio disk:\n%s", tail(console, 3000))
	}

	if got := consoleLine(console, "ROOT"); got != "kiln boot fixture root filesystem" {
		t.Errorf("the root filesystem is not rootfs.sqsh: %q", got)
	}

	for _, key := range []string{"MODPROBE-KMOD-FAILED", "MODPROBE-BUSYBOX-FAILED"} {
		if !strings.Contains(console, "KILN-"+key+":") {
			t.Errorf("without the extension, the extension modules loaded (no KILN-%s):\n%s", key, tail(console, 3000))
		}
	}
}

// TestBootFixtureRefusesLayers: the fixture's /init fails loudly, as
// Talos's init does, on a layer that does not mount, and refuses a gzip
// layer that Debian's kernel would mount but the Talos kernel cannot.
func TestBootFixtureRefusesLayers(t *testing.T) {
	in := bootInputsFromEnv(t)
	assets, _ := bootAssets(t, in)

	kernel, _ := assets("amd64", "vmlinuz")
	initrd, _ := assets("amd64", "initramfs.xz")

	testfixture.RequireTool(t, "mksquashfs")

	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "f"), []byte("layer\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	gzipLayer := filepath.Join(t.TempDir(), "g.sqsh")
	run(t, "mksquashfs", src, gzipLayer, "-comp", "gzip", "-noappend", "-quiet")

	gz, err := os.ReadFile(gzipLayer)
	if err != nil {
		t.Fatal(err)
	}

	// A zstd layer whose blocks are garbage: the superblock passes the
	// compressor check, the mount fails.
	broken := append([]byte(nil), gz...)
	le.LittleEndian.PutUint16(broken[20:], 6)

	for _, tc := range []struct {
		name  string
		layer []byte
		want  string
	}{
		{"gzip layer", gz, "KILN-BOOT-FAILED: /0.sqsh has squashfs compressor 1; the Talos kernel mounts xz (4) and zstd (6) only"},
		{"layer that does not mount", broken, "KILN-BOOT-FAILED: layer 0.sqsh did not mount"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			extra := zstdCpio(t, map[string][]byte{
				"0.sqsh":          tc.layer,
				"extensions.yaml": []byte("layers:\n    - image: 0.sqsh\n      metadata:\n        name: test\n"),
			})

			console := bootDirect(t, kernel, append(append([]byte(nil), initrd...), extra...), "")

			if !strings.Contains(console, tc.want) || strings.Contains(console, "KILN-BOOT-DONE") {
				t.Errorf("want %q and no KILN-BOOT-DONE:\n%s", tc.want, tail(console, 3000))
			}
		})
	}
}

// zstdCpio is a zstd newc archive of files, as an appended initramfs
// segment.
func zstdCpio(t *testing.T, files map[string][]byte) []byte {
	t.Helper()

	var raw bytes.Buffer

	w := cpio.NewWriter(&raw)

	for name, data := range files {
		if err := w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | 0o644, Size: int64(len(data))}); err != nil {
			t.Fatal(err)
		}

		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}

	return enc.EncodeAll(raw.Bytes(), nil)
}
