package uki_test

import (
	"bytes"
	"crypto/sha256"
	"debug/pe"
	"encoding/binary"
	"encoding/hex"
	"os"
	"testing"

	"github.com/kiln-dev/kiln/builder/uki"
)

// syntheticStub builds a minimal aarch64 PE32+ EFI application whose header
// has room for only one more section header, with a debug directory (file
// offsets that must move when the headers grow) and a fake Authenticode
// signature after the last section.
func syntheticStub() []byte {
	const (
		lfanew  = 0x40
		optOff  = lfanew + 4 + 20
		secOff  = optOff + 240
		fileEnd = 0x800
	)

	img := make([]byte, fileEnd+16)
	copy(img, "MZ")
	binary.LittleEndian.PutUint32(img[0x3c:], lfanew)
	copy(img[lfanew:], "PE\x00\x00")

	coff := img[lfanew+4:]
	binary.LittleEndian.PutUint16(coff[0:], 0xaa64)
	binary.LittleEndian.PutUint16(coff[2:], 3)
	binary.LittleEndian.PutUint16(coff[16:], 240)
	binary.LittleEndian.PutUint16(coff[18:], 0x206)

	opt := img[optOff:]
	binary.LittleEndian.PutUint16(opt[0:], 0x20b)
	binary.LittleEndian.PutUint32(opt[16:], 0x1000)       // AddressOfEntryPoint
	binary.LittleEndian.PutUint32(opt[32:], 0x1000)       // SectionAlignment
	binary.LittleEndian.PutUint32(opt[36:], 0x200)        // FileAlignment
	binary.LittleEndian.PutUint32(opt[56:], 0x4000)       // SizeOfImage
	binary.LittleEndian.PutUint32(opt[60:], 0x200)        // SizeOfHeaders
	binary.LittleEndian.PutUint16(opt[68:], 10)           // EFI application
	binary.LittleEndian.PutUint32(opt[108:], 16)          // NumberOfRvaAndSizes
	binary.LittleEndian.PutUint32(opt[112+4*8:], fileEnd) // Security: file offset
	binary.LittleEndian.PutUint32(opt[112+4*8+4:], 16)
	binary.LittleEndian.PutUint32(opt[112+6*8:], 0x2000) // Debug: RVA
	binary.LittleEndian.PutUint32(opt[112+6*8+4:], 28)

	for i, s := range []struct {
		name      string
		va, raw   uint32
		chars     uint32
		virtSize  uint32
		fillStart byte
	}{
		{".text", 0x1000, 0x200, 0x60000020, 0x180, 0x90},
		{".rdata", 0x2000, 0x400, 0x40000040, 0x120, 0},
		{".sbat", 0x3000, 0x600, 0x40000040, 0x40, 0},
	} {
		h := img[secOff+40*i:]
		copy(h, s.name)
		binary.LittleEndian.PutUint32(h[8:], s.virtSize)
		binary.LittleEndian.PutUint32(h[12:], s.va)
		binary.LittleEndian.PutUint32(h[16:], 0x200)
		binary.LittleEndian.PutUint32(h[20:], s.raw)
		binary.LittleEndian.PutUint32(h[36:], s.chars)

		for j := range s.virtSize {
			img[s.raw+j] = s.fillStart + byte(j)
		}
	}

	// One debug directory entry at the start of .rdata pointing at 16
	// bytes of CodeView-ish data at .rdata+0x100.
	dbg := img[0x400:]
	binary.LittleEndian.PutUint32(dbg[12:], 2)      // IMAGE_DEBUG_TYPE_CODEVIEW
	binary.LittleEndian.PutUint32(dbg[16:], 16)     // SizeOfData
	binary.LittleEndian.PutUint32(dbg[20:], 0x2100) // AddressOfRawData
	binary.LittleEndian.PutUint32(dbg[24:], 0x500)  // PointerToRawData
	copy(img[0x500:], "RSDS-kiln-test!!")

	copy(img[0x600:], "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n")
	copy(img[fileEnd:], "fake-signature!!")

	return img
}

func TestAssembleSyntheticARM64(t *testing.T) {
	stub := syntheticStub()

	if _, err := pe.NewFile(bytes.NewReader(stub)); err != nil {
		t.Fatalf("synthetic stub is not valid for debug/pe: %v", err)
	}

	linux := randomBytes(5<<20+1, 5)
	initrd := randomBytes(2<<20+7, 6)
	base := "talos.platform=metal console=ttyAMA0 console=tty0"
	reset := base + " talos.experimental.wipe=system"

	secs := uki.Sections{
		OSRel:   []byte("NAME=\"Talos\"\n"),
		Cmdline: base,
		Uname:   "6.18.0-talos",
		PCRPKey: []byte("-----BEGIN PUBLIC KEY-----\n"),
		Linux:   uki.Blob{R: bytes.NewReader(linux), Size: int64(len(linux))},
		Initrd:  uki.Blob{R: bytes.NewReader(initrd), Size: int64(len(initrd))},
		Profiles: []uki.Profile{
			{Profile: "ID=main\nTITLE=Talos"},
			{Profile: "ID=reset\nTITLE=Reset system disk", Cmdline: reset},
		},
	}

	path, res := assembleFile(t, bytes.NewReader(stub), secs, uki.Options{})

	want := map[string][]byte{
		".osrel": secs.OSRel, ".cmdline": []byte(base), ".uname": []byte(secs.Uname), ".pcrpkey": secs.PCRPKey,
		".linux": linux, ".initrd": initrd,
		".profile": []byte("ID=main\nTITLE=Talos"), ".profile#1": []byte("ID=reset\nTITLE=Reset system disk"),
		".cmdline#1": []byte(reset),
	}
	order := []string{".text", ".rdata", ".sbat", ".osrel", ".cmdline", ".uname", ".pcrpkey", ".linux", ".initrd",
		".profile", ".profile", ".cmdline"}

	f := checkPE(t, path, "", want, order)
	defer f.Close()

	if f.Machine != pe.IMAGE_FILE_MACHINE_ARM64 {
		t.Errorf("machine %#x", f.Machine)
	}

	oh := f.OptionalHeader.(*pe.OptionalHeader64)
	if oh.SizeOfHeaders != 0x400 {
		t.Errorf("SizeOfHeaders = %#x, want grown to 0x400", oh.SizeOfHeaders)
	}

	if d := oh.DataDirectory[pe.IMAGE_DIRECTORY_ENTRY_SECURITY]; d.VirtualAddress != 0 || d.Size != 0 {
		t.Errorf("security directory = %+v, want cleared", d)
	}

	// Stub section data moved by 0x200 with the headers, debug entry too.
	img, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	for i, s := range f.Sections[:3] {
		orig := bytes.Clone(stub[0x200*(i+1) : 0x200*(i+2)])
		if i == 1 { // the debug entry's PointerToRawData moves with the data
			binary.LittleEndian.PutUint32(orig[24:], 0x700)
		}

		if s.Offset != uint32(0x200*(i+2)) || !bytes.Equal(img[s.Offset:s.Offset+0x200], orig) {
			t.Errorf("stub section %s at %#x, content moved wrongly", s.Name, s.Offset)
		}
	}

	dbgPtr := binary.LittleEndian.Uint32(img[f.Sections[1].Offset+24:])
	if dbgPtr != 0x700 || string(img[dbgPtr:dbgPtr+16]) != "RSDS-kiln-test!!" {
		t.Errorf("debug PointerToRawData = %#x, want 0x700 pointing at the debug data", dbgPtr)
	}

	if bytes.Contains(img, []byte("fake-signature!!")) {
		t.Error("old signature copied")
	}

	t.Logf("synthetic UKI %d bytes, checksum %#x", res.Size, res.Checksum)

	sum := sha256.Sum256(img)
	golden(t, "synthetic-arm64-profiles.sha256", hex.EncodeToString(sum[:])+"\n")
}
