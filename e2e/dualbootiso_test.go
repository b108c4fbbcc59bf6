//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// TestDualBootISO (issue 16): the default amd64 ISO kiln serves for Talos
// 1.13 is Talos's dual-boot ISO. With the release's GRUB (Debian's, as the
// demo release carries it: bookworm 2.06 from the host, trixie 2.12 and
// sid from _e2e/grub), QEMU with SeaBIOS (no OVMF) boots the served ISO
// as a CD-ROM and as a USB stick through GRUB's "Talos ISO" entry into the
// fixture initramfs with the schematic's kernel arguments; OVMF boots the
// same file through systemd-boot. The readers see both El Torito entries,
// Talos's grub.cfg with its reset entry, and an iso9660 TALOS_V1_13_0 on
// partition 1.
func TestDualBootISO(t *testing.T) {
	in := bootInputsFromEnv(t)
	assets, kver := bootAssets(t, in)
	modules := extensionModules(t, in, kver)

	suites := []struct{ name, dir string }{
		{"bookworm-2.06", demo.HostGrubDir},
		{"trixie-2.12", filepath.Join(testfixture.GrubVersions(), "trixie", "root/usr/lib/grub")},
		{"sid-2.14", filepath.Join(testfixture.GrubVersions(), "sid", "root/usr/lib/grub")},
	}

	for i, s := range suites {
		t.Run(s.name, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join(s.dir, "i386-pc", "boot_hybrid.img")); err != nil {
				t.Fatalf("GRUB %s: %v (make deps / make e2e-tools installs it)", s.name, err)
			}

			iso := servedDualBootISO(t, assets, kver, modules, s.dir)
			// Every suite boots under SeaBIOS as a CD; the rest once.
			dualBootISOProof(t, iso, i == 0)
		})
	}
}

// servedDualBootISO pushes the demo release with the GRUB tree of
// grubDir, mirrors it into a kiln serve, and downloads the bootSchematic's
// metal-amd64.iso.
func servedDualBootISO(t *testing.T, assets func(arch, file string) ([]byte, error), kver string, modules map[string][]byte, grubDir string) string {
	t.Helper()

	return servedISO(t, assets, kver, modules, grubDir, bootSchematic, "v1.13.0")
}

// servedISO pushes the demo release of version with the GRUB tree of
// grubDir, mirrors it into a kiln serve, and downloads schem's
// metal-amd64.iso.
func servedISO(t *testing.T, assets func(arch, file string) ([]byte, error), kver string, modules map[string][]byte, grubDir, schem, version string) string {
	t.Helper()

	// kiln knows Kubernetes image lists from Talos 1.10; an ISO without an
	// image cache needs none.
	v, err := release.ParseVersion(version)
	if err != nil {
		t.Fatal(err)
	}

	var (
		k8s         []string
		mirrorExtra []string
	)

	if v.Before(1, 10) {
		k8s, mirrorExtra = []string{}, []string{"--kubernetes=false"}
	}

	ctx := context.Background()
	upstream := startRegistry(t)
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	reg, _ := name.NewRegistry(upstream, name.Insecure)

	if _, err := demo.Push(ctx, demo.Options{
		Version: version, Registry: reg, Assets: assets, KernelVersion: kver, Modules: modules,
		Grub: demo.GrubFrom(grubDir), KubernetesImages: k8s,
		Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
			return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key)
		},
	}); err != nil {
		t.Fatal(err)
	}

	policy := trustEverythingSignedBy(t, key)
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy)

	if out, err := kilnRun(t, append([]string{"mirror", "--from", upstream, "--to", k.addr, "--to-password-file", k.passwordFile(), "--version", version, "--arch", "amd64",
		"--trust-policy", policy}, mirrorExtra...)...); err != nil {
		t.Fatalf("kiln mirror: %v\n%s", err, out)
	}

	client := &http.Client{Timeout: 10 * time.Minute}

	code, _, resp := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", schem)
	if code != 201 {
		t.Fatalf("create schematic = %d %s", code, resp)
	}

	var created struct{ ID string }
	if err := json.Unmarshal([]byte(resp), &created); err != nil {
		t.Fatal(err)
	}

	iso := filepath.Join(t.TempDir(), "metal-amd64.iso")
	download(t, client, "http://"+k.addr+"/image/"+created.ID+"/"+version+"/metal-amd64.iso", iso)

	return iso
}

func dualBootISOProof(t *testing.T, iso string, all bool) {
	// GRUB's "Talos ISO" entry: the ISO command line, no wipe.
	checkGRUBBoot := func(t *testing.T, console string) {
		t.Helper()

		cmdline := consoleLine(console, "CMDLINE")
		for _, want := range []string{"BOOT_IMAGE=/boot/vmlinuz", "talos.platform=metal", "talos.halt_if_installed=1",
			"console=ttyS0", "kiln.e2e=boot-proof", "talos.environment=INSTALLER_META_BASE64="} {
			if !strings.Contains(cmdline, want) {
				t.Errorf("kernel command line %q lacks %q", cmdline, want)
			}
		}

		if strings.Contains(cmdline, "talos.experimental.wipe") {
			t.Errorf("GRUB booted the reset entry: %q", cmdline)
		}

		checkTalosInit(t, console)

		if t.Failed() {
			t.Logf("console:\n%s", tail(console, 6000))
		}
	}

	t.Run("seabios cd-rom", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, false, "-cdrom", iso)
		checkGRUBBoot(t, console)

		if disks := consoleLine(console, "DISKS"); !strings.Contains(disks, "sr0") {
			t.Errorf("the guest did not see its CD-ROM: %q", disks)
		}
	})

	if !all {
		return
	}

	t.Run("seabios usb stick", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, false, "-usb",
			"-drive", "if=none,id=u,format=raw,readonly=on,file="+iso, "-device", "qemu-xhci", "-device", "usb-storage,drive=u,bootindex=0")
		checkGRUBBoot(t, console)

		if disks := consoleLine(console, "DISKS"); !strings.Contains(disks, "sd") {
			t.Errorf("the guest did not see its USB stick: %q", disks)
		}
	})

	// systemd-boot from the appended ESP; Debian's stub 252 boots the UKI's
	// last .cmdline, the reset profile's (see TestBootProof).
	t.Run("ovmf cd-rom", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, true, "-cdrom", iso)
		cmdline := consoleLine(console, "CMDLINE")

		for _, want := range []string{"kiln.e2e=boot-proof", "talos.halt_if_installed=1", "talos.experimental.wipe=system"} {
			if !strings.Contains(cmdline, want) {
				t.Errorf("kernel command line %q lacks %q", cmdline, want)
			}
		}

		if strings.Contains(cmdline, "BOOT_IMAGE=") {
			t.Errorf("OVMF booted GRUB, not systemd-boot: %q", cmdline)
		}

		checkTalosInit(t, console)
	})

	t.Run("readers", func(t *testing.T) {
		et := run(t, "xorriso", "-indev", iso, "-report_el_torito", "plain")
		for _, re := range []string{
			`El Torito boot img :\s+1\s+BIOS\s+y\s+none\s+0x0000\s+0x00\s+4\s+\d+`,
			`El Torito boot img :\s+2\s+UEFI\s+y\s+none`,
			`El Torito img path :\s+1\s+/boot/grub/i386-pc/eltorito.img`,
			`El Torito img opts :\s+1\s+boot-info-table grub2-boot-info`,
		} {
			if !regexp.MustCompile(re).MatchString(et) {
				t.Errorf("xorriso -report_el_torito lacks %s:\n%s", re, et)
			}
		}

		cfgDir := t.TempDir()
		run(t, "xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/boot/grub/grub.cfg", filepath.Join(cfgDir, "grub.cfg"))

		cfg, err := os.ReadFile(filepath.Join(cfgDir, "grub.cfg"))
		if err != nil {
			t.Fatal(err)
		}

		for _, want := range []string{
			`menuentry "Talos ISO" {`, `menuentry "Reset Talos installation" {`,
			"\tlinux /boot/vmlinuz talos.platform=metal console=ttyS0 talos.halt_if_installed=1 ",
			" kiln.e2e=boot-proof\n\tinitrd /boot/initramfs.xz\n",
			" kiln.e2e=boot-proof talos.experimental.wipe=system\n\tinitrd /boot/initramfs.xz\n",
		} {
			if !strings.Contains(string(cfg), want) {
				t.Errorf("grub.cfg lacks %q:\n%s", want, cfg)
			}
		}

		// Partition 1 of the ISO as a disk: GPT, then its own volume.
		sf := run(t, "sfdisk", "-d", iso)

		m := regexp.MustCompile(`(?m)1 : start=\s*(\d+), size=\s*(\d+), type=EBD0A0A2-B9E5-4433-87C0-68B6B72699C7,.*name="ISO9660"`).FindStringSubmatch(sf)
		if m == nil || m[1] != "64" {
			t.Fatalf("sfdisk -d: no partition 1 ISO9660 at LBA 64:\n%s", sf)
		}

		size, _ := strconv.ParseInt(m[2], 10, 64)
		p1 := run(t, "blkid", "-p", "-o", "export", "-O", "32768", "-S", fmt.Sprint(size*512), iso)

		for _, want := range []string{"TYPE=iso9660", "LABEL=TALOS_V1_13_0", "VOLUME_SET_ID=Talos-v1.13.0"} {
			if !strings.Contains(p1, want) {
				t.Errorf("blkid on partition 1 lacks %s:\n%s", want, p1)
			}
		}

		if out := run(t, "sgdisk", "-v", iso); !strings.Contains(out, "No problems found") {
			t.Errorf("sgdisk -v:\n%s", out)
		}
	})
}
