package xfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// patternReader yields size pseudo-random bytes from seed, 8 at a time.
type patternReader struct {
	rng  *rand.PCG
	left int64
	buf  [8]byte
	n    int // unread bytes left in buf
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	p = p[:min(int64(len(p)), r.left)]
	i := 0
	for ; i < len(p) && r.n > 0; i++ {
		p[i] = r.buf[8-r.n]
		r.n--
	}
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], r.rng.Uint64())
	}
	if i < len(p) {
		binary.LittleEndian.PutUint64(r.buf[:], r.rng.Uint64())
		r.n = 8
		for ; i < len(p); i++ {
			p[i] = r.buf[8-r.n]
			r.n--
		}
	}
	r.left -= int64(len(p))
	return len(p), nil
}

func (r *patternReader) Close() error { return nil }

func genFile(path string, size int64, seed uint64) File {
	return File{Path: path, Size: size, Open: func() (io.ReadCloser, error) {
		return &patternReader{rng: rand.NewPCG(seed, 0x78667321), left: size}, nil
	}}
}

func bytesFile(path string, b []byte) File {
	return File{Path: path, Size: int64(len(b)), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}}
}

// bootFiles is a BOOT-shaped tree: kernel and initramfs of tens of MB,
// grub.cfg, a GRUB module directory of a few hundred files (a leaf
// directory), a block directory and a few levels of nesting.
func bootFiles(modules int) []File { return bootFilesSized(modules, 3<<20+123, 9<<20+7) }

func bootFilesSized(modules int, kernel, initramfs int64) []File {
	files := []File{
		genFile("A/vmlinuz", kernel, 1),
		genFile("A/initramfs.xz", initramfs, 2),
		bytesFile("grub/grub.cfg", []byte("set default=\"A - Talos v1.13.0\"\n\nset timeout=3\n")),
		{Path: "grub/fonts", Mode: fs.ModeDir | 0o700},
		genFile("grub/fonts/unicode.pf2", 2<<20, 3),
		bytesFile("grub/x86_64-efi/empty", nil),
		genFile("deep/a/b/c/d/e/file", 5000, 4),
	}
	for i := range modules {
		files = append(files, genFile(fmt.Sprintf("grub/i386-pc/module_%03d_with_a_longer_name.mod", i), int64(100+i*37), uint64(100+i)))
	}
	for i := range 40 { // a block directory
		files = append(files, genFile(fmt.Sprintf("grub/locale/l%02d.mo", i), int64(i*11), uint64(1000+i)))
	}
	return files
}

func buildImage(t testing.TB, size int64, files []File, opts Options) string {
	t.Helper()
	img := filepath.Join(t.TempDir(), "boot.xfs")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Build(context.Background(), f, size, files, opts); err != nil {
		t.Fatal(err)
	}
	return img
}

// run runs a reader tool and returns its combined output, failing on a
// non-zero exit.
func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func fileSum(tb testing.TB, f File) string {
	tb.Helper()
	if f.Mode.IsDir() {
		return "dir"
	}
	rc, err := f.Open()
	if err != nil {
		tb.Fatal(err)
	}
	defer rc.Close()
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		tb.Fatal(err)
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}
