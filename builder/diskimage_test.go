package builder_test

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"

	"github.com/siderolabs/go-adv/adv/talos"

	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
)

// gptPart is a partition of a built disk, read from its primary GPT.
type gptPart struct {
	name          string
	offset, size  int64
	attributes    uint64
	typeFirstByte byte
}

// readGPT reads a 512-byte-sector disk's partition names and extents.
func readGPT(t *testing.T, r io.ReaderAt) []gptPart {
	t.Helper()

	ent := make([]byte, 128*128)
	if _, err := r.ReadAt(ent, 1024); err != nil {
		t.Fatal(err)
	}

	var parts []gptPart

	for i := range 128 {
		e := ent[i*128 : (i+1)*128]
		first, last := binary.LittleEndian.Uint64(e[32:]), binary.LittleEndian.Uint64(e[40:])

		if first == 0 {
			break
		}

		var u []uint16
		for j := 56; j < 128 && binary.LittleEndian.Uint16(e[j:]) != 0; j += 2 {
			u = append(u, binary.LittleEndian.Uint16(e[j:]))
		}

		parts = append(parts, gptPart{
			name: string(utf16.Decode(u)), offset: int64(first) * 512, size: int64(last-first+1) * 512,
			attributes: binary.LittleEndian.Uint64(e[48:]), typeFirstByte: e[0],
		})
	}

	return parts
}

func (e *env) schematicWith(t *testing.T, yaml string) string {
	t.Helper()

	sc, err := schematic.Parse([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}

	canonical, _ := sc.Marshal()
	id := schematic.IDOf(canonical)

	if _, err := e.schemas.Put(context.Background(), id, canonical); err != nil {
		t.Fatal(err)
	}

	return id
}

// diskLayout builds a disk and returns its size, its partitions (name:MiB
// size) and its META values.
func diskLayout(t *testing.T, e *env, id, version, path string) (int64, []string, map[uint8]string) {
	t.Helper()

	res, err := e.b.Build(context.Background(), builder.Request{SchematicID: id, Version: version, Path: path}, nil)
	if err != nil {
		t.Fatalf("%s %s: %v", version, path, err)
	}
	defer res.Asset.Close()

	var (
		names  []string
		values = map[uint8]string{}
	)

	for _, p := range readGPT(t, res.Asset) {
		names = append(names, p.name+":"+strconv.FormatInt(p.size>>20, 10))

		if p.name == "BIOS" && p.attributes != 4 {
			t.Errorf("%s: BIOS attributes %#x, want the legacy BIOS bootable bit", path, p.attributes)
		}

		magic := make([]byte, 4)
		if _, err := res.Asset.ReadAt(magic, p.offset); err != nil {
			t.Fatal(err)
		}

		// A blank META (no values) is all zeros, as Talos leaves it.
		if p.name == "META" && binary.BigEndian.Uint32(magic) != 0 {
			adv, err := talos.NewADV(io.NewSectionReader(res.Asset, p.offset, p.size))
			if err != nil {
				t.Fatal(err)
			}

			for _, tag := range adv.ListTags() {
				values[tag], _ = adv.ReadTag(tag)
			}
		}
	}

	return res.Asset.Size(), names, values
}

// TestDiskBootloaders: a disk image's layout follows Talos's boot loader
// choice: dual-boot for the amd64 default from 1.10 (4247 MiB, META
// 0x11=dual-boot), sd-boot for arm64 and when the schematic asks, and what
// cannot be built is refused before building: dual-boot on arm64 (as
// Talos refuses it), grub from a release without GRUB's EFI platform.
func TestDiskBootloaders(t *testing.T) {
	e := newEnv(t) // the synthetic GRUB i386-pc tree only

	size, parts, values := diskLayout(t, e, e.emptyID, "v1.13.0", "metal-amd64.raw")
	if size != 4247<<20 || strings.Join(parts, " ") != "EFI:2101 BIOS:1 BOOT:2000 META:1" || values[0x11] != "dual-boot" {
		t.Errorf("metal-amd64.raw: %d bytes, %v, META %v; want 4247 MiB, dual-boot layout, 0x11=dual-boot", size, parts, values)
	}

	size, parts, values = diskLayout(t, e, e.emptyID, "v1.13.0", "metal-arm64.raw")
	if size != 2246<<20 || strings.Join(parts, " ") != "EFI:2101 META:1" || len(values) != 0 {
		t.Errorf("metal-arm64.raw: %d bytes, %v, META %v; want 2246 MiB, sd-boot layout, no META values", size, parts, values)
	}

	sd := e.schematicWith(t, "customization: {bootloader: sd-boot, meta: [{key: 0xc, value: hello}]}")

	size, parts, values = diskLayout(t, e, sd, "v1.13.0", "metal-amd64.raw")
	if size != 2246<<20 || strings.Join(parts, " ") != "EFI:2101 META:1" || values[0x0c] != "hello" || values[0x11] != "" {
		t.Errorf("sd-boot metal-amd64.raw: %d bytes, %v, META %v", size, parts, values)
	}

	dual := e.schematicWith(t, "customization: {bootloader: dual-boot}")
	if _, err := e.b.Build(context.Background(), builder.Request{SchematicID: dual, Version: "v1.13.0", Path: "metal-arm64.raw"}, nil); !errors.Is(err, schematic.ErrInvalid) ||
		!strings.Contains(err.Error(), "dual-boot is amd64 only") {
		t.Errorf("dual-boot arm64 disk: %v, want an invalid-schematic error naming dual-boot", err)
	}

	grub4K := e.schematicWith(t, "customization: {bootloader: grub, diskImage: {sectorSize: 4096}}")
	if _, err := e.b.Build(context.Background(), builder.Request{SchematicID: grub4K, Version: "v1.13.0", Path: "metal-amd64.raw"}, nil); !errors.Is(err, builder.ErrUnsupported) ||
		!strings.Contains(err.Error(), "4096-byte sectors") {
		t.Errorf("grub disk with 4096-byte sectors: %v, want ErrUnsupported naming the sector size", err)
	}

	dual4K := e.schematicWith(t, "customization: {diskImage: {sectorSize: 4096}}")
	if _, err := e.b.Build(context.Background(), builder.Request{SchematicID: dual4K, Version: "v1.13.0", Path: "metal-amd64.raw"}, nil); err != nil {
		t.Errorf("dual-boot disk with 4096-byte sectors: %v", err)
	}

	grub := e.schematicWith(t, "customization: {bootloader: grub}")
	if _, err := e.b.Build(context.Background(), builder.Request{SchematicID: grub, Version: "v1.13.0", Path: "metal-amd64.raw"}, nil); !errors.Is(err, builder.ErrUnsupported) ||
		!strings.Contains(err.Error(), "usr/lib/grub/x86_64-efi") {
		t.Errorf("grub disk of a release without x86_64-efi: %v, want ErrUnsupported naming the directory", err)
	}

	// The same for a GRUB-only ISO, refused while planning, before any build.
	if _, err := e.b.Build(context.Background(), builder.Request{SchematicID: grub, Version: "v1.13.0", Path: "metal-amd64.iso"}, nil); !errors.Is(err, builder.ErrUnsupported) ||
		!strings.Contains(err.Error(), "usr/lib/grub/x86_64-efi") {
		t.Errorf("grub ISO of a release without x86_64-efi: %v, want ErrUnsupported naming the directory", err)
	}
}

// TestDiskGRUBRelease: with GRUB trees in the release (Debian's 2.06 for
// i386-pc and x86_64-efi, Debian 12's arm64-efi), bootloader: grub builds
// Talos's GRUB layout on both architectures, and a Talos 1.9 release,
// which boots disks with GRUB only, gets the 1.9 sizes (BOOT 1000 MiB,
// 1246 MiB disk) and no 0x11.
func TestDiskGRUBRelease(t *testing.T) {
	arm64 := filepath.Join(testfixture.GrubVersions(), "bookworm", "root", "usr", "lib", "grub")
	testfixture.Require(t, filepath.Join(demo.HostGrubDir, "x86_64-efi", "kernel.img"), filepath.Join(arm64, "arm64-efi", "kernel.img"))

	grubTrees := func(platform string) (fs.FS, error) {
		if platform == release.GrubARM64 {
			return demo.GrubFrom(arm64)(platform)
		}

		return demo.GrubFrom(demo.HostGrubDir)(platform)
	}

	for _, version := range []string{"v1.13.0", "v1.9.0"} {
		e := newEnvRelease(t, func(*builder.Config) {}, func(o *demo.Options) {
			o.Version, o.Grub = version, grubTrees
			if version == "v1.9.0" {
				o.KubernetesImages = []string{"registry.k8s.io/pause:3.10"}
			}
		})

		id, size, boot := e.schematicWith(t, "customization: {bootloader: grub}"), int64(2246), "2000"
		if version == "v1.9.0" {
			id, size, boot = e.emptyID, 1246, "1000"
		}

		for _, arch := range []string{"amd64", "arm64"} {
			got, parts, values := diskLayout(t, e, id, version, "metal-"+arch+".raw")
			if want := "EFI:100 BIOS:1 BOOT:" + boot + " META:1"; got != size<<20 || strings.Join(parts, " ") != want || len(values) != 0 {
				t.Errorf("%s metal-%s.raw: %d bytes, %v, META %v; want %d MiB, %s", version, arch, got, parts, values, size, want)
			}
		}
	}
}
