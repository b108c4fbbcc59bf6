//go:build e2e

package e2e

import (
	"context"
	"encoding/base64"
	be "encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/signing/signingtest"
	"github.com/kiln-dev/kiln/testrelease"
)

// The schematic of the boot proof: serial console, a marker argument,
// two extensions (one carrying firmware) and a META value.
const bootSchematic = `customization:
  extraKernelArgs: [console=ttyS0, kiln.e2e=boot-proof]
  meta:
    - {key: 0xc, value: kiln-meta-proof}
  systemExtensions:
    officialExtensions: [siderolabs/gvisor, siderolabs/i915]
`

func download(t *testing.T, client *http.Client, url, dst string) {
	t.Helper()

	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	if resp.StatusCode != 200 {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("GET %s = %d %s", url, resp.StatusCode, body)
	}

	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := io.Copy(f, resp.Body); err != nil {
		t.Fatal(err)
	}

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestBootProof: a release of Debian's real parts is mirrored into kiln,
// kiln builds the ISO and the raw disk, and QEMU with OVMF boots each: the
// ISO as a CD-ROM and as a USB stick, the disk as a virtio disk.
func TestBootProof(t *testing.T) {
	ctx := context.Background()
	in := bootInputsFromEnv(t)
	assets, _ := bootAssets(t, in)

	upstream := startRegistry(t)
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	reg, _ := name.NewRegistry(upstream, name.Insecure)

	if _, err := testrelease.Push(ctx, testrelease.Options{
		Version: "v1.13.0", Registry: reg, Assets: assets,
		Sign: func(ctx context.Context, ref name.Digest) error { return signingtest.SignLegacy(ctx, ref, key) },
	}); err != nil {
		t.Fatal(err)
	}

	policy := trustEverythingSignedBy(t, key)
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy)

	if out, err := kilnRun(t, "mirror", "--from", upstream, "--to", k.addr, "--version", "v1.13.0", "--arch", "amd64",
		"--kubernetes=false", "--trust-policy", policy); err != nil {
		t.Fatalf("kiln mirror: %v\n%s", err, out)
	}

	client := &http.Client{Timeout: 10 * time.Minute}

	code, _, body := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", bootSchematic)
	if code != 201 {
		t.Fatalf("create schematic = %d %s", code, body)
	}

	var created struct{ ID string }
	if err := json.Unmarshal([]byte(body), &created); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	base := "http://" + k.addr + "/image/" + created.ID + "/v1.13.0/"
	iso, raw := filepath.Join(dir, "metal-amd64.iso"), filepath.Join(dir, "metal-amd64.raw")

	download(t, client, base+"metal-amd64.iso", iso)
	download(t, client, base+"metal-amd64.raw", raw)

	checkConsole := func(t *testing.T, console string, wantMETAPartition bool) {
		t.Helper()

		cmdline := consoleLine(console, "CMDLINE")
		for _, want := range []string{"kiln.e2e=boot-proof", "console=ttyS0", "talos.platform=metal"} {
			if !strings.Contains(cmdline, want) {
				t.Errorf("kernel command line %q lacks %q", cmdline, want)
			}
		}

		ext := console[strings.Index(console, "KILN-EXTENSIONS-BEGIN"):]
		for _, want := range []string{"name: gvisor", "name: i915", "name: schematic", "image: 0.sqsh"} {
			if !strings.Contains(ext, want) {
				t.Errorf("extensions.yaml lacks %q", want)
			}
		}

		if fw := consoleLine(console, "FIRMWARE"); !strings.Contains(fw, "/usr/lib/firmware/") {
			t.Errorf("no firmware in the initramfs: %q", fw)
		}

		if wantMETAPartition {
			values := parseADV(t, consoleLine(console, "META"))
			if values[0x0c] != "kiln-meta-proof" {
				t.Errorf("META partition holds %v, want 0xc=kiln-meta-proof", values)
			}
		} else if !strings.Contains(cmdline, "talos.environment=INSTALLER_META_BASE64=") {
			t.Errorf("no META on the command line of a medium without a META partition: %q", cmdline)
		}

		if t.Failed() {
			t.Logf("console:\n%s", tail(console, 6000))
		}
	}

	t.Run("iso as cd-rom", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, true, "-cdrom", iso)
		checkConsole(t, console, false)

		if disks := consoleLine(console, "DISKS"); !strings.Contains(disks, "sr0") {
			t.Errorf("the guest did not see its CD-ROM: %q", disks)
		}
	})

	t.Run("iso as usb stick", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, true,
			"-drive", "if=none,id=stick,format=raw,readonly=on,file="+iso, "-device", "qemu-xhci", "-device", "usb-storage,drive=stick")
		checkConsole(t, console, false)

		if disks := consoleLine(console, "DISKS"); !strings.Contains(disks, "sd") {
			t.Errorf("the guest did not see its USB stick: %q", disks)
		}
	})

	t.Run("raw disk", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, true, "-drive", "file="+raw+",format=raw,if=virtio")
		checkConsole(t, console, true)

		if disks := consoleLine(console, "DISKS"); !strings.Contains(disks, "vda") {
			t.Errorf("the guest did not see its disk: %q", disks)
		}
	})

	t.Run("readers that are not ours", func(t *testing.T) {
		run(t, "xorriso", "-indev", iso, "-toc")

		if out := run(t, "xorriso", "-indev", iso, "-find", "/", "-name", "*.efi"); !strings.Contains(out, "EFI/") {
			t.Errorf("xorriso -find lists no EFI binaries:\n%s", out)
		}

		if out := run(t, "isoinfo", "-d", "-i", iso); !strings.Contains(out, "TALOS_V1_13_0") {
			t.Errorf("isoinfo -d: no volume id TALOS_V1_13_0:\n%s", out)
		}

		if out := run(t, "sgdisk", "-v", raw); !strings.Contains(out, "No problems found") {
			t.Errorf("sgdisk -v:\n%s", out)
		}

		if out := run(t, "sgdisk", "-p", raw); !strings.Contains(out, "META") || !strings.Contains(out, "EFI") {
			t.Errorf("sgdisk -p: no EFI and META partitions:\n%s", out)
		}
	})
}

// parseADV reads the entries of a Talos ADV from the start of a META
// partition (base64 of its first 4 KiB): magic, then tag/size/value
// entries, big-endian, until a zero tag.
func parseADV(t *testing.T, b64 string) map[uint32]string {
	t.Helper()

	data, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(data) < 8 {
		t.Fatalf("META dump %q: %v", tail(b64, 80), err)
	}

	if be.BigEndian.Uint32(data) != 0x5a4b3c2d {
		t.Fatalf("META partition does not start with the Talos ADV magic: %x", data[:4])
	}

	values := map[uint32]string{}

	for off := 4; off+8 <= len(data); {
		tag, size := be.BigEndian.Uint32(data[off:]), int(be.BigEndian.Uint32(data[off+4:]))
		if tag == 0 || off+8+size > len(data) {
			break
		}

		values[tag] = string(data[off+8 : off+8+size])
		off += 8 + size
	}

	return values
}
