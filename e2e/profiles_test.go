//go:build e2e

package e2e

import (
	"context"
	"debug/pe"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"slices"
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

const profilesSchematic = `customization:
  extraKernelArgs: [console=ttyS0, kiln.e2e=profiles]
  meta:
    - {key: 0xc, value: kiln-meta-proof}
`

// ukiProfiles reads a UKI's .profile sections and its .cmdline sections,
// in file order.
func ukiProfiles(t *testing.T, path string) (profiles, cmdlines []string) {
	t.Helper()

	f, err := pe.Open(path)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	defer f.Close()

	for _, s := range f.Sections {
		if s.Name != ".profile" && s.Name != ".cmdline" {
			continue
		}

		b := make([]byte, s.VirtualSize)
		if _, err := s.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}

		if s.Name == ".profile" {
			profiles = append(profiles, string(b))
		} else {
			cmdlines = append(cmdlines, string(b))
		}
	}

	return profiles, cmdlines
}

// TestBootProfilesKiln: a release carrying Debian 13's systemd-boot and
// systemd-stub 257 (which honour UKI profiles) is mirrored into kiln; kiln's
// UKI download has the main profile only, its ISO's UKI the reset profile
// and its disk's UKI reset-maintenance, with Talos's IDs, titles and command
// lines. Under OVMF the ISO and the disk boot their main profile, and the
// disk boots its reset-maintenance profile once loader.conf on its EFI
// partition names that entry.
func TestBootProfilesKiln(t *testing.T) {
	ctx := context.Background()

	in := bootInputsFromEnv(t)
	in.sdboot = testfixture.SDBootTrixieDir()
	testfixture.Require(t, filepath.Join(in.sdboot, "systemd-bootx64.efi"), filepath.Join(in.sdboot, "linuxx64.efi.stub"))

	assets, _ := bootAssets(t, in)

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

	policy := trustEverythingSignedBy(t, key)
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy)

	if out, err := kilnRun(t, "mirror", "--from", upstream, "--to", k.addr, "--to-password-file", k.passwordFile(), "--version", "v1.13.0", "--arch", "amd64",
		"--trust-policy", policy); err != nil {
		t.Fatalf("kiln mirror: %v\n%s", err, out)
	}

	client := &http.Client{Timeout: 10 * time.Minute}

	code, _, resp := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", profilesSchematic)
	if code != 201 {
		t.Fatalf("create schematic = %d %s", code, resp)
	}

	var created struct{ ID string }
	if err := json.Unmarshal([]byte(resp), &created); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	iso, raw, ukiFile := filepath.Join(dir, "metal-amd64.iso"), filepath.Join(dir, "metal-amd64.raw"), filepath.Join(dir, "metal-amd64-uki.efi")
	base := "http://" + k.addr + "/image/" + created.ID + "/v1.13.0/"

	download(t, client, base+"metal-amd64.iso", iso)
	download(t, client, base+"metal-amd64.raw", raw)
	download(t, client, base+"metal-amd64-uki.efi", ukiFile)

	// The lines kiln's builder/cmdline gives each output (checked against
	// Talos's and the factory's vectors in its own tests).
	opts := cmdline.Options{
		Platform: "metal", Arch: "amd64", TalosVersion: release.MustParseVersion("v1.13.0"),
		ExtraArgs: []string{"console=ttyS0", "kiln.e2e=profiles"},
		Meta:      []cmdline.MetaValue{{Key: 0xc, Value: "kiln-meta-proof"}},
	}

	must := func(s string, err error) string {
		t.Helper()

		if err != nil {
			t.Fatal(err)
		}

		return s
	}

	isoOpts := opts
	isoOpts.ISO, isoOpts.IncludeMeta = true, true

	isoLine, diskLine, ukiLine := must(cmdline.Build(isoOpts)), must(cmdline.Build(opts)), must(cmdline.ForInstaller(opts))

	t.Run("uki download: main profile only", func(t *testing.T) {
		profiles, cmdlines := ukiProfiles(t, ukiFile)
		if !slices.Equal(profiles, []string{"ID=main"}) || !slices.Equal(cmdlines, []string{ukiLine}) {
			t.Errorf("profiles %q, cmdlines %q; want [ID=main], [%q]", profiles, cmdlines, ukiLine)
		}
	})

	t.Run("iso: reset profile", func(t *testing.T) {
		efi := filepath.Join(dir, "iso-uki.efi")
		run(t, "xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/EFI/Linux/Talos-v1.13.0.efi", efi)

		profiles, cmdlines := ukiProfiles(t, efi)
		if want := []string{"ID=main", "ID=reset\nTITLE=Reset system disk"}; !slices.Equal(profiles, want) {
			t.Errorf("profiles %q, want %q", profiles, want)
		}

		if want := []string{isoLine, isoLine + " talos.experimental.wipe=system"}; !slices.Equal(cmdlines, want) {
			t.Errorf("cmdlines %q, want %q", cmdlines, want)
		}

		console := qemu(t, 4*time.Minute, true, "-cdrom", iso)
		if got := consoleLine(console, "CMDLINE"); got != isoLine {
			t.Errorf("ISO booted\n%q\nwant the main profile's\n%q\nconsole:\n%s", got, isoLine, tail(console, 3000))
		}
	})

	t.Run("disk: main then reset-maintenance", func(t *testing.T) {
		start, _ := partitionExtent(t, raw, "EFI")
		esp := raw + "@@" + start

		efi := filepath.Join(dir, "disk-uki.efi")
		run(t, "mcopy", "-i", esp, "::/EFI/Linux/Talos-v1.13.0.efi", efi)

		profiles, cmdlines := ukiProfiles(t, efi)
		if want := []string{"ID=main", "ID=reset-maintenance\nTITLE=Reset to maintenance mode"}; !slices.Equal(profiles, want) {
			t.Errorf("profiles %q, want %q", profiles, want)
		}

		reset := diskLine + " talos.experimental.wipe=system:EPHEMERAL,STATE"
		if want := []string{diskLine, reset}; !slices.Equal(cmdlines, want) {
			t.Errorf("cmdlines %q, want %q", cmdlines, want)
		}

		// kiln's loader.conf as built: the default entry after the menu's
		// timeout.
		console := qemu(t, 4*time.Minute, true, "-drive", "file="+raw+",format=raw,if=virtio")
		if got := consoleLine(console, "CMDLINE"); got != diskLine {
			t.Errorf("disk booted\n%q\nwant the main profile's\n%q\nconsole:\n%s", got, diskLine, tail(console, 3000))
		}

		// The reset entry chosen for the next boot, as a user would from
		// the menu: systemd-boot names profile N > 0 "<file>@<ID>".
		conf := filepath.Join(dir, "loader.conf")
		if err := os.WriteFile(conf, []byte("timeout 0\ndefault talos-v1.13.0.efi@reset-maintenance\n"), 0o644); err != nil {
			t.Fatal(err)
		}

		run(t, "mcopy", "-o", "-i", esp, conf, "::/loader/loader.conf")

		console = qemu(t, 4*time.Minute, true, "-drive", "file="+raw+",format=raw,if=virtio")
		if got := consoleLine(console, "CMDLINE"); got != reset {
			t.Errorf("disk with the reset entry chosen booted\n%q\nwant\n%q\nconsole:\n%s", got, reset, tail(console, 3000))
		}

		if !strings.Contains(consoleLine(console, "DISKS"), "vda") {
			t.Errorf("the guest did not see its disk")
		}
	})
}
