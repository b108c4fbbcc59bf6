package compress

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

// sparseFile makes a file of size bytes, mostly holes, with random and
// text data at a few offsets (including at the very end).
func sparseFile(t testing.TB, dir string, size int64) string {
	t.Helper()
	p := filepath.Join(dir, "disk.raw")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	rnd := make([]byte, 3<<20+17)
	rand.Read(rnd)
	text := bytes.Repeat([]byte("EFI/Linux/Talos-v1.13.efi loader.conf timeout 10\n"), 100000)
	for _, w := range []struct {
		off int64
		b   []byte
	}{
		{0, []byte("EFI PART")},
		{1 << 20, rnd},
		{5<<20 + 3, text},
		{size/2 + 12345, rnd[:1<<20]},
		{size - 4096, rnd[:4096]},
	} {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func fileSum(t testing.TB, p string) [32]byte {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func compressFile(t testing.TB, src, dst string, f Format, opts Options) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if err := Compress(context.Background(), out, in, f, opts); err != nil {
		t.Fatal(err)
	}
}

func TestRoundTripTools(t *testing.T) {
	dir := t.TempDir()
	src := sparseFile(t, dir, 300<<20+4096)
	want := fileSum(t, src)
	for _, tc := range []struct {
		f    Format
		tool string
		opts Options
	}{
		{Zstd, "zstd", Options{}},
		{Zstd, "zstd", Options{Concurrency: 1, ZstdLevel: zstd.SpeedFastest}},
		{XZ, "xz", Options{}},
		{XZ, "xz", Options{Concurrency: 3, BlockSize: 5 << 20}},
	} {
		testfixture.RequireTool(t, tc.tool)
		dst := filepath.Join(dir, "out"+tc.f.Ext())
		compressFile(t, src, dst, tc.f, tc.opts)
		if out, err := exec.Command(tc.tool, "-t", dst).CombinedOutput(); err != nil {
			t.Fatalf("%s -t: %v\n%s", tc.tool, err, out)
		}
		plain := filepath.Join(dir, "plain")
		if out, err := exec.Command("sh", "-c", tc.tool+" -dc "+dst+" > "+plain).CombinedOutput(); err != nil {
			t.Fatalf("%s -d: %v\n%s", tc.tool, err, out)
		}
		if got := fileSum(t, plain); got != want {
			t.Errorf("%s %+v: decompressed content differs", tc.f, tc.opts)
		}
		st, _ := os.Stat(dst)
		t.Logf("%s %+v: %d bytes", tc.f, tc.opts, st.Size())
		os.Remove(plain)
	}
}

// TestReaderSource covers non-file sources and the Go decoders
// (including ulikunitz reading concatenated xz streams).
func TestReaderSource(t *testing.T) {
	data := make([]byte, 9<<20+5)
	rand.Read(data[:3<<20])
	copy(data[6<<20:], bytes.Repeat([]byte("kiln "), 100000))
	for _, f := range []Format{Zstd, XZ} {
		var buf bytes.Buffer
		if err := Compress(context.Background(), &buf, bytes.NewReader(data), f, Options{BlockSize: 2 << 20}); err != nil {
			t.Fatal(err)
		}
		var r io.Reader
		switch f {
		case Zstd:
			d, err := zstd.NewReader(&buf)
			if err != nil {
				t.Fatal(err)
			}
			defer d.Close()
			r = d
		case XZ:
			d, err := xz.NewReader(&buf)
			if err != nil {
				t.Fatal(err)
			}
			r = d
		}
		got, err := io.ReadAll(r)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if !bytes.Equal(got, data) {
			t.Errorf("%s: round trip differs (%d vs %d bytes)", f, len(got), len(data))
		}
	}
	// Empty input.
	for _, f := range []Format{Zstd, XZ} {
		var buf bytes.Buffer
		if err := Compress(context.Background(), &buf, bytes.NewReader(nil), f, Options{}); err != nil {
			t.Fatalf("%s empty: %v", f, err)
		}
	}
}

func TestErrors(t *testing.T) {
	if err := Compress(context.Background(), io.Discard, bytes.NewReader(nil), "gz", Options{}); !errors.Is(err, ErrUnknownFormat) {
		t.Errorf("err = %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for _, f := range []Format{Zstd, XZ} {
		if err := Compress(ctx, io.Discard, bytes.NewReader(make([]byte, 1<<20)), f, Options{}); !errors.Is(err, context.Canceled) {
			t.Errorf("%s canceled: err = %v", f, err)
		}
	}
	wantErr := errors.New("disk full")
	for _, f := range []Format{Zstd, XZ} {
		err := Compress(context.Background(), failWriter{wantErr}, bytes.NewReader(make([]byte, 30<<20)), f, Options{})
		if !errors.Is(err, wantErr) {
			t.Errorf("%s write error: err = %v", f, err)
		}
	}
}

type failWriter struct{ err error }

func (w failWriter) Write([]byte) (int, error) { return 0, w.err }

func TestSourceHoles(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "sparse")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	f.Truncate(64 << 20)
	f.WriteAt([]byte{1}, 40<<20)
	s := newSource(f)
	buf := make([]byte, 1<<20)
	var holes, data, total int
	for {
		n, zero, err := s.next(buf)
		if err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		total += n
		if zero {
			holes++
		} else {
			data++
		}
	}
	if total != 64<<20 {
		t.Fatalf("read %d bytes", total)
	}
	// The file system may allocate more than the written byte, but most of
	// the file must be reported as holes without being read.
	if holes < 48 || data < 1 {
		t.Errorf("holes %d, data chunks %d", holes, data)
	}
}
