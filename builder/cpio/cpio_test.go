package cpio

import (
	"bytes"
	"compress/gzip"
	"crypto/rand"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

var epoch = time.Unix(1700000000, 0).UTC()

// entry is one archive member in a test table.
type entry struct {
	name, link, data string
	mode             uint32
}

var sample = []entry{
	{name: "etc", mode: TypeDir | 0o755},
	{name: "etc/hostname", mode: TypeReg | 0o644, data: "kiln\n"},
	{name: "etc/empty", mode: TypeReg | 0o600},
	{name: "etc/odd", mode: TypeReg | 0o640, data: "12345"},
	{name: "etc/link", mode: TypeSymlink | 0o777, link: "hostname"},
	{name: "bin", mode: TypeDir | 0o755},
	{name: "bin/tool", mode: TypeReg | 0o755, data: strings.Repeat("x", 3<<20+3)},
}

func writeSample(t testing.TB, entries []entry) []byte {
	t.Helper()

	var buf bytes.Buffer

	w := NewWriter(&buf)
	for _, e := range entries {
		h := &Header{Name: e.name, Mode: e.mode, ModTime: epoch, Size: int64(len(e.data)), Linkname: e.link}
		if err := w.WriteHeader(h); err != nil {
			t.Fatalf("WriteHeader %s: %v", e.name, err)
		}

		if e.data != "" {
			if _, err := io.Copy(w, strings.NewReader(e.data)); err != nil {
				t.Fatalf("write %s: %v", e.name, err)
			}
		}
	}

	if err := w.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	return buf.Bytes()
}

func readAll(t testing.TB, r io.Reader) []entry {
	t.Helper()

	var out []entry

	cr := NewReader(r)

	for {
		h, err := cr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}

		if err != nil {
			t.Fatalf("Next: %v", err)
		}

		data, err := io.ReadAll(cr)
		if err != nil {
			t.Fatalf("read %s: %v", h.Name, err)
		}

		e := entry{name: h.Name, mode: h.Mode, link: h.Linkname}
		if h.Mode&TypeMask == TypeReg {
			e.data = string(data)
		}

		out = append(out, e)
	}
}

func TestRoundTrip(t *testing.T) {
	data := writeSample(t, sample)

	if len(data)%512 != 0 {
		t.Errorf("archive length %d is not a multiple of 512", len(data))
	}

	got := readAll(t, bytes.NewReader(data))
	if len(got) != len(sample) {
		t.Fatalf("got %d entries, want %d", len(got), len(sample))
	}

	for i := range got {
		if got[i] != sample[i] {
			t.Errorf("entry %d: got %+v, want %+v", i, got[i].name, sample[i].name)
		}
	}

	if again := writeSample(t, sample); !bytes.Equal(again, data) {
		t.Error("same entries gave different bytes")
	}
}

func TestWriterErrors(t *testing.T) {
	w := NewWriter(io.Discard)
	if err := w.WriteHeader(&Header{Name: "a", Size: 2}); err != nil {
		t.Fatal(err)
	}

	if _, err := w.Write([]byte("abc")); !errors.Is(err, ErrWriteTooLong) {
		t.Errorf("long write: got %v, want ErrWriteTooLong", err)
	}

	if err := w.WriteHeader(&Header{Name: "b"}); err == nil {
		t.Error("header after short data: got nil error")
	}

	if err := NewWriter(io.Discard).WriteHeader(&Header{Name: Trailer}); err == nil {
		t.Error("trailer name accepted")
	}

	if err := NewWriter(io.Discard).WriteHeader(&Header{Name: "l", Mode: TypeSymlink}); err == nil {
		t.Error("symlink without target accepted")
	}
}

func needTool(t *testing.T, name string) string {
	t.Helper()

	testfixture.RequireTool(t, name)

	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatal(err)
	}

	return p
}

// TestGNUCpioReadsOurs lists and extracts our archive with GNU cpio.
func TestGNUCpioReadsOurs(t *testing.T) {
	cpioBin := needTool(t, "cpio")
	data := writeSample(t, sample)

	cmd := exec.Command(cpioBin, "-t", "--quiet")
	cmd.Stdin = bytes.NewReader(data)

	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -t: %v", err)
	}

	var want []string
	for _, e := range sample {
		want = append(want, e.name)
	}

	if got := strings.Fields(string(out)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("cpio -t: got %v, want %v", got, want)
	}

	dir := t.TempDir()
	cmd = exec.Command(cpioBin, "-i", "-d", "--quiet", "--no-absolute-filenames", "--preserve-modification-time")
	cmd.Dir = dir
	cmd.Stdin = bytes.NewReader(data)

	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -i: %v: %s", err, out)
	}

	for _, e := range sample {
		p := filepath.Join(dir, e.name)

		fi, err := os.Lstat(p)
		if err != nil {
			t.Errorf("%s: %v", e.name, err)
			continue
		}

		switch e.mode & TypeMask {
		case TypeReg:
			got, _ := os.ReadFile(p)
			if string(got) != e.data {
				t.Errorf("%s: content differs (%d bytes, want %d)", e.name, len(got), len(e.data))
			}

			if fi.Mode().Perm() != os.FileMode(e.mode&0o777) {
				t.Errorf("%s: mode %v, want %o", e.name, fi.Mode(), e.mode&0o777)
			}

			if !fi.ModTime().Equal(epoch) {
				t.Errorf("%s: mtime %v, want %v", e.name, fi.ModTime(), epoch)
			}
		case TypeSymlink:
			if got, _ := os.Readlink(p); got != e.link {
				t.Errorf("%s: target %q, want %q", e.name, got, e.link)
			}
		case TypeDir:
			if !fi.IsDir() {
				t.Errorf("%s: not a directory", e.name)
			}
		}
	}
}

// TestReaderReadsGNUCpio reads an archive GNU cpio made from a real tree.
func TestReaderReadsGNUCpio(t *testing.T) {
	cpioBin := needTool(t, "cpio")
	dir := t.TempDir()

	for _, e := range sample {
		p := filepath.Join(dir, e.name)

		var err error

		switch e.mode & TypeMask {
		case TypeDir:
			err = os.MkdirAll(p, 0o755)
		case TypeSymlink:
			err = os.Symlink(e.link, p)
		default:
			err = os.WriteFile(p, []byte(e.data), os.FileMode(e.mode&0o777))
		}

		if err != nil {
			t.Fatal(err)
		}
	}

	var names []string
	for _, e := range sample {
		names = append(names, e.name)
	}

	sort.Strings(names)

	cmd := exec.Command(cpioBin, "-o", "-H", "newc", "--quiet", "--reproducible")
	cmd.Dir = dir
	cmd.Stdin = strings.NewReader(strings.Join(names, "\n") + "\n")

	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("cpio -o: %v", err)
	}

	got := readAll(t, bytes.NewReader(out))
	byName := map[string]entry{}

	for _, e := range got {
		byName[e.name] = e
	}

	if len(got) != len(sample) {
		t.Errorf("got %d entries, want %d", len(got), len(sample))
	}

	for _, e := range sample {
		g, ok := byName[e.name]
		if !ok {
			t.Errorf("%s missing", e.name)
			continue
		}

		if g.mode&TypeMask != e.mode&TypeMask || g.data != e.data || g.link != e.link {
			t.Errorf("%s: got mode %o link %q %d bytes, want mode %o link %q %d bytes",
				e.name, g.mode, g.link, len(g.data), e.mode, e.link, len(e.data))
		}
	}
}

func TestSegments(t *testing.T) {
	plain := writeSample(t, sample[:2])
	inner := writeSample(t, sample[2:4])

	var z bytes.Buffer

	zw, err := zstd.NewWriter(&z, zstd.WithEncoderCRC(true))
	if err != nil {
		t.Fatal(err)
	}

	if _, err := zw.Write(inner); err != nil {
		t.Fatal(err)
	}

	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}

	var g bytes.Buffer

	gw := gzip.NewWriter(&g)
	if _, err := gw.Write(writeSample(t, sample[4:])); err != nil {
		t.Fatal(err)
	}

	if err := gw.Close(); err != nil {
		t.Fatal(err)
	}

	// Uncompressed, zstd, zstd again right after, 7 zero bytes, gzip.
	var all bytes.Buffer

	all.Write(plain)
	all.Write(z.Bytes())
	all.Write(z.Bytes())
	all.Write(make([]byte, 7))
	all.Write(g.Bytes())

	segs, err := Segments(bytes.NewReader(all.Bytes()), int64(all.Len()))
	if err != nil {
		t.Fatalf("Segments: %v", err)
	}

	trailerEnd := int64(bytes.Index(plain, []byte(Trailer)) + len(Trailer) + 1)

	want := []Segment{
		{0, trailerEnd + pad4(trailerEnd), None},
		{int64(len(plain)), int64(z.Len()), Zstd},
		{int64(len(plain) + z.Len()), int64(z.Len()), Zstd},
		{int64(len(plain)+2*z.Len()) + 7, int64(g.Len()), Gzip},
	}

	if len(segs) != len(want) {
		t.Fatalf("got %+v, want %+v", segs, want)
	}

	for i := range want {
		if segs[i] != want[i] {
			t.Errorf("segment %d: got %+v, want %+v", i, segs[i], want[i])
		}
	}
}

// TestSegmentsXz delimits xz streams as Talos writes them (xz -C crc32 -0
// -e, which has no sizes in its block headers, and multi-threaded xz,
// which has), as ulikunitz/xz writes them, and with stream padding,
// followed by zstd: each segment must end where the next begins.
func TestSegmentsXz(t *testing.T) {
	testfixture.RequireTool(t, "xz")

	archive := writeSample(t, sample[:5])

	// Segments does not decompress xz, so the payload need not be cpio:
	// 300 KB of noise makes several LZMA2 chunks, some stored raw.
	big := make([]byte, 300<<10)
	_, _ = rand.Read(big)
	big = append(big, bytes.Repeat(archive, 100)...)

	xzCLI := func(args ...string) []byte {
		cmd := exec.Command("xz", args...)
		cmd.Stdin = bytes.NewReader(big)

		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("xz %v: %v", args, err)
		}

		return out
	}

	var ul bytes.Buffer

	uw, err := xz.WriterConfig{CheckSum: xz.CRC32}.NewWriter(&ul)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := uw.Write(archive); err != nil {
		t.Fatal(err)
	}

	if err := uw.Close(); err != nil {
		t.Fatal(err)
	}

	var z bytes.Buffer

	zw, _ := zstd.NewWriter(&z)
	_, _ = zw.Write(archive)
	_ = zw.Close()

	parts := [][]byte{
		xzCLI("-C", "crc32", "-0", "-e", "-z", "-c"),
		xzCLI("-C", "crc64", "-6", "-T", "2", "--block-size=100000", "-z", "-c"),
		ul.Bytes(),
		z.Bytes(),
	}

	var all bytes.Buffer

	var want []Segment

	for i, p := range parts {
		want = append(want, Segment{Offset: int64(all.Len()), Size: int64(len(p)), Compression: []Compression{Xz, Xz, Xz, Zstd}[i]})
		all.Write(p)

		if i == 1 {
			all.Write(make([]byte, 8)) // stream padding
		}
	}

	segs, err := Segments(bytes.NewReader(all.Bytes()), int64(all.Len()))
	if err != nil {
		t.Fatalf("Segments: %v", err)
	}

	if !slices.Equal(segs, want) {
		t.Errorf("got %+v, want %+v", segs, want)
	}

	if _, err := Segments(bytes.NewReader(parts[0][:len(parts[0])-5]), int64(len(parts[0])-5)); err == nil {
		t.Error("a truncated xz stream was delimited")
	}
}

func FuzzReader(f *testing.F) {
	f.Add(writeSample(f, sample[:5]))
	f.Add([]byte("070701"))
	f.Add([]byte("07070100000001000081a4000000000000000000000001" +
		"6553f1000000000500000000000000000000000000000000000000020000000061\x00\x00\x00"))

	f.Fuzz(func(t *testing.T, data []byte) {
		cr := NewReader(bytes.NewReader(data))

		for range 10000 {
			h, err := cr.Next()
			if err != nil {
				break
			}

			if h.Name == "" {
				t.Fatal("empty name accepted")
			}

			if _, err := io.Copy(io.Discard, cr); err != nil {
				break
			}
		}

		if cr.Offset() > int64(len(data)) {
			t.Fatalf("offset %d beyond input %d", cr.Offset(), len(data))
		}

		_, _ = Segments(bytes.NewReader(data), int64(len(data)))
	})
}
