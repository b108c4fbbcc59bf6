package squashfs

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

const selinuxLabel = "system_u:object_r:system_state_t:s0"

// sample is the tree the writer tests write and read back.
func sample() map[string][]byte {
	big := make([]byte, 3*blockSize+17)
	_, _ = rand.Read(big[:blockSize]) // one incompressible block, stored raw

	files := map[string][]byte{
		"usr/local/bin/tool":             big,
		"usr/local/share/schematic/abcd": nil,
		"etc/cri/conf.d/x.part":          []byte("runtime\n"),
		"exact":                          bytes.Repeat([]byte("y"), blockSize),
	}

	// Enough entries to need several metadata blocks and listing runs.
	for i := range 700 {
		files[filepath.Join("many", strings.Repeat("n", i%50)+string(rune('a'+i%26))+string(rune('a'+i/26)))] = []byte{byte(i)}
	}

	return files
}

// writeSample writes sample() plus a symlink, an empty 0700 directory and
// a labelled 0400 file (and a labelled root) to a new image.
func writeSample(t *testing.T, comp Compression, files map[string][]byte) string {
	t.Helper()

	img := filepath.Join(t.TempDir(), "x.sqsh")
	// KEEP_SQSH=/path keeps the image for inspection by hand.
	if p := os.Getenv("KEEP_SQSH"); p != "" {
		img = p + "." + comp.String()
	}

	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}

	w, err := NewWriter(f, Options{Compression: comp, ModTime: time.Unix(1700000000, 0)})
	if err != nil {
		t.Fatal(err)
	}

	for name, data := range files {
		if err := w.Create(name, 0o644, bytes.NewReader(data), nil); err != nil {
			t.Fatal(err)
		}
	}

	if err := w.Symlink("usr/local/bin/alias", "tool", nil); err != nil {
		t.Fatal(err)
	}

	if err := w.Mkdir("empty", 0o700, nil); err != nil {
		t.Fatal(err)
	}

	label := map[string]string{"security.selinux": selinuxLabel}
	if err := w.Mkdir("", 0o755, map[string]string{"security.selinux": "system_u:object_r:root_t:s0"}); err != nil {
		t.Fatal(err)
	}

	if err := w.Create("usr/local/etc/talos/config.yaml", 0o400, strings.NewReader("version: v1alpha1\n"), label); err != nil {
		t.Fatal(err)
	}

	size, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	if size%4096 != 0 {
		t.Errorf("size %d not padded to 4 KiB", size)
	}

	return img
}

func TestUnsquashfsReadsOurs(t *testing.T) {
	testfixture.RequireTool(t, "unsquashfs")

	files := sample()

	for _, comp := range []Compression{Zstd, XZ} {
		t.Run(comp.String(), func(t *testing.T) {
			img := writeSample(t, comp, files)

			out, err := exec.Command("unsquashfs", "-s", img).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "Compression "+comp.String()+"\n") {
				t.Errorf("unsquashfs -s: %v, want Compression %s:\n%s", err, comp, out)
			}

			// unsquashfs -lls does not show xattrs; its stat output counts them.
			if !strings.Contains(string(out), "Xattrs are compressed") || !strings.Contains(string(out), "Number of xattr ids 2") {
				t.Errorf("superblock reports no or other xattrs:\n%s", out)
			}

			out, err = exec.Command("unsquashfs", "-lls", img).CombinedOutput()
			if err != nil {
				t.Fatalf("unsquashfs -lls: %v\n%s", err, out)
			}

			for _, want := range []string{"squashfs-root/usr/local/bin/alias -> tool", "-r-------- root/root", "drwx------ root/root"} {
				if !strings.Contains(string(out), want) {
					t.Errorf("listing lacks %q:\n%s", want, out)
				}
			}

			// As root, extract with xattrs and read the labels with
			// getfattr; otherwise without (security.* needs privilege).
			dir := filepath.Join(t.TempDir(), "out")
			args := []string{"-d", dir, img}

			if os.Geteuid() != 0 {
				args = append([]string{"-no-xattrs"}, args...)
			}

			if out, err := exec.Command("unsquashfs", args...).CombinedOutput(); err != nil {
				t.Fatalf("unsquashfs: %v\n%s", err, out)
			}

			for name, data := range files {
				got, err := os.ReadFile(filepath.Join(dir, name))
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}

				if !bytes.Equal(got, data) {
					t.Errorf("%s: %d bytes differ from the %d written", name, len(got), len(data))
				}
			}

			if os.Geteuid() == 0 {
				testfixture.RequireTool(t, "getfattr")

				out, err := exec.Command("getfattr", "--absolute-names", "-n", "security.selinux", "--only-values",
					filepath.Join(dir, "usr/local/etc/talos/config.yaml")).CombinedOutput()
				if err != nil || string(out) != selinuxLabel {
					t.Errorf("getfattr config.yaml: %q, %v; want %q", out, err, selinuxLabel)
				}
			}
		})
	}
}

func TestReaderReadsOurs(t *testing.T) {
	files := sample()

	for _, comp := range []Compression{Zstd, XZ} {
		t.Run(comp.String(), func(t *testing.T) {
			r := openImage(t, writeSample(t, comp, files))

			if r.Compression() != comp {
				t.Errorf("Compression() = %s, want %s", r.Compression(), comp)
			}

			for name, data := range files {
				got, err := fs.ReadFile(r, name)
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("%s: %d bytes, %v; want %d bytes", name, len(got), err, len(data))
				}
			}

			if target, err := r.ReadLink("usr/local/bin/alias"); err != nil || target != "tool" {
				t.Errorf("ReadLink: %q, %v", target, err)
			}

			if got, err := fs.ReadFile(r, "usr/local/bin/alias"); err != nil || len(got) != len(files["usr/local/bin/tool"]) {
				t.Errorf("reading through the symlink: %d bytes, %v", len(got), err)
			}

			if fi, err := r.Stat("empty"); err != nil || fi.Mode() != fs.ModeDir|0o700 {
				t.Errorf("Stat(empty) = %v, %v", fi, err)
			}

			x, err := r.Xattrs("usr/local/etc/talos/config.yaml")
			if err != nil || len(x) != 1 || x["security.selinux"] != selinuxLabel {
				t.Errorf("Xattrs(config.yaml) = %v, %v", x, err)
			}

			if x, err := r.Xattrs("."); err != nil || x["security.selinux"] != "system_u:object_r:root_t:s0" {
				t.Errorf("Xattrs(root) = %v, %v", x, err)
			}

			if x, err := r.Xattrs("exact"); err != nil || x != nil {
				t.Errorf("Xattrs(exact) = %v, %v; want none", x, err)
			}

			if _, err := r.Open("usr/nope"); !errorsIsNotExist(err) {
				t.Errorf("Open(usr/nope) = %v, want not exist", err)
			}
		})
	}
}

func errorsIsNotExist(err error) bool { return err != nil && os.IsNotExist(err) }

func openImage(t testing.TB, path string) *Reader {
	t.Helper()

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { f.Close() })

	fi, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}

	r, err := NewReader(f, fi.Size())
	if err != nil {
		t.Fatal(err)
	}

	return r
}

// TestReaderReadsMksquashfs reads images made by the real mksquashfs, with
// what the writer never makes: fragments, tail-end packing, duplicates,
// hard links, extended inodes, device nodes, the NFS export table and
// xattrs read from the files, in every compression Talos rootfs images
// have used and gzip.
func TestReaderReadsMksquashfs(t *testing.T) {
	testfixture.RequireTool(t, "mksquashfs")

	src := t.TempDir()
	want := map[string][]byte{}

	add := func(name string, data []byte, mode os.FileMode) {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}

		if err := os.WriteFile(p, data, mode); err != nil {
			t.Fatal(err)
		}

		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}

		want[name] = data
	}

	rnd := make([]byte, 5*blockSize+1234)
	_, _ = rand.Read(rnd)

	add("usr/lib/modules/6.1.0/kernel/fs/big.ko", rnd, 0o644)
	add("usr/lib/modules/6.1.0/modules.order", []byte("kernel/fs/big.ko\n"), 0o644)
	add("usr/lib/modules/6.1.0/modules.builtin", nil, 0o644)
	add("usr/bin/setuid", []byte("#!/bin/sh\n"), fs.ModeSetuid|0o755)
	add("dup/a", bytes.Repeat([]byte("dup"), 1000), 0o644)
	add("dup/b", bytes.Repeat([]byte("dup"), 1000), 0o644)
	add("exact", bytes.Repeat([]byte{7}, 2*blockSize), 0o644)

	for i := range 300 {
		add(filepath.Join("small", strings.Repeat("x", i%200)+string(rune('a'+i%26))+string(rune('a'+i/26))), bytes.Repeat([]byte{byte(i)}, i), 0o644)
	}

	if err := os.Link(filepath.Join(src, "dup/a"), filepath.Join(src, "dup/hard")); err != nil {
		t.Fatal(err)
	}

	want["dup/hard"] = want["dup/a"]

	if err := os.Symlink("usr/lib", filepath.Join(src, "lib")); err != nil {
		t.Fatal(err)
	}

	if err := os.Symlink("../../nowhere", filepath.Join(src, "usr/dangling")); err != nil {
		t.Fatal(err)
	}

	// A user xattr on a file (mksquashfs stores what the files carry);
	// skipped where the file system refuses user xattrs.
	haveXattr := syscall.Setxattr(filepath.Join(src, "exact"), "user.kiln", []byte("proof"), 0) == nil

	for _, comp := range []string{"zstd", "xz", "gzip"} {
		t.Run(comp, func(t *testing.T) {
			img := filepath.Join(t.TempDir(), "r.sqsh")
			args := []string{src, img, "-all-root", "-noappend", "-no-progress", "-quiet", "-comp", comp,
				"-p", "dev/null c 666 0 0 1 3", "-p", "dev d 755 0 0"}

			if out, err := exec.Command("mksquashfs", args...).CombinedOutput(); err != nil {
				t.Fatalf("mksquashfs: %v\n%s", err, out)
			}

			r := openImage(t, img)

			for name, data := range want {
				got, err := fs.ReadFile(r, name)
				if err != nil || !bytes.Equal(got, data) {
					t.Errorf("%s: %d bytes, %v; want %d bytes", name, len(got), err, len(data))
				}
			}

			// Through the lib -> usr/lib symlink, as a path into a
			// merged-/usr root is often written.
			if got, err := fs.ReadFile(r, "lib/modules/6.1.0/modules.order"); err != nil || string(got) != "kernel/fs/big.ko\n" {
				t.Errorf("through lib/: %q, %v", got, err)
			}

			if fi, err := r.Stat("usr/bin/setuid"); err != nil || fi.Mode() != fs.ModeSetuid|0o755 {
				t.Errorf("Stat(setuid) = %v, %v", fi, err)
			}

			if fi, err := r.Lstat("dev/null"); err != nil || fi.Mode()&fs.ModeCharDevice == 0 {
				t.Errorf("Lstat(dev/null) = %v, %v", fi, err)
			}

			if _, err := r.Open("usr/dangling"); !errorsIsNotExist(err) {
				t.Errorf("Open(dangling) = %v, want not exist", err)
			}

			if haveXattr {
				if x, err := r.Xattrs("exact"); err != nil || x["user.kiln"] != "proof" {
					t.Errorf("Xattrs(exact) = %v, %v", x, err)
				}
			}

			// A whole walk agrees with unsquashfs's listing.
			var walked []string

			err := fs.WalkDir(r, ".", func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}

				walked = append(walked, p)

				return nil
			})
			if err != nil {
				t.Fatal(err)
			}

			out, err := exec.Command("unsquashfs", "-l", "-d", "", img).Output()
			if err != nil {
				t.Fatal(err)
			}

			// unsquashfs lists the root as an empty name.
			listed := strings.Fields(string(out))
			if len(listed) != len(walked)-1 {
				t.Errorf("walk found %d entries, unsquashfs -l %d", len(walked), len(listed))
			}
		})
	}
}

// TestCompressedBlockShape checks the streams the kernel decompresses
// against its limits, read from a real block of each compressor.
func TestCompressedBlockShape(t *testing.T) {
	block := bytes.Repeat([]byte("kiln squashfs block shape\n"), blockSize/26+1)[:blockSize]

	t.Run("zstd", func(t *testing.T) {
		c, err := newCompressor(Zstd, 0)
		if err != nil {
			t.Fatal(err)
		}

		z, err := c.compress(block)
		if err != nil {
			t.Fatal(err)
		}

		// RFC 8878 frame header: magic, descriptor with the single-segment
		// flag (no window descriptor), a content size equal to the block.
		if binary.LittleEndian.Uint32(z) != 0xfd2fb528 {
			t.Fatalf("no zstd magic: % x", z[:4])
		}

		fhd := z[4]
		if fhd&0x20 == 0 {
			t.Fatalf("frame is not single-segment (descriptor %#x): the kernel would see a window above the block size", fhd)
		}

		if fhd>>6 != 2 || binary.LittleEndian.Uint32(z[5:]) != blockSize {
			t.Errorf("frame content size field %d / %d, want 4 bytes / %d", fhd>>6, binary.LittleEndian.Uint32(z[5:]), blockSize)
		}

		if fhd&0x04 != 0 {
			t.Errorf("frame has a checksum; mksquashfs writes none")
		}
	})

	t.Run("xz", func(t *testing.T) {
		c, err := newCompressor(XZ, 0)
		if err != nil {
			t.Fatal(err)
		}

		z, err := c.compress(block)
		if err != nil {
			t.Fatal(err)
		}

		// Stream header: magic, flags 0x00 0x01 (CRC32).
		if !bytes.HasPrefix(z, []byte{0xfd, '7', 'z', 'X', 'Z', 0, 0, 1}) {
			t.Fatalf("stream header % x, want magic and check type CRC32 (1)", z[:8])
		}

		// Block header: size byte, flags (number of filters - 1 in the
		// low bits), then filter id 0x21 (LZMA2), properties size 1, the
		// dictionary byte: 10 encodes 2^17 = 128 KiB.
		hdr := z[12:]
		flags := hdr[1]
		p := 2

		if flags&0x40 != 0 {
			p += uvarintLen(hdr[p:])
		}

		if flags&0x80 != 0 {
			p += uvarintLen(hdr[p:])
		}

		if flags&0x03 != 0 {
			t.Errorf("%d filters, want LZMA2 alone", flags&0x03+1)
		}

		if hdr[p] != 0x21 || hdr[p+1] != 1 || hdr[p+2] != 10 {
			t.Errorf("filter % x, want 21 01 0a (LZMA2, 128 KiB dictionary)", hdr[p:p+3])
		}

		// The real xz agrees.
		testfixture.RequireTool(t, "xz")

		f := filepath.Join(t.TempDir(), "b.xz")
		if err := os.WriteFile(f, z, 0o644); err != nil {
			t.Fatal(err)
		}

		out, err := exec.Command("xz", "--robot", "--list", "-vv", f).CombinedOutput()
		if err != nil || !strings.Contains(string(out), "CRC32") || !strings.Contains(string(out), "\t128 KiB") && !strings.Contains(string(out), "\t131072") {
			t.Errorf("xz --list: %v\n%s", err, out)
		}

		got, err := exec.Command("xz", "-dc", f).Output()
		if err != nil || !bytes.Equal(got, block) {
			t.Errorf("xz -dc: %d bytes, %v", len(got), err)
		}
	})
}

func uvarintLen(b []byte) int {
	for i, c := range b {
		if c&0x80 == 0 {
			return i + 1
		}
	}

	return len(b)
}

// TestKernelMountsOurs loop-mounts an image of each compression when the
// test runs as root on a kernel with squashfs: the kernel is stricter than
// unsquashfs (empty files, files of exactly one block, xattrs, the zstd
// window, the xz check type and dictionary).
func TestKernelMountsOurs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount")
	}

	if fsList, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(fsList), "squashfs") {
		t.Skip("kernel has no squashfs")
	}

	exact := bytes.Repeat([]byte("z"), blockSize)

	for _, comp := range []Compression{Zstd, XZ} {
		t.Run(comp.String(), func(t *testing.T) {
			img := writeSample(t, comp, map[string][]byte{"zero": nil, "exact": exact, "dir/plain": []byte("cfg\n")})

			mnt := t.TempDir()
			if out, err := exec.Command("mount", "-o", "loop,ro", img, mnt).CombinedOutput(); err != nil {
				t.Skipf("cannot loop-mount here: %v: %s", err, out)
			}

			defer func() { _ = exec.Command("umount", mnt).Run() }()

			if got, err := os.ReadFile(filepath.Join(mnt, "zero")); err != nil || len(got) != 0 {
				t.Errorf("zero: %q, %v", got, err)
			}

			if got, err := os.ReadFile(filepath.Join(mnt, "exact")); err != nil || !bytes.Equal(got, exact) {
				t.Errorf("exact: %d bytes, %v", len(got), err)
			}

			if got, err := os.ReadFile(filepath.Join(mnt, "usr/local/bin/alias")); err == nil || !os.IsNotExist(err) {
				t.Errorf("dangling alias: %d bytes, %v", len(got), err)
			}

			buf := make([]byte, 128)

			n, err := syscall.Getxattr(filepath.Join(mnt, "usr/local/etc/talos/config.yaml"), "security.selinux", buf)
			if err != nil || string(buf[:n]) != selinuxLabel {
				t.Errorf("security.selinux: %q, %v", buf[:max(n, 0)], err)
			}
		})
	}
}

func FuzzReader(f *testing.F) {
	for _, comp := range []Compression{Zstd, XZ} {
		var buf writerAtBuffer

		w, err := NewWriter(&buf, Options{Compression: comp})
		if err != nil {
			f.Fatal(err)
		}

		_ = w.Create("a/b", 0o644, strings.NewReader("hello"), map[string]string{"security.selinux": "x"})
		_ = w.Symlink("a/c", "b", nil)

		if _, err := w.Close(); err != nil {
			f.Fatal(err)
		}

		f.Add(buf.b)
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := NewReader(bytes.NewReader(data), int64(len(data)))
		if err != nil {
			return
		}

		n := 0

		_ = fs.WalkDir(r, ".", func(p string, d fs.DirEntry, err error) error {
			if err != nil || n > 1000 {
				return fs.SkipAll
			}

			n++

			_, _ = r.Xattrs(p)

			if d.Type().IsRegular() {
				if f, err := r.Open(p); err == nil {
					_, _ = io.Copy(io.Discard, io.LimitReader(f, 1<<22))
				}
			}

			return nil
		})
	})
}

// writerAtBuffer is an in-memory io.WriterAt.
type writerAtBuffer struct{ b []byte }

func (w *writerAtBuffer) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(w.b) {
		w.b = append(w.b, make([]byte, end-len(w.b))...)
	}

	return copy(w.b[off:], p), nil
}
