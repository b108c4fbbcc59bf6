package esp_test

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/internal/kcopy"
)

// TestBuildSameFromSectionsAndWriteAt: a file given as a section of a file
// (copied in the kernel) or written in place by its WriteAt gives the image
// a reader gives, byte for byte.
func TestBuildSameFromSectionsAndWriteAt(t *testing.T) {
	files, want := testTree()
	ref, _ := build(t, files, esp.Options{})
	refBytes, err := os.ReadFile(ref)
	if err != nil {
		t.Fatal(err)
	}

	const name = "EFI/Linux/Talos-v1.13.0.efi"
	data := want[name]
	src := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(src, append([]byte("before"), data...), 0o600); err != nil {
		t.Fatal(err)
	}
	sf, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer sf.Close()

	var calls int
	for mode, f := range map[string]esp.File{
		"section": {Path: name, Size: int64(len(data)), Open: func() (io.ReadCloser, error) {
			return kcopy.SectionCloser{SectionReader: io.NewSectionReader(sf, 6, int64(len(data)))}, nil
		}},
		"WriteAt": {Path: name, Size: int64(len(data)), WriteAt: func(_ context.Context, out *os.File, off int64) error {
			calls++
			_, err := out.WriteAt(data, off)
			return err
		}},
	} {
		t.Run(mode, func(t *testing.T) {
			var fs []esp.File
			for _, g := range files {
				if g.Path == name {
					g = f
				}
				fs = append(fs, g)
			}
			img, _ := build(t, fs, esp.Options{})
			got, err := os.ReadFile(img)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(got, refBytes) {
				t.Fatal("the image differs from the one built from readers")
			}
		})
	}
	if calls != 1 {
		t.Fatalf("WriteAt called %d times, want once", calls)
	}

	bad := esp.File{Path: name, Size: 1, Open: files[0].Open, WriteAt: func(context.Context, *os.File, int64) error { return nil }}
	if _, err := esp.RequiredSize([]esp.File{bad}, esp.Options{}); err == nil {
		t.Fatal("both Open and WriteAt: no error")
	}
}
