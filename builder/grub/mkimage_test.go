package grub

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ulikunitz/xz/lzma"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// moduleSets are the module lists compared: Talos's, none at all, and (for
// EFI) every module of the directory.
func moduleSets(t *testing.T, p platformDir) map[string][]string {
	sets := map[string][]string{"talos": TalosModules, "none": nil}
	if p.efi == "" {
		sets["talos"] = slices.Concat(TalosModules, TalosBIOSModules)
		// grub-mkrescue's El Torito core.img with the ISO's modules
		sets["rescue"] = []string{"biosdisk", "iso9660", "normal", "configfile", "linux", "search", "all_video"}
	} else {
		sets["all"] = allModules(t, p.dir)
	}

	return sets
}

var prefixes = []string{TalosPrefix, "", "(memdisk)/boot/grub/with/a/longer/prefix"}

// TestEFIMatchesGrubMkimage: the x86_64-efi and arm64-efi images are byte
// for byte what grub-mkimage 2.06, 2.12 and 2.14 write for the same
// directory, modules and prefix.
func TestEFIMatchesGrubMkimage(t *testing.T) {
	for _, p := range platformDirs(t) {
		if p.efi == "" {
			continue
		}

		for name, mods := range moduleSets(t, p) {
			for _, prefix := range prefixes {
				t.Run(fmt.Sprintf("%s/%s/%q", p.label, name, prefix), func(t *testing.T) {
					o := Options{Format: p.efi, Modules: mods, Prefix: prefix}
					if prefix == "" {
						// an embedded config (-c), odd-sized
						o.Config = []byte("search --set=root --file /x\nset prefix=($root)/grub\n")
					}

					want, err := grubMkimage(t, p, o)
					if err != nil {
						t.Fatal(err)
					}

					got, err := MakeImage(os.DirFS(p.dir), o)
					if err != nil {
						t.Fatal(err)
					}

					if !bytes.Equal(got, want) {
						t.Fatalf("%d bytes, grub-mkimage %d; first difference at 0x%x", len(got), len(want), firstDiff(got, want))
					}

					if name == "talos" && prefix == TalosPrefix {
						t.Logf("%d bytes identical", len(got))
					}
				})
			}
		}
	}
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}

	return min(len(a), len(b))
}

// pcImage is an i386-pc image taken apart.
type pcImage struct {
	cdboot, diskboot, decompressor []byte
	compressed, payload            []byte
}

const lzmaDecompressorName = "lzma_decompress.img"

func splitPC(t *testing.T, dir string, img []byte, eltorito bool) pcImage {
	t.Helper()

	var p pcImage

	if eltorito {
		p.cdboot, img = img[:cdbootSize], img[cdbootSize:]
	}

	dec, err := os.ReadFile(dir + "/" + lzmaDecompressorName)
	if err != nil {
		t.Fatal(err)
	}

	p.diskboot, p.decompressor, p.compressed = img[:sectorSize], img[sectorSize:sectorSize+len(dec)], img[sectorSize+len(dec):]
	if n := le.Uint32(p.decompressor[pcCompressedSizeOff:]); int(n) != len(p.compressed) {
		t.Fatalf("compressed size field %d, stream %d bytes", n, len(p.compressed))
	}

	size := int64(le.Uint32(p.decompressor[pcUncompressedSizeOff:]))

	// The classic .lzma header GRUB leaves out: lc=3 lp=0 pb=2, 64 KiB, size.
	hdr := []byte{0x5d, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	le.PutUint64(hdr[5:], uint64(size))

	r, err := lzma.NewReader(io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(p.compressed)))
	if err != nil {
		t.Fatal(err)
	}

	if p.payload, err = io.ReadAll(r); err != nil {
		t.Fatalf("LZMA stream: %v", err)
	}

	if int64(len(p.payload)) != size {
		t.Fatalf("LZMA stream decodes to %d bytes, header says %d", len(p.payload), size)
	}

	// xz's decoder (liblzma) is a second, independent reader of the stream.
	cmd := exec.Command("xz", "--format=lzma", "--decompress", "--stdout")
	cmd.Stdin = io.MultiReader(bytes.NewReader(hdr), bytes.NewReader(p.compressed))

	out, err := cmd.Output()
	if err != nil || !bytes.Equal(out, p.payload) {
		t.Fatalf("xz decodes the stream differently (%v, %d bytes)", err, len(out))
	}

	return p
}

// payloadModules lists the modules in an i386-pc payload by their .modname
// sections, and the prefix.
func payloadModules(t *testing.T, payload []byte, kernelSize int) ([]string, string) {
	t.Helper()

	area := payload[kernelSize:]
	if le.Uint32(area) != moduleMagic || int(le.Uint32(area[8:])) != len(area) {
		t.Fatalf("no module area at 0x%x", kernelSize)
	}

	var (
		names  []string
		prefix string
	)

	for off := le.Uint32(area[4:]); int(off) < len(area); {
		typ, size := le.Uint32(area[off:]), le.Uint32(area[off+4:])
		body := area[off+8 : off+size]

		switch typ {
		case objTypeELF:
			f, err := parseELF(body)
			if err != nil {
				t.Fatal(err)
			}

			for i := range f.sections {
				if f.sections[i].name == ".modname" {
					names = append(names, strings.TrimRight(string(f.bytesOf(&f.sections[i])), "\x00"))
				}
			}
		case objTypePrefix:
			prefix = strings.TrimRight(string(body), "\x00")
		}

		off += (size + 3) &^ 3
	}

	return names, prefix
}

// TestPCMatchesGrubMkimage: i386-pc and i386-pc-eltorito images equal
// grub-mkimage's in everything but the LZMA stream (GRUB's encoder is the
// LZMA SDK's optimal parser, this one ulikunitz/xz's) and the three fields
// that carry its length: cdboot.img, diskboot.img and lzma_decompress.img
// as GRUB patches them, and a stream that decodes (with ulikunitz/xz and
// with xz) to exactly GRUB's uncompressed kernel and module area: the same
// kernel layout, modules in the same order, the same prefix.
func TestPCMatchesGrubMkimage(t *testing.T) {
	for _, p := range platformDirs(t) {
		if p.efi != "" {
			continue
		}

		kb, err := os.ReadFile(p.dir + "/kernel.img")
		if err != nil {
			t.Fatal(err)
		}

		kernel, _, err := loadPCKernel(kb)
		if err != nil {
			t.Fatal(err)
		}

		for _, format := range []Format{FormatPC, FormatPCElTorito} {
			for name, mods := range moduleSets(t, p) {
				for _, prefix := range prefixes {
					// Compressing takes a tenth of a second, seconds
					// under -race: vary the prefix and the module set
					// on Debian 12's tree only, and test El Torito with
					// the rescue set only.
					if (prefix != TalosPrefix && name != "talos") || (format == FormatPCElTorito) != (name == "rescue") ||
						(!p.system && (prefix != TalosPrefix || name == "none")) {
						continue
					}

					t.Run(fmt.Sprintf("%s/%s/%s/%q", p.label, format, name, prefix), func(t *testing.T) {
						o := Options{Format: format, Modules: mods, Prefix: prefix}
						if prefix == "" {
							o.Config = []byte("set root=(hd0)\n")
						}

						wantImg, err := grubMkimage(t, p, o)
						if err != nil {
							t.Fatal(err)
						}

						gotImg, err := MakeImage(os.DirFS(p.dir), o)
						if err != nil {
							t.Fatal(err)
						}

						eltorito := format == FormatPCElTorito
						got, want := splitPC(t, p.dir, gotImg, eltorito), splitPC(t, p.dir, wantImg, eltorito)

						if !bytes.Equal(got.cdboot, want.cdboot) {
							t.Error("cdboot.img differs")
						}

						for _, img := range []struct {
							name string
							core []byte
							pc   pcImage
						}{{"kiln", gotImg, got}, {"grub-mkimage", wantImg, want}} {
							n := (len(img.pc.decompressor) + len(img.pc.compressed) + sectorSize - 1) / sectorSize
							if l := le.Uint16(img.pc.diskboot[blocklistLenOff:]); int(l) != n {
								t.Errorf("%s: blocklist length %d, want %d sectors", img.name, l, n)
							}
						}

						if !bytes.Equal(got.diskboot[:blocklistLenOff], want.diskboot[:blocklistLenOff]) ||
							!bytes.Equal(got.diskboot[blocklistLenOff+2:], want.diskboot[blocklistLenOff+2:]) {
							t.Error("diskboot.img differs beyond the blocklist length")
						}

						if !bytes.Equal(got.decompressor[:pcCompressedSizeOff], want.decompressor[:pcCompressedSizeOff]) ||
							!bytes.Equal(got.decompressor[pcCompressedSizeOff+4:], want.decompressor[pcCompressedSizeOff+4:]) {
							t.Error("lzma_decompress.img differs beyond the compressed size")
						}

						if !bytes.Equal(got.payload, want.payload) {
							t.Fatalf("uncompressed payload: %d bytes, grub-mkimage %d; first difference at 0x%x",
								len(got.payload), len(want.payload), firstDiff(got.payload, want.payload))
						}

						gotMods, gotPrefix := payloadModules(t, got.payload, len(kernel))
						resolved, err := Modules(os.DirFS(p.dir), mods)
						if err != nil {
							t.Fatal(err)
						}

						if !slices.Equal(gotMods, resolved) || gotPrefix != prefix {
							t.Errorf("modules %v prefix %q, want %v %q", gotMods, gotPrefix, resolved, prefix)
						}

						if name == "talos" && prefix == TalosPrefix {
							t.Logf("modules %v; payload %d bytes identical; LZMA %d bytes (grub-mkimage %d); image %d bytes (%d)",
								gotMods, len(got.payload), len(got.compressed), len(want.compressed), len(gotImg), len(wantImg))
						}
					})
				}
			}
		}

		if !p.system {
			continue
		}

		t.Run(p.label+"/too-big", func(t *testing.T) {
			// Every module at once is more than GRUB's 448 KiB below 0x78000.
			o := Options{Format: FormatPC, Modules: allModules(t, p.dir), Prefix: TalosPrefix}
			if _, err := grubMkimage(t, p, o); err == nil {
				t.Skip("grub-mkimage made an image of every module")
			}

			if _, err := MakeImage(os.DirFS(p.dir), o); err == nil || !strings.Contains(err.Error(), "core image is too big") {
				t.Fatalf("err = %v, want core image is too big", err)
			}
		})
	}
}

// TestMkrescueElToritoMatchesGrubMkrescue: the El Torito image made with
// MkrescueElTorito's options, patched for its place in the ISO, is
// grub-mkrescue's boot/grub/i386-pc/eltorito.img (Debian 12's, with
// --directory=/usr/lib/grub/i386-pc as Talos's dual-boot ISO runs it) but for
// the LZMA stream: same cdboot.img with the same boot info (image and volume
// descriptor blocks), same diskboot.img blocklist start, same kernel, modules,
// embedded config and prefix.
func TestMkrescueElToritoMatchesGrubMkrescue(t *testing.T) {
	testfixture.RequireTool(t, "grub-mkrescue", "xorriso")
	testfixture.Require(t, systemGrub+"/i386-pc/kernel.img")

	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")
	writeTestFile(t, filepath.Join(dir, "hello"), []byte("hello\n"))

	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}

	iso := filepath.Join(dir, "rescue.iso")
	if out, err := exec.Command("grub-mkrescue", "--output="+iso, "--directory="+systemGrub+"/i386-pc", tree).CombinedOutput(); err != nil {
		t.Fatalf("grub-mkrescue: %v\n%s", err, out)
	}

	ref := filepath.Join(dir, "eltorito.img")
	if out, err := exec.Command("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/boot/grub/i386-pc/eltorito.img", ref).CombinedOutput(); err != nil {
		t.Fatalf("xorriso: %v\n%s", err, out)
	}

	want, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}

	pcDir := os.DirFS(systemGrub + "/i386-pc")

	o, err := MkrescueElTorito(pcDir)
	if err != nil {
		t.Fatal(err)
	}

	got, err := MakeImage(pcDir, o)
	if err != nil {
		t.Fatal(err)
	}

	if err := PatchElToritoImage(got, le.Uint32(want[12:]), le.Uint32(want[8:])); err != nil {
		t.Fatal(err)
	}

	g, w := splitPC(t, systemGrub+"/i386-pc", got, true), splitPC(t, systemGrub+"/i386-pc", want, true)

	// The boot info table's length and checksum (bytes 16–23) follow the
	// LZMA stream's length.
	if !bytes.Equal(g.cdboot[:16], w.cdboot[:16]) || !bytes.Equal(g.cdboot[24:], w.cdboot[24:]) {
		t.Errorf("cdboot.img differs at 0x%x (boot file length and checksum aside)", firstDiff(g.cdboot, w.cdboot))
	}

	if !bytes.Equal(g.diskboot[:blocklistLenOff], w.diskboot[:blocklistLenOff]) {
		t.Error("diskboot.img differs before the blocklist length")
	}

	if !bytes.Equal(g.payload, w.payload) {
		t.Fatalf("payload differs at 0x%x", firstDiff(g.payload, w.payload))
	}

	t.Logf("grub-mkrescue's El Torito image: %d bytes, ours %d; payload %d bytes identical, config %q",
		len(want), len(got), len(g.payload), o.Config)
}

// TestMkrescueEFIMatchesGrubMkrescue: the EFI image made with MkrescueEFI's
// options is byte for byte the efi/boot/bootx64.efi in the efi.img of
// Debian 12's grub-mkrescue run without --directory (every platform of
// /usr/lib/grub, as Talos's GRUB-only ISO runs it) and without
// --compress=xz (which adds xzio and gcry_crc).
func TestMkrescueEFIMatchesGrubMkrescue(t *testing.T) {
	testfixture.RequireTool(t, "grub-mkrescue", "xorriso", "mcopy")
	testfixture.Require(t, systemGrub+"/x86_64-efi/kernel.img")

	dir := t.TempDir()
	tree := filepath.Join(dir, "tree")

	if err := os.MkdirAll(tree, 0o755); err != nil {
		t.Fatal(err)
	}

	iso := filepath.Join(dir, "rescue.iso")
	if out, err := exec.Command("grub-mkrescue", "--output="+iso, tree).CombinedOutput(); err != nil {
		t.Fatalf("grub-mkrescue: %v\n%s", err, out)
	}

	fat := filepath.Join(dir, "efi.img")
	if out, err := exec.Command("xorriso", "-osirrox", "on", "-indev", iso, "-extract", "/efi.img", fat).CombinedOutput(); err != nil {
		t.Fatalf("xorriso: %v\n%s", err, out)
	}

	ref := filepath.Join(dir, "bootx64.efi")
	if out, err := exec.Command("mcopy", "-i", fat, "::/efi/boot/bootx64.efi", ref).CombinedOutput(); err != nil {
		t.Fatalf("mcopy: %v\n%s", err, out)
	}

	want, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}

	efiDir := os.DirFS(systemGrub + "/x86_64-efi")

	o, err := MkrescueEFI(efiDir, FormatX86_64EFI)
	if err != nil {
		t.Fatal(err)
	}

	got, err := MakeImage(efiDir, o)
	if err != nil {
		t.Fatal(err)
	}

	if !bytes.Equal(got, want) {
		t.Fatalf("EFI image differs from grub-mkrescue's at 0x%x (%d bytes, want %d)", firstDiff(got, want), len(got), len(want))
	}

	if _, err := MkrescueEFI(efiDir, FormatPC); err == nil {
		t.Error("MkrescueEFI accepted i386-pc")
	}

	t.Logf("grub-mkrescue's bootx64.efi: %d bytes, identical; config %q", len(want), o.Config)
}
