package uki_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/pe"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"flag"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/cmdline"
	"github.com/kiln-dev/kiln/builder/uki"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

const debianStub = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"

var debianKernel = testfixture.Kernel()

func golden(t *testing.T, name, got string) {
	t.Helper()
	testfixture.Golden(t, name, got, *update)
}

func need(t *testing.T, paths ...string) {
	t.Helper()

	testfixture.Require(t, paths...)
}

// randomBytes returns deterministic pseudo-random content.
func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed))
	b := make([]byte, n)

	for i := range b {
		b[i] = byte(r.Uint32())
	}

	return b
}

// peChecksum computes the PE checksum of a whole image independently of
// the package (the CheckSum field, found through debug/pe offsets, counts
// as zero).
func peChecksum(img []byte) uint32 {
	peOff := int(binary.LittleEndian.Uint32(img[0x3c:]))
	field := peOff + 4 + 20 + 64

	var sum uint32

	for i := 0; i < len(img); i += 2 {
		if i == field || i == field+2 {
			continue
		}

		w := uint32(img[i])
		if i+1 < len(img) {
			w |= uint32(img[i+1]) << 8
		}

		sum += w
		sum = sum&0xffff + sum>>16
	}

	return sum&0xffff + uint32(len(img))
}

func headerChecksum(img []byte) uint32 {
	peOff := int(binary.LittleEndian.Uint32(img[0x3c:]))

	return binary.LittleEndian.Uint32(img[peOff+4+20+64:])
}

func TestChecksumMatchesLinker(t *testing.T) {
	need(t, debianStub)

	img, err := os.ReadFile(debianStub)
	if err != nil {
		t.Fatal(err)
	}

	if got, want := peChecksum(img), headerChecksum(img); got != want {
		t.Fatalf("peChecksum(stub) = %#x, header says %#x", got, want)
	}
}

type fixture struct {
	secs   uki.Sections
	linux  []byte
	initrd []byte
}

func newFixture(t *testing.T, kernel []byte) fixture {
	t.Helper()

	line, err := cmdline.Build(cmdline.Options{Platform: "metal", Arch: "amd64", TalosVersion: release.MustParseVersion("v1.13.0")})
	if err != nil {
		t.Fatal(err)
	}

	osrel, err := uki.OSRelease("Talos", "v1.13.0")
	if err != nil {
		t.Fatal(err)
	}

	initrd := randomBytes(3<<20+123, 1)

	return fixture{
		secs: uki.Sections{
			OSRel:   osrel,
			Cmdline: line,
			Uname:   "6.1.0-56-amd64",
			Splash:  randomBytes(777, 2),
			Linux:   uki.Blob{R: bytes.NewReader(kernel), Size: int64(len(kernel))},
			Initrd:  uki.Blob{R: bytes.NewReader(initrd), Size: int64(len(initrd))},
		},
		linux:  kernel,
		initrd: initrd,
	}
}

func assembleFile(t *testing.T, stub io.ReaderAt, secs uki.Sections, opts uki.Options) (string, uki.Result) {
	t.Helper()

	path := filepath.Join(t.TempDir(), "uki.efi")

	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}

	res, err := uki.Assemble(t.Context(), stub, secs, f, opts)
	if err != nil {
		t.Fatalf("Assemble = %v", err)
	}

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	return path, res
}

// checkPE reads the image back with debug/pe and checks the layout rules
// and the content of every added section.
func checkPE(t *testing.T, path string, stubPath string, want map[string][]byte, order []string) *pe.File {
	t.Helper()

	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	f, err := pe.NewFile(bytes.NewReader(img))
	if err != nil {
		t.Fatalf("debug/pe: %v", err)
	}

	oh, ok := f.OptionalHeader.(*pe.OptionalHeader64)
	if !ok {
		t.Fatalf("optional header %T, want PE32+", f.OptionalHeader)
	}

	if f.NumberOfSymbols != 0 || f.PointerToSymbolTable != 0 {
		t.Errorf("symbol table still present: %d at %#x", f.NumberOfSymbols, f.PointerToSymbolTable)
	}

	if got := peChecksum(img); got != oh.CheckSum {
		t.Errorf("CheckSum = %#x, recomputed %#x", oh.CheckSum, got)
	}

	if int64(len(img))%int64(oh.FileAlignment) != 0 {
		t.Errorf("file size %d not a multiple of FileAlignment %d", len(img), oh.FileAlignment)
	}

	var names []string

	var prevEnd uint32

	for i, s := range f.Sections {
		names = append(names, s.Name)

		if i > 0 && s.VirtualAddress < prevEnd {
			t.Errorf("section %s at %#x overlaps the previous one ending at %#x", s.Name, s.VirtualAddress, prevEnd)
		}

		if s.Offset%oh.FileAlignment != 0 || s.Size%oh.FileAlignment != 0 {
			t.Errorf("section %s raw %#x+%#x not FileAlignment-aligned", s.Name, s.Offset, s.Size)
		}

		if int64(s.Offset)+int64(s.Size) > int64(len(img)) {
			t.Errorf("section %s raw data beyond EOF", s.Name)
		}

		prevEnd = s.VirtualAddress + s.VirtualSize
		if s.VirtualSize == 0 {
			prevEnd += s.Size
		}

		if _, ok := want[s.Name]; ok {
			if s.VirtualAddress%oh.SectionAlignment != 0 {
				t.Errorf("section %s VMA %#x not aligned to %#x", s.Name, s.VirtualAddress, oh.SectionAlignment)
			}

			if s.Characteristics != pe.IMAGE_SCN_CNT_INITIALIZED_DATA|pe.IMAGE_SCN_MEM_READ {
				t.Errorf("section %s characteristics %#x", s.Name, s.Characteristics)
			}
		}
	}

	if prevEnd > oh.SizeOfImage || oh.SizeOfImage%oh.SectionAlignment != 0 {
		t.Errorf("SizeOfImage %#x, sections end at %#x", oh.SizeOfImage, prevEnd)
	}

	if oh.SizeOfHeaders > f.Sections[0].Offset || oh.SizeOfHeaders%oh.FileAlignment != 0 {
		t.Errorf("SizeOfHeaders %#x, first section at %#x", oh.SizeOfHeaders, f.Sections[0].Offset)
	}

	if !slicesEqual(names, order) {
		t.Errorf("sections = %v, want %v", names, order)
	}

	// Content of added sections, byte for byte; duplicates (.cmdline in
	// profiles) are checked in order.
	seen := map[string]int{}

	for _, s := range f.Sections {
		key := s.Name
		if seen[s.Name] > 0 {
			key += "#" + strconv.Itoa(seen[s.Name])
		}

		seen[s.Name]++

		w, ok := want[key]
		if !ok {
			continue
		}

		got := make([]byte, s.VirtualSize)
		if _, err := s.ReadAt(got, 0); err != nil {
			t.Fatalf("read %s: %v", key, err)
		}

		if !bytes.Equal(got, w) {
			t.Errorf("section %s: content differs (len %d, want %d)", key, len(got), len(w))
		}

		if pad := img[int64(s.Offset)+int64(s.VirtualSize) : int64(s.Offset)+int64(s.Size)]; !bytes.Equal(pad, make([]byte, len(pad))) {
			t.Errorf("section %s: padding not zero", key)
		}
	}

	// The stub's own sections are unchanged.
	if stubPath != "" {
		sf, err := pe.Open(stubPath)
		if err != nil {
			t.Fatal(err)
		}
		defer sf.Close()

		for i, ss := range sf.Sections {
			a, _ := ss.Data()
			b, _ := f.Sections[i].Data()

			if ss.Name != f.Sections[i].Name || ss.VirtualAddress != f.Sections[i].VirtualAddress || !bytes.Equal(a, b) {
				t.Errorf("stub section %s changed", ss.Name)
			}
		}
	}

	return f
}

func slicesEqual(a, b []string) bool {
	return strings.Join(a, ",") == strings.Join(b, ",")
}

type objdumpSection struct {
	name       string
	size, vma  uint64
	fileOffset uint64
}

// objdumpSections parses `objdump -h`.
func objdumpSections(t *testing.T, path string) []objdumpSection {
	t.Helper()

	testfixture.RequireTool(t, "objdump")

	out, err := exec.CommandContext(t.Context(), "objdump", "-h", path).CombinedOutput()
	if err != nil {
		t.Fatalf("objdump -h: %v\n%s", err, out)
	}

	var secs []objdumpSection

	for line := range strings.SplitSeq(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) != 7 {
			continue
		}

		if _, err := strconv.Atoi(f[0]); err != nil {
			continue
		}

		size, _ := strconv.ParseUint(f[2], 16, 64)
		vma, _ := strconv.ParseUint(f[3], 16, 64)
		off, _ := strconv.ParseUint(f[5], 16, 64)
		secs = append(secs, objdumpSection{f[1], size, vma, off})
	}

	return secs
}

func TestAssembleDebianStub(t *testing.T) {
	need(t, debianStub, debianKernel)

	kernel, err := os.ReadFile(debianKernel)
	if err != nil {
		t.Fatal(err)
	}

	stub, err := os.Open(debianStub)
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()

	fx := newFixture(t, kernel)

	if _, err := uki.Assemble(t.Context(), stub, fx.secs, io.Discard, uki.Options{}); !errors.Is(err, uki.ErrSymbolTable) {
		t.Fatalf("Assemble(symbols, no strip) = %v, want ErrSymbolTable", err)
	}

	path, res := assembleFile(t, stub, fx.secs, uki.Options{StripSymbols: true})
	if !res.ChecksumWritten {
		t.Error("checksum not written to *os.File")
	}

	want := map[string][]byte{
		".osrel": fx.secs.OSRel, ".cmdline": []byte(fx.secs.Cmdline), ".uname": []byte(fx.secs.Uname),
		".splash": fx.secs.Splash, ".linux": fx.linux, ".initrd": fx.initrd,
	}
	order := []string{".text", ".reloc", ".data", ".dynamic", ".rela", ".dynsym", ".sbat", ".sdmagic",
		".osrel", ".cmdline", ".uname", ".splash", ".linux", ".initrd"}

	f := checkPE(t, path, debianStub, want, order)
	defer f.Close()

	// objdump (binutils) is the reader that is not ours.
	od := objdumpSections(t, path)
	if len(od) != len(f.Sections) {
		t.Fatalf("objdump sees %d sections, debug/pe %d", len(od), len(f.Sections))
	}

	var prev uint64

	for i, s := range od {
		ps := f.Sections[i]
		if s.name != ps.Name || s.vma != uint64(ps.VirtualAddress) || s.fileOffset != uint64(ps.Offset) {
			t.Errorf("objdump section %d = %+v, debug/pe %s vma %#x off %#x", i, s, ps.Name, ps.VirtualAddress, ps.Offset)
		}

		if l, ok := want[s.name]; ok && s.size != uint64(len(l)) && s.size != uint64(ps.Size) {
			t.Errorf("objdump %s size %#x, content %#x", s.name, s.size, len(l))
		}

		if s.vma < prev {
			t.Errorf("objdump %s vma %#x below previous end %#x", s.name, s.vma, prev)
		}

		prev = s.vma + s.size
	}

	if f.FileHeader.Machine != pe.IMAGE_FILE_MACHINE_AMD64 {
		t.Errorf("machine %#x", f.FileHeader.Machine)
	}

	t.Logf("UKI %d bytes, checksum %#x, %d sections", res.Size, res.Checksum, len(res.Sections))
}

func TestAssembleStreamingWriter(t *testing.T) {
	need(t, debianStub)

	stub, err := os.Open(debianStub)
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()

	fx := newFixture(t, randomBytes(1<<20, 3))

	// A plain io.Writer: the header keeps CheckSum 0, Result has the value.
	var buf bytes.Buffer

	res, err := uki.Assemble(t.Context(), stub, fx.secs, struct{ io.Writer }{&buf}, uki.Options{StripSymbols: true})
	if err != nil {
		t.Fatal(err)
	}

	img := buf.Bytes()
	if res.ChecksumWritten || headerChecksum(img) != 0 {
		t.Errorf("ChecksumWritten = %v, header %#x; want false, 0", res.ChecksumWritten, headerChecksum(img))
	}

	if got := peChecksum(img); got != res.Checksum {
		t.Errorf("Result.Checksum = %#x, image sums to %#x", res.Checksum, got)
	}

	if res.Size != int64(len(img)) {
		t.Errorf("Result.Size = %d, wrote %d", res.Size, len(img))
	}

	sum := sha256.Sum256(img)
	golden(t, "debian-stub-synthetic-kernel.sha256", hex.EncodeToString(sum[:])+"\n")
}

func TestAssembleErrors(t *testing.T) {
	need(t, debianStub)

	stub, err := os.Open(debianStub)
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()

	opts := uki.Options{StripSymbols: true}
	linux := randomBytes(4096, 4)

	for name, tc := range map[string]struct {
		secs func() uki.Sections
		ctx  func() context.Context
		want error
	}{
		"no linux": {secs: func() uki.Sections { return uki.Sections{} }, want: uki.ErrInput},
		"short linux": {secs: func() uki.Sections {
			return uki.Sections{Linux: uki.Blob{R: bytes.NewReader(linux), Size: int64(len(linux)) + 1}}
		}, want: uki.ErrInput},
		"long linux": {secs: func() uki.Sections {
			return uki.Sections{Linux: uki.Blob{R: bytes.NewReader(linux), Size: int64(len(linux)) - 1}}
		}, want: uki.ErrInput},
		"empty profile": {secs: func() uki.Sections {
			return uki.Sections{Linux: uki.Blob{R: bytes.NewReader(linux), Size: 4096}, Profiles: []uki.Profile{{Cmdline: "x"}}}
		}, want: uki.ErrInput},
		"canceled": {secs: func() uki.Sections {
			return uki.Sections{Linux: uki.Blob{R: bytes.NewReader(linux), Size: 4096}}
		}, ctx: func() context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()

			return ctx
		}, want: context.Canceled},
	} {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			if tc.ctx != nil {
				ctx = tc.ctx()
			}

			if _, err := uki.Assemble(ctx, stub, tc.secs(), io.Discard, opts); !errors.Is(err, tc.want) {
				t.Errorf("Assemble = %v, want %v", err, tc.want)
			}
		})
	}

	if _, err := uki.Assemble(t.Context(), bytes.NewReader([]byte("not a PE file at all")), uki.Sections{}, io.Discard, opts); !errors.Is(err, uki.ErrNotStub) {
		t.Errorf("Assemble(garbage) = %v, want ErrNotStub", err)
	}
}

func TestOSRelease(t *testing.T) {
	got, err := uki.OSRelease("Talos", "v1.13.0")
	if err != nil {
		t.Fatal(err)
	}

	golden(t, "osrel-talos-v1.13.0", string(got))
}
