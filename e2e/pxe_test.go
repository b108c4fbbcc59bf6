//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// pxeSchematic: the marker argument, one extension (so the initramfs the
// guest gets is kiln's, with the appended extension cpio), and panic=-1 so
// a kernel without its initramfs reboots at once (QEMU runs with
// -no-reboot and exits) instead of hanging until the timeout.
const pxeSchematic = `customization:
  extraKernelArgs: [console=ttyS0, kiln.e2e=pxe-proof, panic=-1]
  systemExtensions:
    officialExtensions: [siderolabs/gvisor]
`

// Debian 12's ipxe-qemu, iPXE 1.0.0+git-20190125: hands an initrd to an
// EFI-stub kernel only as a file the kernel line names (initrd=<name>).
const oldIPXE = "/usr/lib/ipxe/qemu"

// TestPXEBoot: diskless QEMU VMs whose only network service is QEMU's user
// network, its DHCP handing out kiln's /pxe/ URL as the boot file, run the
// script with two iPXE builds: Debian 12's 2019 ROMs under SeaBIOS and
// OVMF, and Debian 13's 1.21.1+git20250501 (make e2e-tools fetches it to
// _e2e/): its BIOS ROM under SeaBIOS and, under OVMF, its ipxe-amd64.efi,
// since Debian 13's EFI ROMs are only the NIC's driver for the firmware's
// own PXE and carry no iPXE (ipxe-qemu's NEWS.Debian: UEFI machines
// chain-load ipxe.efi). Each reaches the fixture's /init, which prints the
// kernel command line and the extensions it was given.
func TestPXEBoot(t *testing.T) {
	ctx := context.Background()
	in := bootInputsFromEnv(t)
	assets, _ := bootAssets(t, in)

	newIPXE := os.Getenv("KILN_E2E_IPXE")
	if newIPXE == "" {
		t.Fatal("KILN_E2E_IPXE is not set: run this suite through make e2e")
	}

	var (
		oldBIOS, oldEFI = filepath.Join(oldIPXE, "pxe-virtio.rom"), filepath.Join(oldIPXE, "efi-virtio.rom")
		newBIOS, newEFI = filepath.Join(newIPXE, "usr/share/qemu/pxe-virtio.rom"), filepath.Join(newIPXE, "usr/share/qemu/efi-virtio.rom")
		newEFIApp       = filepath.Join(newIPXE, "usr/lib/ipxe/ipxe-amd64.efi")
	)

	for _, f := range []string{oldBIOS, oldEFI, newBIOS, newEFI, newEFIApp} {
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("iPXE (make e2e-tools installs ipxe-qemu and fetches trixie's iPXE): %v", err)
		}
	}

	upstream := startRegistry(t)
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	reg, _ := name.NewRegistry(upstream, name.Insecure)

	if _, err := demo.Push(ctx, demo.Options{
		Version: "v1.13.0", Registry: reg, Assets: assets,
		Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
			return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key)
		},
	}); err != nil {
		t.Fatal(err)
	}

	// The guest reaches the host's loopback as 10.0.2.2 on the same port,
	// so kiln's script URLs must name a port known before kiln starts: a
	// free one, picked as testfixture.StartRegistry does.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	port := strconv.Itoa(l.Addr().(*net.TCPAddr).Port)
	l.Close()

	policy := trustEverythingSignedBy(t, key)
	k := startKiln(t, nil, "--listen", "127.0.0.1:"+port, "--external-url", "http://10.0.2.2:"+port,
		"--data-dir", t.TempDir(), "--trust-policy", policy)

	if out, err := kilnRun(t, "mirror", "--from", upstream, "--to", k.addr, "--to-password-file", k.passwordFile(), "--version", "v1.13.0", "--arch", "amd64",
		"--trust-policy", policy); err != nil {
		t.Fatalf("kiln mirror: %v\n%s", err, out)
	}

	client := &http.Client{Timeout: 5 * time.Minute}

	code, _, body := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", pxeSchematic)
	if code != 201 {
		t.Fatalf("create schematic = %d %s", code, body)
	}

	var created struct{ ID string }
	if err := json.Unmarshal([]byte(body), &created); err != nil {
		t.Fatal(err)
	}

	image := "http://" + k.addr + "/image/" + created.ID + "/v1.13.0/"

	code, _, cmdline := httpDo(t, client, "GET", image+"cmdline-metal-amd64", "")
	if code != 200 || !strings.Contains(cmdline, "kiln.e2e=pxe-proof") {
		t.Fatalf("cmdline = %d %q", code, cmdline)
	}

	// Build the kernel and initramfs now, so the boots below time iPXE
	// and the guest rather than the first build.
	dir := t.TempDir()
	download(t, client, image+"kernel-amd64", filepath.Join(dir, "kernel"))
	download(t, client, image+"initramfs-amd64.xz", filepath.Join(dir, "initramfs"))

	pxeURL := "http://10.0.2.2:" + port + "/pxe/" + created.ID + "/v1.13.0/metal-amd64"

	code, _, script := httpDo(t, client, "GET", "http://"+k.addr+"/pxe/"+created.ID+"/v1.13.0/metal-amd64", "")
	if code != 200 || !strings.Contains(script, "http://10.0.2.2:"+port+"/image/"+created.ID+"/v1.13.0/kernel-amd64 ") {
		t.Fatalf("/pxe/ = %d\n%s", code, script)
	}

	// pxeBoot boots QEMU with no disk, its NIC's option ROM replaced by
	// rom, its DHCP server naming the boot file as netdev says, and args.
	// The NIC is virtio 1.0 only: QEMU patches the PCI IDs of its default
	// ROM only, and Debian's ROMs name the modern device (1af4:1041), so a
	// transitional NIC (1af4:1000) would make SeaBIOS skip them.
	pxeBoot := func(t *testing.T, uefi bool, rom, netdev string, args ...string) string {
		t.Helper()

		args = append(args, "-netdev", "user,id=n0,"+netdev, "-device", "virtio-net-pci,netdev=n0,disable-legacy=on,romfile="+rom)
		if !uefi {
			args = append(args, "-boot", "n")
		}

		return qemu(t, 6*time.Minute, uefi, args...)
	}

	// check wants the fixture's report with the kernel command line
	// exactly as want, from kiln's initramfs (its appended extensions),
	// and the iPXE build and, on EFI, the stub's account of where its
	// initrd came from on the console.
	check := func(t *testing.T, console, wantCmdline, wantBanner, wantStub string) {
		t.Helper()

		if !strings.Contains(console, wantBanner) {
			t.Errorf("no %q on the console: the VM did not run the iPXE build the test meant", wantBanner)
		}

		if wantStub != "" && !strings.Contains(console, "EFI stub: "+wantStub) {
			t.Errorf("no %q from the EFI stub", wantStub)
		}

		if got := consoleLine(console, "CMDLINE"); got != wantCmdline {
			t.Errorf("kernel command line\n%q\nwant\n%q", got, wantCmdline)
		}

		ext := console[strings.Index(console, "KILN-EXTENSIONS-BEGIN")+1:]
		for _, want := range []string{"name: gvisor", "name: schematic"} {
			if !strings.Contains(ext, want) {
				t.Errorf("the guest's extensions.yaml lacks %q: not kiln's initramfs", want)
			}
		}

		if !strings.Contains(console, "KILN-BOOT-DONE") {
			t.Error("the fixture's /init did not finish")
		}

		if t.Failed() {
			t.Logf("console:\n%s", tail(console, 6000))
		}
	}

	const (
		oldBanner, newBanner = "iPXE 1.0.0+", "iPXE 1.21.1+"
		// How the kernel's EFI stub says it found its initrd: the 2019
		// build offers it only as the file initrd= names; the 2025 one
		// through the LoadFile2 protocol, and the stub then ignores initrd=.
		fromCmdline, fromLoadFile2 = "Loaded initrd from command line option", "Loaded initrd from LINUX_EFI_INITRD_MEDIA_GUID device path"
	)

	// On BIOS the kernel gets kiln's command line byte for byte. On EFI,
	// iPXE puts the image's name first, and the script adds initrd=<name>.
	efiCmdline := "kernel-amd64 " + cmdline + " initrd=initramfs-amd64.xz"

	t.Run("bios ipxe 2019", func(t *testing.T) {
		t.Parallel()
		check(t, pxeBoot(t, false, oldBIOS, "bootfile="+pxeURL), cmdline, oldBanner, "")
	})

	t.Run("uefi ipxe 2019", func(t *testing.T) {
		t.Parallel()
		check(t, pxeBoot(t, true, oldEFI, "bootfile="+pxeURL), efiCmdline, oldBanner, fromCmdline)
	})

	t.Run("bios ipxe 1.21.1", func(t *testing.T) {
		t.Parallel()
		check(t, pxeBoot(t, false, newBIOS, "bootfile="+pxeURL), cmdline, newBanner, "")
	})

	// OVMF starts ipxe-amd64.efi as the EFI application QEMU hands it,
	// which then does DHCP on the NIC like a chain-loaded iPXE.
	t.Run("uefi ipxe 1.21.1", func(t *testing.T) {
		t.Parallel()
		check(t, pxeBoot(t, true, newEFI, "bootfile="+pxeURL, "-kernel", newEFIApp), efiCmdline, newBanner, fromLoadFile2)
	})

	// The control: the public factory's script (kiln's before issue 19),
	// served by QEMU's own TFTP, leaves the 2019 build's EFI-stub kernel
	// without its initramfs, so the test above would catch a regression.
	t.Run("factory script on uefi ipxe 2019 panics", func(t *testing.T) {
		t.Parallel()

		tftp := t.TempDir()
		factory := "#!ipxe\n\nimgfree\nkernel http://10.0.2.2:" + port + "/image/" + created.ID + "/v1.13.0/kernel-amd64 " + cmdline +
			"\ninitrd http://10.0.2.2:" + port + "/image/" + created.ID + "/v1.13.0/initramfs-amd64.xz\nboot\n"

		if err := os.WriteFile(filepath.Join(tftp, "factory.ipxe"), []byte(factory), 0o644); err != nil {
			t.Fatal(err)
		}

		console := pxeBoot(t, true, oldEFI, "tftp="+tftp+",bootfile=factory.ipxe")
		if !strings.Contains(console, oldBanner) || !strings.Contains(console, "VFS: Unable to mount root fs") || strings.Contains(console, "KILN-CMDLINE") {
			t.Errorf("the factory's script booted with its initramfs on the 2019 iPXE under OVMF:\n%s", tail(console, 4000))
		}
	})
}
