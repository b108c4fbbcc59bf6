package uki_test

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/builder/uki"
)

// TestAssembleAtParts writes the same UKI with Assemble from whole readers
// and with AssembleAt from parts (file sections with and without their Sum,
// an in-memory part, odd lengths, so a Sum lands after an odd offset and
// must be read instead) at an offset of a file holding other bytes: the
// bytes are the same, the checksum right, and the bytes around untouched.
func TestAssembleAtParts(t *testing.T) {
	need(t, debianStub)

	stub, err := os.Open(debianStub)
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()

	dir := t.TempDir()
	kernel := randomBytes(2<<20+1, 4)
	initrd := randomBytes(5<<20+7, 5)
	appended := randomBytes(4097, 6)

	// The release files, with other bytes around the sections used.
	kpath, ipath := filepath.Join(dir, "kernel"), filepath.Join(dir, "initrd")
	if err := os.WriteFile(kpath, append(append([]byte("xx"), kernel...), "yy"...), 0o600); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(ipath, append(initrd, appended...), 0o600); err != nil {
		t.Fatal(err)
	}

	kf, err := os.Open(kpath)
	if err != nil {
		t.Fatal(err)
	}
	defer kf.Close()

	inf, err := os.Open(ipath)
	if err != nil {
		t.Fatal(err)
	}
	defer inf.Close()

	fx := newFixture(t, kernel)
	whole := append(append([]byte(nil), initrd...), appended...)
	fx.secs.Initrd = uki.Blob{R: bytes.NewReader(whole), Size: int64(len(whole))}

	var want bytes.Buffer

	wantRes, err := uki.Assemble(t.Context(), stub, fx.secs, struct{ io.Writer }{&want}, uki.Options{StripSymbols: true})
	if err != nil {
		t.Fatal(err)
	}

	img := want.Bytes()
	binaryPutChecksum(img, wantRes.Checksum)

	sumOf := func(r io.ReaderAt, off, n int64) *uki.Sum {
		s, err := uki.SumOf(t.Context(), r, off, n)
		if err != nil {
			t.Fatal(err)
		}

		return &s
	}

	ksec := io.NewSectionReader(kf, 2, int64(len(kernel)))
	isec := io.NewSectionReader(inf, 0, int64(len(initrd)))

	for name, secs := range map[string]uki.Sections{
		"sums": {
			Linux: uki.Blob{Size: int64(len(kernel)), Parts: []uki.Part{{R: ksec, Sum: sumOf(kf, 2, int64(len(kernel)))}}},
			Initrd: uki.Blob{Size: int64(len(whole)), Parts: []uki.Part{
				{R: isec, Sum: sumOf(inf, 0, int64(len(initrd)))},
				{R: io.NewSectionReader(bytes.NewReader(appended), 0, int64(len(appended)))},
			}},
		},
		"no sums": {
			Linux: uki.Blob{Size: int64(len(kernel)), Parts: []uki.Part{{R: ksec}}},
			Initrd: uki.Blob{Size: int64(len(whole)), Parts: []uki.Part{
				{R: isec}, {R: io.NewSectionReader(inf, int64(len(initrd)), int64(len(appended)))},
			}},
		},
		"sum after an odd offset": {
			Linux: uki.Blob{Size: int64(len(kernel)), Parts: []uki.Part{
				{R: io.NewSectionReader(kf, 2, 1)},
				{R: io.NewSectionReader(kf, 3, int64(len(kernel))-1), Sum: sumOf(kf, 3, int64(len(kernel))-1)},
			}},
			Initrd: uki.Blob{Size: int64(len(whole)), Parts: []uki.Part{{R: io.NewSectionReader(inf, 0, int64(len(whole))), Sum: sumOf(inf, 0, int64(len(whole)))}}},
		},
	} {
		t.Run(name, func(t *testing.T) {
			s := fx.secs
			s.Linux, s.Initrd = secs.Linux, secs.Initrd

			size, err := uki.Size(stub, s, uki.Options{StripSymbols: true})
			if err != nil || size != int64(len(img)) {
				t.Fatalf("Size = %d, %v; want %d", size, err, len(img))
			}

			out, err := os.Create(filepath.Join(t.TempDir(), "out"))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()

			const at = 12345 * 2048

			if _, err := out.WriteAt(bytes.Repeat([]byte{0xaa}, at+len(img)+100), 0); err != nil {
				t.Fatal(err)
			}

			res, err := uki.AssembleAt(t.Context(), stub, s, out, at, uki.Options{StripSymbols: true})
			if err != nil {
				t.Fatal(err)
			}

			if res.Size != int64(len(img)) || res.Checksum != wantRes.Checksum || !res.ChecksumWritten {
				t.Fatalf("Result %d bytes, checksum %#x (written %v); want %d, %#x", res.Size, res.Checksum, res.ChecksumWritten, len(img), wantRes.Checksum)
			}

			got, err := os.ReadFile(out.Name())
			if err != nil {
				t.Fatal(err)
			}

			if !bytes.Equal(got[at:at+len(img)], img) {
				t.Fatal("AssembleAt's image differs from Assemble's")
			}

			if !bytes.Equal(got[:at], bytes.Repeat([]byte{0xaa}, at)) || !bytes.Equal(got[at+len(img):], bytes.Repeat([]byte{0xaa}, 100)) {
				t.Fatal("bytes outside the image changed")
			}

			if peChecksum(img) != res.Checksum {
				t.Fatalf("checksum %#x, recomputed %#x", res.Checksum, peChecksum(img))
			}
		})
	}

	bad := fx.secs
	bad.Initrd = uki.Blob{Size: int64(len(whole)), Parts: []uki.Part{{R: isec}}}

	if _, err := uki.Size(stub, bad, uki.Options{StripSymbols: true}); err == nil {
		t.Fatal("parts shorter than the size: no error")
	}
}

func binaryPutChecksum(img []byte, sum uint32) {
	peOff := int(img[0x3c]) | int(img[0x3d])<<8 | int(img[0x3e])<<16 | int(img[0x3f])<<24
	f := peOff + 4 + 20 + 64
	img[f], img[f+1], img[f+2], img[f+3] = byte(sum), byte(sum>>8), byte(sum>>16), byte(sum>>24)
}
