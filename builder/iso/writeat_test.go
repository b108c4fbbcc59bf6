package iso_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/internal/kcopy"
	"github.com/kiln-dev/kiln/builder/iso"
)

// TestWriteAtAndCopyFromTree: a tree file written in place by its WriteAt,
// and the ESP's copy of it taken from its extent (in the kernel, within the
// output), give the image that readers give, byte for byte; other files as
// sections of a file too.
func TestWriteAtAndCopyFromTree(t *testing.T) {
	dir := t.TempDir()
	bt := fakeTree(t, dir)
	ukiName := "EFI/Linux/Talos-" + talosVer + ".efi"
	data := bt.bytes[ukiName]
	opts := esp.Options{ModTime: modTime}

	write := func(name string, files []iso.File, espFiles []esp.File) []byte {
		t.Helper()
		size, err := esp.RequiredSize(espFiles, opts)
		if err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		_, err = iso.Write(context.Background(), f, iso.Params{
			VolumeID: iso.VolumeID(talosVer), VolumeSetID: iso.Label(talosVer), Files: files,
			ESPSize: size, ModTime: modTime, TempDir: dir,
			BuildESP: func(ctx context.Context, out *os.File, offset, size int64) error {
				_, err := esp.BuildAt(ctx, out, offset, size, espFiles, opts)
				return err
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(f.Name())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	// The reference: every tree file by a reader (no Source metadata).
	var ref []iso.File
	for _, f := range bt.iso {
		if f.Source != "" {
			src := f.Source
			f.Source, f.Open = "", func() (io.ReadCloser, error) { return os.Open(src) }
		}
		ref = append(ref, f)
	}
	want := write("ref.iso", ref, bt.esp)

	var (
		written *os.File
		at      int64
	)
	files := append([]iso.File(nil), ref...)
	espFiles := append([]esp.File(nil), bt.esp...)
	for i, f := range files {
		switch f.Path {
		case ukiName:
			files[i].Open = nil
			files[i].WriteAt = func(_ context.Context, out *os.File, off int64) error {
				written, at = out, off
				_, err := out.WriteAt(data, off)
				return err
			}
		case "EFI/BOOT/BOOTX64.EFI":
			b := bt.bytes[f.Path]
			src := filepath.Join(dir, "padded")
			if err := os.WriteFile(src, append([]byte("pad"), b...), 0o600); err != nil {
				t.Fatal(err)
			}
			sf, err := os.Open(src)
			if err != nil {
				t.Fatal(err)
			}
			defer sf.Close()
			files[i].Open = func() (io.ReadCloser, error) {
				return kcopy.SectionCloser{SectionReader: io.NewSectionReader(sf, 3, int64(len(b)))}, nil
			}
		}
	}
	for i, f := range espFiles {
		if f.Path == ukiName {
			espFiles[i].Open = func() (io.ReadCloser, error) {
				if written == nil {
					return nil, errors.New("the ESP is built before the tree is written")
				}
				return kcopy.SectionCloser{SectionReader: io.NewSectionReader(written, at, int64(len(data)))}, nil
			}
		}
	}
	if got := write("writeat.iso", files, espFiles); !bytes.Equal(got, want) {
		t.Fatalf("image of %d bytes differs from the one from readers (%d bytes)", len(got), len(want))
	}

	bad := append([]iso.File(nil), files...)
	bad[0].Source = "x"
	if _, err := iso.Write(context.Background(), nil, iso.Params{VolumeID: "X", Files: bad, ESPSize: 512,
		BuildESP: func(context.Context, *os.File, int64, int64) error { return nil }}); err == nil {
		t.Fatal("a file with Source and another way: no error")
	}
}
