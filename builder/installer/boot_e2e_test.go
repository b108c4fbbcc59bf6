//go:build e2e

package installer_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/builder/installer"
	"github.com/kiln-dev/kiln/builder/uki"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// TestInstallAndBoot is a node's install, with the fixture installer in
// place of Talos's: the synthetic release's installer-base carries the
// fixture /bin/installer; kiln assembles the installer image around a UKI
// of Debian's kernel and stub with a marker argument, pushes it and pulls
// it back; the image's file system (plus busybox) boots as an initramfs and
// runs its entrypoint, which installs onto a blank virtio disk; that disk
// then boots under OVMF through systemd-boot into the UKI, and the console
// shows the marker.
func TestInstallAndBoot(t *testing.T) {
	kernel := testfixture.Kernel()
	modules := testfixture.ModulesDir()
	testfixture.Require(t, kernel, modules, busyboxStatic, debianSDBoot, debianStub, ovmfCode, ovmfVars)
	testfixture.RequireTool(t, "qemu-system-x86_64", "cpio", "sgdisk")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()

	dir := t.TempDir()
	const version = "v1.13.0"

	// The release, with the fixture installer in installer-base.
	bin := testfixture.BuildInstaller(t, "amd64")
	host := signingtest.NewRegistry(t)

	reg, err := name.NewRegistry(host)
	if err != nil {
		t.Fatal(err)
	}

	rel, err := demo.Push(ctx, demo.Options{
		Version: version, Registry: reg,
		Installer: func(arch string) ([]byte, error) {
			if arch == "amd64" {
				return bin, nil
			}

			return nil, os.ErrNotExist
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	// The installed system: a UKI whose initramfs prints its command line.
	marker := make([]byte, 8)
	rand.Read(marker) //nolint:errcheck // never fails

	cmdline := "console=ttyS0 panic=-1 kiln.installer.marker=" + hex.EncodeToString(marker)
	ukiPath := filepath.Join(dir, "vmlinuz.efi")
	buildUKI(t, kernel, cmdline, ukiPath)

	base, err := remote.Image(rel.InstallerBase, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}))
	if err != nil {
		t.Fatal(err)
	}

	sdboot, err := installer.FileBlob(debianSDBoot)
	if err != nil {
		t.Fatal(err)
	}

	ukiBlob, err := installer.FileBlob(ukiPath)
	if err != nil {
		t.Fatal(err)
	}

	store := filepath.Join(dir, "store")
	os.Mkdir(store, 0o755) //nolint:errcheck

	idx, err := installer.Build(ctx, installer.Options{Version: release.MustParseVersion(version), Created: epoch, Dir: store},
		installer.Platform{Arch: "amd64", Base: base, Assets: installer.Assets{SDBoot: sdboot, UKI: ukiBlob}})
	if err != nil {
		t.Fatal(err)
	}

	ref, err := name.NewTag(host + "/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba:" + version)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.WriteIndex(ref, idx, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}

	// As a node pulls it: by tag, for its platform.
	img, err := remote.Image(ref, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "amd64"}), remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	// The installer's root: the image, and what the shared fixture adds
	// to run its entrypoint onto /dev/vda.
	root := filepath.Join(dir, "root")
	unpack(t, img, root)

	initrd := filepath.Join(dir, "installer.cpio")
	testfixture.InstallerInitramfs(t, root, cf.Config.Entrypoint, cf.Config.Env, initrd)

	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	if err := os.Truncate(disk, 128<<20); err != nil {
		t.Fatal(err)
	}

	start := time.Now()
	console := qemu(ctx, t, "-kernel", kernel, "-initrd", initrd, "-append", "console=ttyS0 panic=-1 quiet",
		"-drive", "file="+disk+",format=raw,if=virtio")
	t.Logf("install: %v", time.Since(start).Round(time.Millisecond))

	if !strings.Contains(console, "KILN-INSTALL-OK") ||
		!strings.Contains(console, "installer: Talos "+version+" (amd64) installed onto /dev/vda") {
		t.Fatalf("the installer did not install:\n%s", tail(console, 4000))
	}

	for _, l := range strings.Split(console, "\n") {
		if strings.HasPrefix(l, "installer: ") {
			t.Log(strings.TrimSpace(l))
		}
	}

	if out, err := exec.Command("sgdisk", "-p", disk).CombinedOutput(); err != nil || !strings.Contains(string(out), " EFI\n") {
		t.Fatalf("sgdisk -p: %v\n%s", err, out)
	}

	// The installed disk on its own, under UEFI.
	vars := filepath.Join(dir, "vars.fd")
	copyFile(t, ovmfVars, vars, 0o644)

	start = time.Now()
	console = qemu(ctx, t,
		"-drive", "if=pflash,format=raw,readonly=on,file="+ovmfCode,
		"-drive", "if=pflash,format=raw,file="+vars,
		"-drive", "file="+disk+",format=raw,if=virtio")
	t.Logf("boot: %v", time.Since(start).Round(time.Millisecond))

	if !strings.Contains(console, "KILN-BOOTED: "+cmdline) {
		t.Fatalf("the installed disk did not boot the UKI with %q:\n%s", cmdline, tail(console, 4000))
	}

	for _, l := range strings.Split(console, "\n") {
		if strings.HasPrefix(l, "KILN-") {
			t.Log(strings.TrimSpace(l))
		}
	}
}

// buildUKI assembles a single-profile UKI with kiln's builder/uki from
// Debian's stub and the fixture kernel, whose initramfs prints its command
// line and powers off.
func buildUKI(t testing.TB, kernel, cmdline, out string) {
	t.Helper()

	root := filepath.Join(filepath.Dir(out), "uki-root")
	copyFile(t, busyboxStatic, filepath.Join(root, "bin", "busybox"), 0o755)

	init := "#!/bin/busybox sh\n/bin/busybox mkdir -p /proc\n/bin/busybox mount -t proc proc /proc\n" +
		"echo \"KILN-BOOTED: $(/bin/busybox cat /proc/cmdline)\"\n/bin/busybox poweroff -f\n"
	if err := os.WriteFile(filepath.Join(root, "init"), []byte(init), 0o755); err != nil {
		t.Fatal(err)
	}

	initrd := filepath.Join(filepath.Dir(out), "uki-initrd.cpio")
	testfixture.Newc(t, root, initrd)

	initrdBytes, err := os.ReadFile(initrd)
	if err != nil {
		t.Fatal(err)
	}

	k, err := os.ReadFile(kernel)
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

	var buf bytes.Buffer
	if _, err := uki.Assemble(context.Background(), stub, uki.Sections{
		OSRel:   osrel,
		Cmdline: cmdline,
		Linux:   uki.Blob{R: bytes.NewReader(k), Size: int64(len(k))},
		Initrd:  uki.Blob{R: bytes.NewReader(initrdBytes), Size: int64(len(initrdBytes))},
	}, &buf, uki.Options{StripSymbols: true}); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
}
