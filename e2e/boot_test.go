//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"encoding/base64"
	be "encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/taloskernel"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// The schematic of the boot proof: serial console, a marker argument,
// three extensions (one with SELinux labels, one carrying firmware, one
// carrying kernel modules of the fixture kernel) and a META value.
const bootSchematic = `customization:
  extraKernelArgs: [console=ttyS0, kiln.e2e=boot-proof]
  meta:
    - {key: 0xc, value: kiln-meta-proof}
  systemExtensions:
    officialExtensions: [siderolabs/gvisor, siderolabs/i915, siderolabs/drbd]
`

// cacheSchematic is bootSchematic with an image cache of the version's
// Kubernetes images embedded (issue 5).
const cacheSchematic = bootSchematic + `  imageCache:
    kubernetes: true
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

// grubSchematic is bootSchematic asking for GRUB only: Talos's grub disk
// layout and its GRUB-only ISO.
const grubSchematic = bootSchematic + `  bootloader: grub
`

// TestBootProof: a release of Debian's real parts is mirrored into kiln,
// kiln builds the ISO and the raw disk, and QEMU with OVMF boots each: the
// ISO as a CD-ROM and as a USB stick, the disk as a virtio disk. The disk
// is dual-boot (Talos ≥ 1.10's default): SeaBIOS boots it through GRUB,
// and a bootloader: grub disk, from the release's GRUB (Debian unstable's
// 2.14: 2.06 and 2.12 refuse the XFS BOOT of Talos 1.13, whose lts_6.18
// profile sets the exchange bit).
func TestBootProof(t *testing.T) {
	ctx := context.Background()
	in := bootInputsFromEnv(t)
	assets, kver := bootAssets(t, in)
	grubDir := releaseGrub(t)

	upstream := startRegistry(t)
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	reg, _ := name.NewRegistry(upstream, name.Insecure)

	if _, err := demo.Push(ctx, demo.Options{
		Version: "v1.13.0", Registry: reg, Assets: assets, KernelVersion: kver, Modules: extensionModules(t, in, kver),
		Grub: demo.GrubFrom(grubDir),
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

	create := func(body string) string {
		code, _, resp := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", body)
		if code != 201 {
			t.Fatalf("create schematic = %d %s", code, resp)
		}

		var created struct{ ID string }
		if err := json.Unmarshal([]byte(resp), &created); err != nil {
			t.Fatal(err)
		}

		return created.ID
	}

	plain, cached, grubOnly := create(bootSchematic), create(cacheSchematic), create(grubSchematic)

	// What kiln builds must be what the Talos kernel reads, not only what
	// Debian's reads: every segment and layer of the initramfs.
	initramfs := filepath.Join(t.TempDir(), "initramfs-amd64.xz")
	download(t, client, "http://"+k.addr+"/image/"+plain+"/v1.13.0/initramfs-amd64.xz", initramfs)

	data, err := os.ReadFile(initramfs)
	if err != nil {
		t.Fatal(err)
	}

	rep, err := taloskernel.CheckInitramfs(bytes.NewReader(data), int64(len(data)))
	if err != nil {
		t.Fatalf("the Talos kernel could not read kiln's initramfs: %v", err)
	}

	if len(rep.Layers) != 6 { // rootfs.sqsh, 4 layers, modules.dep.sqsh
		t.Errorf("initramfs holds squashfs images %+v, want rootfs.sqsh and 5 layers", rep.Layers)
	}

	dir := t.TempDir()
	iso := filepath.Join(dir, "metal-amd64.iso")
	cacheISO, raw := filepath.Join(dir, "metal-amd64-cache.iso"), filepath.Join(dir, "metal-amd64-cache.raw")

	download(t, client, "http://"+k.addr+"/image/"+plain+"/v1.13.0/metal-amd64.iso", iso)
	download(t, client, "http://"+k.addr+"/image/"+cached+"/v1.13.0/metal-amd64.iso", cacheISO)
	download(t, client, "http://"+k.addr+"/image/"+cached+"/v1.13.0/metal-amd64.raw.zst", raw+".zst")
	run(t, "zstd", "-d", "-q", raw+".zst", "-o", raw)

	grubRaw := filepath.Join(dir, "metal-amd64-grub.raw")
	download(t, client, "http://"+k.addr+"/image/"+grubOnly+"/v1.13.0/metal-amd64.raw", grubRaw)

	// What a node's registryd would serve: the manifests of the
	// Kubernetes images, under their upstream names.
	wantCached := []string{"manifests/registry.k8s.io/kube-apiserver/reference/v1.36.0", "manifests/ghcr.io/siderolabs/kubelet/reference/v1.36.0"}

	checkCache := func(t *testing.T, console, key string) {
		t.Helper()

		listing := consoleLine(console, key)
		for _, want := range wantCached {
			if !strings.Contains(listing, want) {
				t.Errorf("the guest's image cache lacks %s: %q", want, tail(listing, 400))
			}
		}

		if t.Failed() {
			t.Logf("console:\n%s", tail(console, 3000))
		}
	}

	// Debian 12's systemd-stub 252 knows no UKI profiles and boots the
	// last .cmdline, the reset profile's (the ISO's "reset", the disk's
	// "reset-maintenance"); TestBootProfilesKiln boots the main profiles
	// with systemd 257.
	checkConsole := func(t *testing.T, console string, wantMETAPartition bool) {
		t.Helper()

		cmdline := consoleLine(console, "CMDLINE")
		for _, want := range []string{"kiln.e2e=boot-proof", "console=ttyS0", "talos.platform=metal"} {
			if !strings.Contains(cmdline, want) {
				t.Errorf("kernel command line %q lacks %q", cmdline, want)
			}
		}

		wipe := " talos.experimental.wipe=system"
		if wantMETAPartition {
			wipe += ":EPHEMERAL,STATE"
		}

		if !strings.HasSuffix(cmdline, wipe) {
			t.Errorf("systemd-stub 252 booted %q, want the reset profile's line (ending %q)", cmdline, wipe)
		}

		ext := console[strings.Index(console, "KILN-EXTENSIONS-BEGIN"):]
		for _, want := range []string{"name: gvisor", "name: i915", "name: schematic", "image: 0.sqsh"} {
			if !strings.Contains(ext, want) {
				t.Errorf("extensions.yaml lacks %q", want)
			}
		}

		checkTalosInit(t, console)

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

	t.Run("iso with image cache as usb stick", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, true,
			"-drive", "if=none,id=stick,format=raw,readonly=on,file="+cacheISO, "-device", "qemu-xhci", "-device", "usb-storage,drive=stick")
		checkConsole(t, console, false)
		checkCache(t, console, "IMAGECACHE-ISO")

		if disks := consoleLine(console, "DISKS"); !strings.Contains(disks, "sd") {
			t.Errorf("the guest did not see its USB stick: %q", disks)
		}
	})

	t.Run("raw disk with image cache", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, true, "-drive", "file="+raw+",format=raw,if=virtio")
		checkConsole(t, console, true)
		checkCache(t, console, "IMAGECACHE-DISK")

		if disks := consoleLine(console, "DISKS"); !strings.Contains(disks, "vda") {
			t.Errorf("the guest did not see its disk: %q", disks)
		}
	})

	// GRUB boots the main entry of BOOT's grub.cfg, not a reset line,
	// and says so with BOOT_IMAGE.
	checkGRUBConsole := func(t *testing.T, console string, wantValues map[uint32]string) {
		t.Helper()

		cmdline := consoleLine(console, "CMDLINE")
		for _, want := range []string{"BOOT_IMAGE=/A/vmlinuz", "kiln.e2e=boot-proof", "console=ttyS0", "talos.platform=metal"} {
			if !strings.Contains(cmdline, want) {
				t.Errorf("kernel command line %q lacks %q", cmdline, want)
			}
		}

		if strings.Contains(cmdline, "talos.experimental.wipe") {
			t.Errorf("GRUB booted a reset entry: %q", cmdline)
		}

		checkTalosInit(t, console)

		values := parseADV(t, consoleLine(console, "META"))
		for k, v := range wantValues {
			if values[k] != v {
				t.Errorf("META partition holds %v, want 0x%x=%s", values, k, v)
			}
		}

		if _, ok := wantValues[0x11]; !ok && values[0x11] != "" {
			t.Errorf("META of a GRUB-only disk holds 0x11=%s", values[0x11])
		}

		if t.Failed() {
			t.Logf("console:\n%s", tail(console, 6000))
		}
	}

	t.Run("dual-boot raw disk under SeaBIOS", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, false, "-drive", "file="+raw+",format=raw,if=virtio")
		checkGRUBConsole(t, console, map[uint32]string{0x0c: "kiln-meta-proof", 0x11: "dual-boot"})
		checkCache(t, console, "IMAGECACHE-DISK")
	})

	t.Run("grub raw disk under SeaBIOS", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, false, "-drive", "file="+grubRaw+",format=raw,if=virtio")
		checkGRUBConsole(t, console, map[uint32]string{0x0c: "kiln-meta-proof"})
	})

	t.Run("grub raw disk under OVMF", func(t *testing.T) {
		console := qemu(t, 4*time.Minute, true, "-drive", "file="+grubRaw+",format=raw,if=virtio")
		checkGRUBConsole(t, console, map[uint32]string{0x0c: "kiln-meta-proof"})
	})

	t.Run("GRUB disks read by tools that are not ours", func(t *testing.T) {
		checkGRUBDisk(t, raw, []string{"EFI", "BIOS", "BOOT", "META", "IMAGECACHE"}, 4247<<20) // dual-boot, Talos ≥ 1.11
		checkGRUBDisk(t, grubRaw, []string{"EFI", "BIOS", "BOOT", "META"}, 2246<<20)
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

		if out := run(t, "sgdisk", "-p", raw); !strings.Contains(out, "META") || !strings.Contains(out, "EFI") || !strings.Contains(out, "IMAGECACHE") {
			t.Errorf("sgdisk -p: no EFI, META and IMAGECACHE partitions:\n%s", out)
		}

		// The IMAGECACHE partition, cut out of the disk, is clean ext4
		// labelled IMAGECACHE.
		part := filepath.Join(dir, "imagecache.img")
		start, size := partitionExtent(t, raw, "IMAGECACHE")
		run(t, "dd", "if="+raw, "of="+part, "bs=1M", "iflag=skip_bytes,count_bytes", "skip="+start, "count="+size, "status=none")
		run(t, "e2fsck", "-fn", part)

		if out := run(t, "blkid", part); !strings.Contains(out, `LABEL="IMAGECACHE"`) || !strings.Contains(out, `TYPE="ext4"`) {
			t.Errorf("blkid on IMAGECACHE: %s", out)
		}

		out := run(t, "isoinfo", "-R", "-f", "-i", cacheISO)
		if !strings.Contains(out, "/imagecache/manifests/registry.k8s.io/kube-apiserver/reference/v1.36.0") {
			t.Errorf("the ISO has no /imagecache tree:\n%s", tail(out, 2000))
		}

		// The schematic's installer, built from this amd64-only mirror,
		// under the install image of the air-gap patch (kiln's address,
		// host:port written host_port_).
		host, port, _ := strings.Cut(k.addr, ":")
		if want := "/imagecache/manifests/" + host + "_" + port + "_/metal-installer/" + cached + "/reference/v1.13.0"; !strings.Contains(out, want) {
			t.Errorf("the ISO's image cache has no %s:\n%s", want, tail(out, 2000))
		}
	})
}

// checkTalosInit asserts what the fixture's /init found doing what Talos's
// init does: every layer mounted in Talos's order under the overlay, the
// firmware, the SELinux labels of the layers and none of the firmware's
// (it left the layer), and the extension's modules loaded by name with
// their dependencies from the base tree, through the binary indexes (kmod)
// and the text modules.dep (busybox).
func checkTalosInit(t *testing.T, console string) {
	t.Helper()

	if !strings.Contains(console, "KILN-BOOT-DONE") || strings.Contains(console, "KILN-BOOT-FAILED") {
		t.Errorf("the fixture's init failed:\n%s", tail(console, 3000))
	}

	want := map[string]string{
		"LAYERS":           "0.sqsh 1.sqsh 2.sqsh 3.sqsh modules.dep.sqsh",
		"LOWERDIR":         "/layers/layer4:/layers/layer3:/layers/layer2:/layers/layer1:/layers/layer0:/layers/root",
		"ROOT":             "kiln boot fixture root filesystem",
		"MODPROBE-KMOD":    "fat vfat",
		"MODPROBE-BUSYBOX": "md_mod raid1",
	}

	for key, value := range want {
		if got := consoleLine(console, key); got != value {
			t.Errorf("KILN-%s: %q, want %q", key, got, value)
		}
	}

	if fw := consoleLine(console, "FIRMWARE"); !strings.Contains(fw, "usr/lib/firmware/i915/adlp_dmc.bin") {
		t.Errorf("no firmware in the new root: %q", fw)
	}

	labels := consoleLine(console, "SELINUX")
	for _, want := range []string{
		`# file: /usr/local/bin/runsc security.selinux="` + demo.GvisorBinaryLabel + `"`,
		`# file: /etc/cri/conf.d/gvisor.part security.selinux="` + demo.GvisorConfigLabel + `"`,
	} {
		if !strings.Contains(labels, want) {
			t.Errorf("KILN-SELINUX lacks %q: %q", want, labels)
		}
	}

	if strings.Contains(labels, "firmware") {
		t.Errorf("a firmware label survived: %q", labels)
	}
}

// partitionExtent returns the byte offset and size of a named partition
// as sgdisk reports them (512-byte sectors).
func partitionExtent(t *testing.T, image, name string) (string, string) {
	t.Helper()

	for _, line := range strings.Split(run(t, "sgdisk", "-p", image), "\n") {
		f := strings.Fields(line)
		if len(f) >= 7 && f[len(f)-1] == name {
			first, err1 := strconv.ParseInt(f[1], 10, 64)
			last, err2 := strconv.ParseInt(f[2], 10, 64)

			if err1 == nil && err2 == nil {
				return strconv.FormatInt(first*512, 10), strconv.FormatInt((last-first+1)*512, 10)
			}
		}
	}

	t.Fatalf("no partition %s on %s", name, image)

	return "", ""
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
