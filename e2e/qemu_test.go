//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
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

// TestBootFixture boots the fixture's kernel and initramfs directly, so a
// failure of the kiln boot tests is kiln's, not the fixture's.
func TestBootFixture(t *testing.T) {
	in := bootInputsFromEnv(t)
	assets, _ := bootAssets(t, in)
	dir := t.TempDir()

	for file, name := range map[string]string{"vmlinuz": "vmlinuz", "initramfs.xz": "initrd"} {
		data, err := assets("amd64", file)
		if err != nil {
			t.Fatal(err)
		}

		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}

	console := qemu(t, 2*time.Minute, false,
		"-kernel", filepath.Join(dir, "vmlinuz"), "-initrd", filepath.Join(dir, "initrd"),
		"-append", "console=ttyS0 panic=-1 kiln.fixture=1",
		"-drive", "file="+disk+",format=raw,if=virtio")

	if !strings.Contains(consoleLine(console, "CMDLINE"), "kiln.fixture=1") || !strings.Contains(consoleLine(console, "DISKS"), "vda") ||
		!strings.Contains(console, "KILN-BOOT-DONE") {
		t.Fatalf("fixture did not report its cmdline and virtio disk:\n%s", tail(console, 3000))
	}
}
