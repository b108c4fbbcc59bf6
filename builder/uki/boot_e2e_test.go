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
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

const (
	busybox  = "/bin/busybox"
	ovmfCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
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

// busyboxInitrd is an initramfs whose /init prints the kernel command line
// between KILN-CMDLINE[ and ] on the console, then powers off.
func busyboxInitrd(t *testing.T) []byte {
	t.Helper()

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

	return cpio.bytes()
}

// assembleBootable assembles a UKI from the stub at stubPath, Debian's
// kernel and the busybox initramfs.
func assembleBootable(t *testing.T, stubPath, line string, profiles []uki.Profile) string {
	t.Helper()

	kernel, err := os.Open(debianKernel)
	if err != nil {
		t.Fatal(err)
	}
	defer kernel.Close()

	st, err := kernel.Stat()
	if err != nil {
		t.Fatal(err)
	}

	stub, err := os.Open(stubPath)
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()

	osrel, err := uki.OSRelease("Talos", "v1.13.0")
	if err != nil {
		t.Fatal(err)
	}

	initrd := busyboxInitrd(t)

	start := time.Now()

	path, _ := assembleFile(t, stub, uki.Sections{
		OSRel:    osrel,
		Cmdline:  line,
		Uname:    "6.1.0-56-amd64",
		Linux:    uki.Blob{R: kernel, Size: st.Size()},
		Initrd:   uki.Blob{R: bytes.NewReader(initrd), Size: int64(len(initrd))},
		Profiles: profiles,
	}, uki.Options{StripSymbols: true})

	t.Logf("assembled in %v", time.Since(start))

	return path
}

// espImage writes a FAT ESP holding files (path in the ESP -> file on disk
// or, for loader.conf, its text).
func espImage(t *testing.T, files map[string]string, loaderConf string) string {
	t.Helper()

	for _, tool := range []string{"mkfs.vfat", "mmd", "mcopy"} {
		testfixture.RequireTool(t, tool)
	}

	dir := t.TempDir()
	esp := filepath.Join(dir, "esp.img")

	run := func(name string, args ...string) {
		t.Helper()

		if out, err := exec.CommandContext(t.Context(), name, args...).CombinedOutput(); err != nil {
			t.Fatalf("%s %v: %v\n%s", name, args, err, out)
		}
	}

	run("mkfs.vfat", "-C", esp, "65536") // 64 MiB, FAT16
	run("mmd", "-i", esp, "::/EFI", "::/EFI/BOOT", "::/EFI/Linux", "::/loader")

	for dst, src := range files {
		run("mcopy", "-i", esp, src, "::/"+dst)
	}

	if loaderConf != "" {
		conf := filepath.Join(dir, "loader.conf")
		if err := os.WriteFile(conf, []byte(loaderConf), 0o644); err != nil {
			t.Fatal(err)
		}

		run("mcopy", "-i", esp, conf, "::/loader/loader.conf")
	}

	return esp
}

// bootOVMF boots the ESP under OVMF (TCG) and returns the command line the
// kernel printed.
func bootOVMF(t *testing.T, esp string) string {
	t.Helper()

	testfixture.RequireTool(t, "qemu-system-x86_64")
	need(t, ovmfCode, ovmfVars)

	vars := filepath.Join(t.TempDir(), "vars.fd")

	data, err := os.ReadFile(ovmfVars)
	if err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(vars, data, 0o644); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()

	start := time.Now()

	out, err := exec.CommandContext(ctx, "qemu-system-x86_64",
		"-machine", "q35,accel=tcg", "-m", "512", "-nographic", "-no-reboot",
		"-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode,
		"-drive", "if=pflash,format=raw,file="+vars,
		"-drive", "file="+esp+",format=raw,if=ide",
		"-net", "none",
	).CombinedOutput()

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

	return strings.TrimSpace(got)
}

// bootLine is the Talos metal command line with the serial console added
// by extra args, as a user of the factory would do.
func bootLine(t *testing.T, iso bool) string {
	t.Helper()

	line, err := cmdline.Build(cmdline.Options{
		Platform: "metal", Arch: "amd64", TalosVersion: release.MustParseVersion("v1.13.0"), ISO: iso,
		ExtraArgs: []string{"console=ttyS0", "-module.sig_enforce", "panic=-1"},
	})
	if err != nil {
		t.Fatal(err)
	}

	return line
}

// TestBootUKI builds a single-profile UKI from Debian's stub and kernel
// with a busybox initramfs, boots it with OVMF from a FAT ESP
// (EFI/BOOT/BOOTX64.EFI) and checks the command line the kernel got.
func TestBootUKI(t *testing.T) {
	need(t, debianStub, debianKernel, busybox)

	line := bootLine(t, false)
	path := assembleBootable(t, debianStub, line, nil)

	if got := bootOVMF(t, espImage(t, map[string]string{"EFI/BOOT/BOOTX64.EFI": path}, "")); got != line {
		t.Errorf("kernel saw cmdline\n%q\nwant\n%q", got, line)
	}
}

// TestBootProfilesDebian12Stub: Debian 12's systemd-stub 252 knows no
// profiles and boots a Talos multi-profile UKI with its last .cmdline, the
// reset profile's (boot-test-notes.md). Asserted, so a test booting kiln's
// ISO or disk with that stub knows which line it sees.
func TestBootProfilesDebian12Stub(t *testing.T) {
	need(t, debianStub, debianKernel, busybox)

	line := bootLine(t, false)

	profiles, err := uki.TalosProfiles(release.MustParseVersion("v1.13.0"), line, uki.ResetToMaintenance)
	if err != nil {
		t.Fatal(err)
	}

	path := assembleBootable(t, debianStub, line, profiles)
	want := line + " talos.experimental.wipe=system:EPHEMERAL,STATE"

	if got := bootOVMF(t, espImage(t, map[string]string{"EFI/BOOT/BOOTX64.EFI": path}, "")); got != want {
		t.Errorf("systemd-stub 252 booted\n%q\nwant the last .cmdline\n%q", got, want)
	}
}

// TestBootProfiles boots Talos multi-profile UKIs with Debian 13's
// systemd-boot and systemd-stub 257, which honour .profile sections, from
// EFI/Linux/ of an ESP as a Talos disk or ISO holds them: the default entry
// boots the main profile, and the reset profile boots when loader.conf makes
// its entry ("<uki file, lower-cased>@<profile ID>") the default. The stub
// booted straight from EFI/BOOT/BOOTX64.EFI boots the main profile too.
func TestBootProfiles(t *testing.T) {
	sdboot := testfixture.SDBootTrixieDir()
	stub, loader := filepath.Join(sdboot, "linuxx64.efi.stub"), filepath.Join(sdboot, "systemd-bootx64.efi")
	need(t, stub, loader, debianKernel, busybox)

	const ukiName = "Talos-v1.13.0.efi"

	for _, tc := range []struct {
		name  string
		iso   bool
		reset uki.Reset
		id    string
		wipe  string
	}{
		{"disk", false, uki.ResetToMaintenance, uki.ProfileResetMaintenance, "system:EPHEMERAL,STATE"},
		{"iso", true, uki.ResetSystemDisk, uki.ProfileReset, "system"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			line := bootLine(t, tc.iso)

			profiles, err := uki.TalosProfiles(release.MustParseVersion("v1.13.0"), line, tc.reset)
			if err != nil {
				t.Fatal(err)
			}

			path := assembleBootable(t, stub, line, profiles)
			files := map[string]string{"EFI/BOOT/BOOTX64.EFI": loader, "EFI/Linux/" + ukiName: path}

			t.Run("default entry boots main", func(t *testing.T) {
				// kiln's loader.conf, without the menu's wait.
				if got := bootOVMF(t, espImage(t, files, "# systemd-boot configuration\n\ntimeout 0\n")); got != line {
					t.Errorf("kernel saw cmdline\n%q\nwant the main profile's\n%q", got, line)
				}
			})

			t.Run("reset entry selected", func(t *testing.T) {
				entry := strings.ToLower(ukiName) + "@" + tc.id
				want := line + " talos.experimental.wipe=" + tc.wipe

				if got := bootOVMF(t, espImage(t, files, "timeout 0\ndefault "+entry+"\n")); got != want {
					t.Errorf("entry %s: kernel saw cmdline\n%q\nwant\n%q", entry, got, want)
				}
			})
		})
	}

	t.Run("stub alone boots main", func(t *testing.T) {
		line := bootLine(t, false)

		profiles, err := uki.TalosProfiles(release.MustParseVersion("v1.13.0"), line, uki.ResetToMaintenance)
		if err != nil {
			t.Fatal(err)
		}

		path := assembleBootable(t, stub, line, profiles)

		if got := bootOVMF(t, espImage(t, map[string]string{"EFI/BOOT/BOOTX64.EFI": path}, "")); got != line {
			t.Errorf("kernel saw cmdline\n%q\nwant the main profile's\n%q", got, line)
		}
	})
}

func tail(b []byte) string {
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}

	return string(b)
}
