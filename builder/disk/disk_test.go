package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/meta"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"golang.org/x/sys/unix"
)

func TestGUIDFromLabel(t *testing.T) {
	// Values computed by Talos (talos-formats.md §4.2).
	for label, want := range map[string]string{
		"talos-image-disk": "d92d45b3-cde9-8760-be9f-a2a71fac8d11",
		"EFI":              "bca5174b-0118-8a6a-af0b-2c6e1585acae",
		"BIOS":             "a2a02ff5-d88d-8e6e-9c95-26b9b6c80bc3",
		"BOOT":             "24c73076-4092-85dd-9d98-686a2dbf6d81",
		"META":             "cf04f137-101e-8ec6-9627-fa3f51cdabb8",
		"IMAGECACHE":       "3b5449bc-c21f-8009-8b51-18945967f8df",
	} {
		if got := GUIDFromLabel(label).String(); got != want {
			t.Errorf("GUIDFromLabel(%q) = %s, want %s", label, got, want)
		}
	}
}

func TestGUIDRoundTrip(t *testing.T) {
	g := MustParseGUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
	if got, want := g.String(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
	// GPT mixed-endian: 28 73 2a c1 1f f8 d2 11 ba 4b ...
	b := g.gptBytes()
	if want := []byte{0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b}; !bytes.Equal(b[:10], want) {
		t.Fatalf("gptBytes = % x, want prefix % x", b, want)
	}
	if _, err := ParseGUID("nope"); err == nil {
		t.Fatal("ParseGUID accepted garbage")
	}
}

func TestLayout(t *testing.T) {
	for _, tc := range []struct {
		sector                  int
		firstUsable, lastUsable uint64
		efiFirst, efiLast       uint64
		metaFirst, metaLast     uint64
	}{
		{512, 34, SDBootDiskSize/512 - 34, 2048, 2048 + 2101*2048 - 1, 2102 * 2048, 2103*2048 - 1},
		{4096, 6, SDBootDiskSize/4096 - 6, 256, 256 + 2101*256 - 1, 2102 * 256, 2103*256 - 1},
	} {
		tb, err := Layout(Params{SectorSize: tc.sector})
		if err != nil {
			t.Fatalf("sector %d: %v", tc.sector, err)
		}
		if tb.Size != SDBootDiskSize || tb.SectorSize != tc.sector {
			t.Errorf("sector %d: size %d/%d", tc.sector, tb.Size, tb.SectorSize)
		}
		if tb.FirstUsableLBA != tc.firstUsable || tb.LastUsableLBA != tc.lastUsable {
			t.Errorf("sector %d: usable %d..%d, want %d..%d", tc.sector, tb.FirstUsableLBA, tb.LastUsableLBA, tc.firstUsable, tc.lastUsable)
		}
		if len(tb.Partitions) != 2 {
			t.Fatalf("sector %d: %d partitions", tc.sector, len(tb.Partitions))
		}
		efi, meta := tb.Partitions[0], tb.Partitions[1]
		if efi.Name != "EFI" || efi.FirstLBA != tc.efiFirst || efi.LastLBA != tc.efiLast || efi.Offset != MiB || efi.Size != UKIEFISize || efi.Type != TypeEFI {
			t.Errorf("sector %d: EFI = %+v", tc.sector, efi)
		}
		if meta.Name != "META" || meta.FirstLBA != tc.metaFirst || meta.LastLBA != tc.metaLast || meta.Offset != 2102*MiB || meta.Size != METASize || meta.Type != TypeLinuxData {
			t.Errorf("sector %d: META = %+v", tc.sector, meta)
		}
	}
}

func TestLayoutErrors(t *testing.T) {
	for name, p := range map[string]Params{
		"sector":      {SectorSize: 1024},
		"size":        {Size: 1000},
		"too small":   {Size: MinRAWDiskSize},
		"bad extra":   {Extra: []Partition{{Name: "X", Size: 100}}},
		"dup name":    {Extra: []Partition{{Name: "META", Size: MiB}}},
		"long name":   {Extra: []Partition{{Name: strings.Repeat("x", 37), Size: MiB}}},
		"no room":     {Extra: []Partition{{Name: "X", Size: 1 << 30}}},
		"bootloader?": {Bootloader: "lilo"},
	} {
		if _, err := Layout(p); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
	}
	// GRUB layouts need their BOOT partition (and dual-boot GRUB's BIOS
	// code); refused before anything is written.
	boot := &Partition{Name: LabelBOOT, Size: BootSize}
	for name, p := range map[string]Params{
		"grub without BOOT":      {Bootloader: BootloaderGRUB},
		"dual-boot without BOOT": {Bootloader: BootloaderDualBoot},
		"dual-boot without BIOS": {Bootloader: BootloaderDualBoot, Boot: boot},
		"BOOT misnamed":          {Bootloader: BootloaderGRUB, Boot: &Partition{Name: "boot", Size: BootSize}},
		"sd-boot with BOOT":      {Boot: boot},
		"short boot.img":         {Bootloader: BootloaderGRUB, Boot: boot, BIOS: &BIOSBoot{BootImage: make([]byte, 446), CoreImage: make([]byte, 512)}},
		"core.img too big":       {Bootloader: BootloaderGRUB, Boot: boot, BIOS: &BIOSBoot{BootImage: make([]byte, 512), CoreImage: make([]byte, BIOSSize+1)}},
	} {
		if _, err := Layout(p); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: err = %v, want ErrInvalid", name, err)
		}
		f, _ := os.Create(filepath.Join(t.TempDir(), "x"))
		p.EFI = FromReader(bytes.NewReader(nil))
		if err := Write(context.Background(), f, p); !errors.Is(err, ErrInvalid) {
			t.Errorf("Write %s: err = %v, want ErrInvalid", name, err)
		}
		if st, _ := f.Stat(); st.Size() != 0 {
			t.Errorf("Write %s wrote %d bytes", name, st.Size())
		}
		f.Close()
	}
	tb, err := Layout(Params{Extra: []Partition{{Name: "REST"}}})
	if err != nil {
		t.Fatal(err)
	}
	if r := tb.Partitions[2]; r.LastLBA != tb.LastUsableLBA || r.Offset != 2103*MiB {
		t.Errorf("REST = %+v", r)
	}
}

func needTools(t testing.TB, tools ...string) {
	t.Helper()
	testfixture.RequireTool(t, tools...)
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// espFiles returns a small ESP tree: a fake boot loader, loader.conf and a
// 20 MiB random "UKI".
func espFiles(t testing.TB, dir string) []esp.File {
	t.Helper()
	uki := make([]byte, 20*MiB)
	rand.Read(uki)
	files := map[string][]byte{
		"EFI/boot/BOOTX64.efi":      bytes.Repeat([]byte("sd-boot "), 4096),
		"EFI/Linux/Talos-v1.13.efi": uki,
		"loader/loader.conf":        []byte("# systemd-boot configuration\n\ntimeout 10\n"),
	}
	var out []esp.File
	for p, b := range files {
		src := filepath.Join(dir, "src", filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(src), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(src, b, 0o644); err != nil {
			t.Fatal(err)
		}
		out = append(out, esp.File{Path: p, Size: int64(len(b)), Open: func() (io.ReadCloser, error) { return os.Open(src) }})
	}
	return out
}

func allocated(t testing.TB, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func extract(t testing.TB, img string, e Entry, dst string) {
	t.Helper()
	src, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	f, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(e.Size); err != nil {
		t.Fatal(err)
	}
	tg := Target{File: f, Size: e.Size, Name: e.Name}
	if _, err := copySparse(context.Background(), tg, io.NewSectionReader(src, e.Offset, e.Size)); err != nil {
		t.Fatal(err)
	}
}

func TestWrite(t *testing.T) {
	needTools(t, "sgdisk", "fsck.vfat", "blkid", "fdisk")
	metaValues := []meta.Value{{Key: 0x0c, Value: "hello from kiln"}}
	metaImg, err := meta.Partition(metaValues)
	if err != nil {
		t.Fatal(err)
	}
	for _, sector := range []int{512, 4096} {
		t.Run(map[int]string{512: "512", 4096: "4096"}[sector], func(t *testing.T) {
			dir := t.TempDir()
			img := filepath.Join(dir, "disk.raw")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cache := bytes.Repeat([]byte("imagecache"), 100000) // ~1 MB, non-zero
			p := Params{
				SectorSize: sector,
				Size:       SDBootDiskSize + 16*MiB,
				EFI:        ESP(espFiles(t, dir), esp.Options{}),
				META:       bytes.NewReader(metaImg),
				Extra:      []Partition{{Name: LabelIMAGECACHE, Size: 8 * MiB, Content: FromReader(bytes.NewReader(cache))}},
			}
			if err := Write(context.Background(), f, p); err != nil {
				t.Fatal(err)
			}
			tb, err := Layout(p)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := f.Stat()
			if st.Size() != p.Size {
				t.Fatalf("size %d, want %d", st.Size(), p.Size)
			}
			// Sparse: well under 100 MiB allocated out of 2.2 GiB.
			if a := allocated(t, img); a > 64*MiB {
				t.Errorf("%d bytes allocated, want a sparse image (< 64 MiB)", a)
			} else {
				t.Logf("allocated %d of %d bytes", a, st.Size())
			}

			// sgdisk reads files as 512-byte-sector disks; for 4096 go
			// through a read-only loop device with 4096-byte sectors.
			dev := img
			if sector == 4096 {
				dev = loop4K(t, img)
			}
			if dev != "" {
				out := run(t, "sgdisk", "-v", dev)
				if !strings.Contains(out, "No problems found") {
					t.Errorf("sgdisk -v:\n%s", out)
				}
				for _, e := range tb.Partitions {
					out := run(t, "sgdisk", "-i", string(rune('0'+e.Number)), dev)
					for _, want := range []string{
						"Partition GUID code: " + strings.ToUpper(e.Type.String()),
						"Partition unique GUID: " + strings.ToUpper(e.GUID.String()),
						"Partition name: '" + e.Name + "'",
					} {
						if !strings.Contains(out, want) {
							t.Errorf("sgdisk -i %d: missing %q in\n%s", e.Number, want, out)
						}
					}
					if !regexp.MustCompile(`First sector: `+itoa(e.FirstLBA)+` `).MatchString(out) ||
						!regexp.MustCompile(`Last sector: `+itoa(e.LastLBA)+` `).MatchString(out) {
						t.Errorf("sgdisk -i %d: want sectors %d..%d in\n%s", e.Number, e.FirstLBA, e.LastLBA, out)
					}
				}
				out = run(t, "sgdisk", "-p", dev)
				if !strings.Contains(out, "Disk identifier (GUID): "+strings.ToUpper(tb.DiskGUID.String())) {
					t.Errorf("sgdisk -p: disk GUID missing\n%s", out)
				}
			}
			// fdisk reads both sector sizes.
			out := run(t, "fdisk", "-b", itoa(uint64(sector)), "-l", "-o", "Device,Start,End,Sectors,Type-UUID,UUID,Name", img)
			if !strings.Contains(out, "Disklabel type: gpt") || !strings.Contains(out, "Disk identifier: "+strings.ToUpper(tb.DiskGUID.String())) {
				t.Errorf("fdisk -l:\n%s", out)
			}
			for _, e := range tb.Partitions {
				re := regexp.MustCompile(`(?m)^\S+` + itoa(uint64(e.Number)) + `\s+` + itoa(e.FirstLBA) + `\s+` + itoa(e.LastLBA) + `\s+\d+\s+` +
					strings.ToUpper(e.Type.String()) + `\s+` + strings.ToUpper(e.GUID.String()) + `\s+` + e.Name + `$`)
				if !re.MatchString(out) {
					t.Errorf("fdisk -l: no line for %+v in\n%s", e, out)
				}
			}
			if strings.Contains(out, "GPT PMBR size mismatch") || strings.Contains(out, "corrupt") {
				t.Errorf("fdisk complains:\n%s", out)
			}

			// META: exactly 1 MiB, the ADV image.
			m, _ := tb.Partition("META")
			if m.Size != 1<<20 {
				t.Errorf("META size %d", m.Size)
			}
			got := make([]byte, m.Size)
			if _, err := f.ReadAt(got, m.Offset); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, metaImg) {
				t.Error("META content differs from meta.Partition")
			}
			ic, _ := tb.Partition("IMAGECACHE")
			got = make([]byte, len(cache))
			f.ReadAt(got, ic.Offset)
			if !bytes.Equal(got, cache) {
				t.Error("IMAGECACHE content differs")
			}

			// EFI: fsck.vfat on the extracted partition, blkid on it.
			e, _ := tb.Partition("EFI")
			efiImg := filepath.Join(dir, "efi.img")
			extract(t, img, e, efiImg)
			run(t, "fsck.vfat", "-n", efiImg)
			out = run(t, "blkid", "-p", "-o", "export", efiImg)
			if !strings.Contains(out, "LABEL=EFI\n") || !strings.Contains(out, "TYPE=vfat\n") {
				t.Errorf("blkid EFI:\n%s", out)
			}
			if sector == 512 {
				// blkid on the whole image sees the partitions (PART_ENTRY_NAME).
				out = run(t, "blkid", "-p", "-O", itoa(uint64(e.Offset)), "-o", "export", img)
				if !strings.Contains(out, "LABEL=EFI") {
					t.Errorf("blkid on image at EFI offset:\n%s", out)
				}
			}
		})
	}
}

// loop4K attaches img read-only with 4096-byte sectors;
// it returns "" (after logging) when loop devices are unavailable.
func loop4K(t *testing.T, img string) string {
	t.Helper()
	out, err := exec.Command("losetup", "-f", "--show", "-r", "-b", "4096", img).CombinedOutput()
	if err != nil {
		t.Logf("no loop device (%v: %s): 4K GPT checked with fdisk only", err, out)
		return ""
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func TestWriteMETAErrors(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "d"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	empty := FromReader(bytes.NewReader(nil))
	for name, r := range map[string]io.Reader{"short": bytes.NewReader(make([]byte, 1000)), "long": bytes.NewReader(make([]byte, MiB+1))} {
		if err := Write(context.Background(), f, Params{EFI: empty, META: r}); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s META: err = %v, want ErrInvalid", name, err)
		}
	}
	if err := Write(context.Background(), f, Params{}); !errors.Is(err, ErrInvalid) {
		t.Errorf("no EFI: err = %v", err)
	}
	// Blank image: only the GPT is allocated.
	if err := Write(context.Background(), f, Params{EFI: empty}); err != nil {
		t.Fatal(err)
	}
	if a := allocated(t, f.Name()); a > 1*MiB {
		t.Errorf("blank image allocates %d bytes", a)
	}
	// A canceled context stops Write.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Write(ctx, f, Params{EFI: FromReader(bytes.NewReader([]byte{1}))}); !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: err = %v", err)
	}
}

// TestLayoutGRUB: the dual-boot and grub layouts as Talos makes them
// (talos-formats.md §4.2): partition order, sizes in MiB from the start of
// the disk, types, the BIOS partition's legacy-bootable attribute, the
// default disk sizes.
func TestLayoutGRUB(t *testing.T) {
	bios := &BIOSBoot{BootImage: make([]byte, 512), CoreImage: make([]byte, 512)}
	type part struct {
		name        string
		start, size int64 // MiB
		typ         GUID
		attr        uint64
	}
	for _, tc := range []struct {
		name string
		p    Params
		size int64 // MiB
		want []part
	}{
		{"dual-boot", Params{Bootloader: BootloaderDualBoot, BIOS: bios, Boot: &Partition{Name: LabelBOOT, Size: BootSize}}, 4247, []part{
			{"EFI", 1, 2101, TypeEFI, 0}, {"BIOS", 2102, 1, TypeBIOSBoot, 4}, {"BOOT", 2103, 2000, TypeLinuxData, 0}, {"META", 4103, 1, TypeLinuxData, 0},
		}},
		{"grub", Params{Bootloader: BootloaderGRUB, BIOS: bios, Boot: &Partition{Name: LabelBOOT, Size: BootSize}}, 2246, []part{
			{"EFI", 1, 100, TypeEFI, 0}, {"BIOS", 101, 1, TypeBIOSBoot, 4}, {"BOOT", 102, 2000, TypeLinuxData, 0}, {"META", 2102, 1, TypeLinuxData, 0},
		}},
		{"grub 1.10 arm64", Params{Bootloader: BootloaderGRUB, Size: 1246 * MiB, Boot: &Partition{Name: LabelBOOT, Size: LegacyBootSize}}, 1246, []part{
			{"EFI", 1, 100, TypeEFI, 0}, {"BIOS", 101, 1, TypeBIOSBoot, 4}, {"BOOT", 102, 1000, TypeLinuxData, 0}, {"META", 1102, 1, TypeLinuxData, 0},
		}},
	} {
		for _, sector := range []int{512, 4096} {
			tc.p.SectorSize = sector
			tb, err := Layout(tc.p)
			if err != nil {
				t.Fatalf("%s/%d: %v", tc.name, sector, err)
			}
			if tb.Size != tc.size*MiB {
				t.Errorf("%s/%d: size %d MiB, want %d", tc.name, sector, tb.Size/MiB, tc.size)
			}
			if len(tb.Partitions) != len(tc.want) {
				t.Fatalf("%s/%d: %d partitions, want %d", tc.name, sector, len(tb.Partitions), len(tc.want))
			}
			for i, w := range tc.want {
				e := tb.Partitions[i]
				if e.Name != w.name || e.Offset != w.start*MiB || e.Size != w.size*MiB || e.Type != w.typ || e.Attributes != w.attr ||
					e.GUID != GUIDFromLabel(w.name) || e.FirstLBA != uint64(e.Offset)/uint64(sector) {
					t.Errorf("%s/%d: partition %d = %+v, want %+v", tc.name, sector, i+1, e, w)
				}
			}
		}
	}
}
