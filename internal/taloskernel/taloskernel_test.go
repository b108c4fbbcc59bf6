package taloskernel

import (
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/kiln-dev/kiln/builder/cpio"
	"github.com/kiln-dev/kiln/internal/squashfs"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

func newc(t *testing.T, files map[string][]byte) []byte {
	t.Helper()

	var buf bytes.Buffer

	w := cpio.NewWriter(&buf)

	for name, data := range files {
		if err := w.WriteHeader(&cpio.Header{Name: name, Mode: cpio.TypeReg | 0o644, Size: int64(len(data)), ModTime: time.Unix(0, 0)}); err != nil {
			t.Fatal(err)
		}

		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	return buf.Bytes()
}

func zstdOf(t *testing.T, data []byte) []byte {
	t.Helper()

	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}

	return enc.EncodeAll(data, nil)
}

func xzOf(t *testing.T, data []byte, check byte) []byte {
	t.Helper()

	var buf bytes.Buffer

	w, err := xz.WriterConfig{CheckSum: check}.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	return buf.Bytes()
}

type memWriterAt struct{ b []byte }

func (w *memWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(w.b) {
		w.b = append(w.b, make([]byte, end-len(w.b))...)
	}

	return copy(w.b[off:], p), nil
}

func sqsh(t *testing.T, c squashfs.Compression) []byte {
	t.Helper()

	var img memWriterAt

	w, err := squashfs.NewWriter(&img, squashfs.Options{Compression: c})
	if err != nil {
		t.Fatal(err)
	}

	if err := w.Create("f", 0o644, strings.NewReader("layer"), nil); err != nil {
		t.Fatal(err)
	}

	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}

	return img.b
}

// gzipSqsh is a real gzip squashfs, made by mksquashfs: what kiln wrote
// before, and what the Talos kernel cannot mount.
func gzipSqsh(t *testing.T) []byte {
	t.Helper()

	testfixture.RequireTool(t, "mksquashfs")

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("layer"), 0o644); err != nil {
		t.Fatal(err)
	}

	img := filepath.Join(t.TempDir(), "g.sqsh")
	if out, err := exec.Command("mksquashfs", dir, img, "-comp", "gzip", "-noappend", "-quiet").CombinedOutput(); err != nil {
		t.Fatalf("mksquashfs: %v\n%s", err, out)
	}

	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}

	return data
}

func TestCheckInitramfs(t *testing.T) {
	ucode := newc(t, map[string][]byte{"kernel/x86/microcode/GenuineIntel.bin": []byte("u")})
	base := zstdOf(t, newc(t, map[string][]byte{"init": []byte("i"), "rootfs.sqsh": sqsh(t, squashfs.Zstd)}))

	for _, tc := range []struct {
		name  string
		data  []byte
		want  string // "" for accepted
		count int    // squashfs images found
	}{
		{"zstd release, zstd layers", cat(ucode, base, zstdOf(t, newc(t, map[string][]byte{"0.sqsh": sqsh(t, squashfs.Zstd)}))), "", 2},
		{"xz layers in an xz CRC32 archive", cat(base, xzOf(t, newc(t, map[string][]byte{"0.sqsh": sqsh(t, squashfs.XZ), "1.sqsh": sqsh(t, squashfs.XZ)}), xz.CRC32)), "", 3},
		{"gzip layer", cat(base, zstdOf(t, newc(t, map[string][]byte{"0.sqsh": gzipSqsh(t)}))), "0.sqsh is a gzip squashfs", 2},
		{"gzip segment", cat(base, gzipOf(t, newc(t, map[string][]byte{"0.sqsh": sqsh(t, squashfs.Zstd)}))), "gzip-compressed", 1},
		{"xz CRC64 segment", cat(base, xzOf(t, newc(t, map[string][]byte{"0.sqsh": sqsh(t, squashfs.XZ)}), xz.CRC64)), "check type 4", 1},
		{"not a squashfs", cat(base, zstdOf(t, newc(t, map[string][]byte{"0.sqsh": []byte("no")}))), "no squashfs superblock", 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := CheckInitramfs(bytes.NewReader(tc.data), int64(len(tc.data)))

			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && (err == nil || !errors.Is(err, ErrUnsupported) || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("got %v, want ErrUnsupported saying %q", err, tc.want)
			}

			if rep == nil || len(rep.Layers) != tc.count {
				t.Errorf("report %+v, want %d squashfs images", rep, tc.count)
			}
		})
	}
}

func cat(parts ...[]byte) []byte { return bytes.Join(parts, nil) }

func gzipOf(t *testing.T, data []byte) []byte {
	t.Helper()

	var buf bytes.Buffer

	w := gzip.NewWriter(&buf)
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}

	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	return buf.Bytes()
}
