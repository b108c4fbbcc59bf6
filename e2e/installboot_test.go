//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/builder/cmdline"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// TestInstallFromKiln is a node's install through kiln: a release whose
// installer-base carries the fixture /bin/installer and whose boot assets
// are the Debian boot fixture (Debian 13's systemd-boot and stub, which
// honour UKI profiles) is mirrored into the real kiln; the real crane pulls
// metal-installer/<schematic>:v1.13.0 from kiln (built on that pull) and
// exports its linux/amd64 file system; that file system runs its
// entrypoint under QEMU onto a blank virtio disk; the disk then boots under
// OVMF through systemd-boot into kiln's installer UKI, whose fixture
// initramfs prints the schematic's marker argument, and once more with
// loader.conf choosing the reset-maintenance profile.
//
// The release comes through `kiln mirror`, not --demo: --demo's boot assets
// and installer are placeholders that do not boot.
func TestInstallFromKiln(t *testing.T) {
	crane := binary(t, "CRANE")
	ctx := context.Background()

	in := bootInputsFromEnv(t)
	in.sdboot = testfixture.SDBootTrixieDir()
	testfixture.Require(t, filepath.Join(in.sdboot, "systemd-bootx64.efi"), filepath.Join(in.sdboot, "linuxx64.efi.stub"))
	testfixture.RequireTool(t, "qemu-system-x86_64", "sgdisk", "mcopy", "tar")

	assets, _ := bootAssets(t, in)
	bin := testfixture.BuildInstaller(t, "amd64")

	upstream := startRegistry(t)
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	reg, _ := name.NewRegistry(upstream, name.Insecure)

	const version = "v1.13.0"

	if _, err := demo.Push(ctx, demo.Options{
		Version: version, Registry: reg, Assets: assets,
		Installer: func(arch string) ([]byte, error) {
			if arch == "amd64" {
				return bin, nil
			}

			return nil, os.ErrNotExist
		},
		Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
			return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key)
		},
	}); err != nil {
		t.Fatal(err)
	}

	policy := trustEverythingSignedBy(t, key)
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy)

	// Every architecture, so that the installer is an index over both (an
	// amd64-only mirror gives an index over linux/amd64 alone:
	// builder.TestInstallerOverMirroredArches).
	if out, err := kilnRun(t, "mirror", "--from", upstream, "--to", k.addr, "--to-password-file", k.passwordFile(),
		"--version", version, "--trust-policy", policy); err != nil {
		t.Fatalf("kiln mirror: %v\n%s", err, out)
	}

	mark := make([]byte, 6)
	rand.Read(mark) //nolint:errcheck // never fails

	marker := "kiln.marker=install-" + hex.EncodeToString(mark)
	client := &http.Client{Timeout: 10 * time.Minute}

	code, _, resp := httpDo(t, client, "POST", "http://"+k.addr+"/schematics",
		"customization:\n  extraKernelArgs: [console=ttyS0, "+marker+"]\n")
	if code != 201 {
		t.Fatalf("create schematic = %d %s", code, resp)
	}

	var created struct{ ID string }
	if err := json.Unmarshal([]byte(resp), &created); err != nil {
		t.Fatal(err)
	}

	// The pull, as a node's: by tag, its platform's file system.
	ref := k.addr + "/metal-installer/" + created.ID + ":" + version
	start := time.Now()
	digest := strings.TrimSpace(runLong(t, crane, "digest", ref))
	t.Logf("crane digest %s = %s (first pull, built: %v)", ref, digest, time.Since(start).Round(time.Millisecond))

	amd64 := strings.TrimSpace(run(t, crane, "digest", "--platform", "linux/amd64", ref))
	t.Logf("linux/amd64 image %s", amd64)

	var cfg struct {
		Config struct{ Entrypoint, Env []string }
	}

	if err := json.Unmarshal([]byte(run(t, crane, "config", "--platform", "linux/amd64", ref)), &cfg); err != nil {
		t.Fatal(err)
	}

	if len(cfg.Config.Entrypoint) == 0 {
		t.Fatalf("%s (linux/amd64) has no entrypoint", ref)
	}

	dir := t.TempDir()
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		t.Fatal(err)
	}

	export := exec.Command("sh", "-c", `"$0" export --platform linux/amd64 "$1" - | tar -x -C "$2"`, crane, ref, root)
	if out, err := export.CombinedOutput(); err != nil {
		t.Fatalf("crane export %s | tar -x: %v\n%s", ref, err, out)
	}

	// The artifacts layer carries the release's systemd-boot as is.
	want, err := os.ReadFile(filepath.Join(in.sdboot, "systemd-bootx64.efi"))
	if err != nil {
		t.Fatal(err)
	}

	if got, err := os.ReadFile(filepath.Join(root, "usr", "install", "amd64", "systemd-boot.efi")); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("usr/install/amd64/systemd-boot.efi of the pulled image (%d bytes, %v) is not the release's (%d bytes)", len(got), err, len(want))
	}

	// The install: the image's entrypoint onto a blank disk.
	initrd := filepath.Join(dir, "installer.cpio")
	testfixture.InstallerInitramfs(t, root, cfg.Config.Entrypoint, cfg.Config.Env, initrd)

	disk := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(disk, nil, 0o644); err != nil {
		t.Fatal(err)
	}

	if err := os.Truncate(disk, 128<<20); err != nil {
		t.Fatal(err)
	}

	start = time.Now()
	console := qemu(t, 4*time.Minute, false, "-kernel", testfixture.Kernel(), "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1 quiet", "-drive", "file="+disk+",format=raw,if=virtio")
	t.Logf("install: %v", time.Since(start).Round(time.Millisecond))

	if !strings.Contains(console, "KILN-INSTALL-OK") || !strings.Contains(console, "installer: Talos "+version+" (amd64) installed onto /dev/vda") {
		t.Fatalf("the installer did not install:\n%s", tail(console, 4000))
	}

	for _, l := range strings.Split(console, "\n") {
		if _, after, ok := strings.Cut(l, "installer: "); ok {
			t.Log("installer: " + strings.TrimSpace(after))
		}
	}

	// The command lines kiln's installer UKI carries (builder/cmdline,
	// checked against Talos's and the factory's vectors in its own tests).
	main, err := cmdline.ForInstaller(cmdline.Options{
		Platform: "metal", Arch: "amd64", TalosVersion: release.MustParseVersion(version),
		ExtraArgs: []string{"console=ttyS0", marker},
	})
	if err != nil {
		t.Fatal(err)
	}

	reset := main + " talos.experimental.wipe=system:EPHEMERAL,STATE"

	start = time.Now()
	console = qemu(t, 4*time.Minute, true, "-drive", "file="+disk+",format=raw,if=virtio")
	t.Logf("boot: %v", time.Since(start).Round(time.Millisecond))

	got := consoleLine(console, "CMDLINE")
	if got != main || !strings.Contains(got, marker) {
		t.Fatalf("the installed disk booted\n%q\nwant the main profile's\n%q\nconsole:\n%s", got, main, tail(console, 4000))
	}

	t.Logf("KILN-CMDLINE: %s", got)

	// The reset entry chosen for the next boot, as from the menu:
	// systemd-boot names profile N > 0 "<file>@<ID>".
	espStart, _ := partitionExtent(t, disk, "EFI")
	conf := filepath.Join(dir, "loader.conf")

	if err := os.WriteFile(conf, []byte("timeout 0\ndefault talos-"+version+".efi@reset-maintenance\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	run(t, "mcopy", "-o", "-i", disk+"@@"+espStart, conf, "::/loader/loader.conf")

	start = time.Now()
	console = qemu(t, 4*time.Minute, true, "-drive", "file="+disk+",format=raw,if=virtio")
	t.Logf("boot (reset-maintenance): %v", time.Since(start).Round(time.Millisecond))

	if got := consoleLine(console, "CMDLINE"); got != reset {
		t.Fatalf("with the reset entry chosen the disk booted\n%q\nwant\n%q\nconsole:\n%s", got, reset, tail(console, 4000))
	}

	t.Logf("KILN-CMDLINE (reset-maintenance): %s", reset)
}
