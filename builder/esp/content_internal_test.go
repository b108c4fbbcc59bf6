package esp

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCopyRunFallback: when copy_file_range refuses (EXDEV between file
// systems: the source under the test's temp dir, the image on /dev/shm's
// tmpfs), the bytes go through user space to exactly the run's place: none
// before it, none past it.
func TestCopyRunFallback(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789abcdef"), 7777)

	srcPath := filepath.Join(t.TempDir(), "src")
	if err := os.WriteFile(srcPath, content, 0o644); err != nil {
		t.Fatal(err)
	}

	shm, err := os.MkdirTemp("/dev/shm", "kiln-esp-")
	if err != nil {
		t.Skipf("no /dev/shm for a second file system: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(shm) })

	var a, b unix.Stat_t
	if unix.Stat(srcPath, &a) != nil || unix.Stat(shm, &b) != nil || a.Dev == b.Dev {
		t.Skip("the temp dir and /dev/shm are one file system: copy_file_range would not refuse")
	}

	r, err := os.Open(srcPath)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()

	out, err := os.Create(filepath.Join(shm, "image"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()

	const off = 4096

	image := bytes.Repeat([]byte{0xee}, off+len(content)+4096)
	if _, err := out.WriteAt(image, 0); err != nil {
		t.Fatal(err)
	}

	n, err := copyRun(context.Background(), out, off, r, int64(len(content)), nil)
	if err != nil || n != int64(len(content)) {
		t.Fatalf("copyRun = %d, %v; want %d, nil", n, err, len(content))
	}

	got, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}

	want := append(append(image[:off:off], content...), image[off+len(content):]...)
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}

		t.Fatalf("the image differs from byte %d (the run is at %d..%d)", i, off, off+len(content))
	}
}

// TestWriteContentRuns: a WriteAt file in one run is written in place; in
// several (which a fresh file system never gives) through a scratch file,
// each run at its place.
func TestWriteContentRuns(t *testing.T) {
	content := bytes.Repeat([]byte("0123456789abcdef"), 1000)
	out, err := os.Create(filepath.Join(t.TempDir(), "image"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()

	f := File{Path: "x", Size: int64(len(content)), WriteAt: func(_ context.Context, w *os.File, off int64) error {
		_, err := w.WriteAt(content, off)
		return err
	}}
	runs := []run{{at: 0, off: 40960, len: 5000}, {at: 5000, off: 8192, len: int64(len(content)) - 5000}}
	if err := writeContent(context.Background(), out, f, runs); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 64<<10)
	if _, err := out.ReadAt(got, 0); err != nil && !errors.Is(err, io.EOF) {
		t.Fatal(err)
	}
	if !bytes.Equal(got[40960:40960+5000], content[:5000]) || !bytes.Equal(got[8192:8192+len(content)-5000], content[5000:]) {
		t.Fatal("runs not where go-diskfs put them")
	}

	if err := writeContent(context.Background(), out, f, runs[:1]); err == nil {
		t.Fatal("runs shorter than the file: no error")
	}
}
