package xfs

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// benchTree writes src to disk and returns it as Files reading from there
// and as an mkfs.xfs protofile.
func benchTree(b testing.TB, src []File) ([]File, string) {
	b.Helper()
	dir := b.TempDir()
	var files []File
	var proto strings.Builder
	proto.WriteString("/dev/null\n0 0\nd--755 0 0\n")
	// The protofile lists the tree depth first; build it from the paths.
	tree := map[string][]string{}
	isDir := map[string]bool{"": true}
	for _, f := range src {
		p := filepath.Join(dir, f.Path)
		os.MkdirAll(filepath.Dir(p), 0o755)
		parts := strings.Split(f.Path, "/")
		for i := range parts {
			parent, name := strings.Join(parts[:i], "/"), parts[i]
			key := strings.Join(parts[:i+1], "/")
			if _, seen := isDir[key]; !seen {
				tree[parent] = append(tree[parent], name)
				isDir[key] = i < len(parts)-1 || f.Mode.IsDir()
			}
		}
		if f.Mode.IsDir() {
			os.MkdirAll(p, 0o755)
			continue
		}
		rc, _ := f.Open()
		out, err := os.Create(p)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(out, rc)
		out.Close()
		path, size := p, f.Size
		files = append(files, File{Path: f.Path, Size: size, Open: func() (io.ReadCloser, error) { return os.Open(path) }})
	}
	var walk func(rel string)
	walk = func(rel string) {
		for _, name := range tree[rel] {
			key := strings.TrimPrefix(rel+"/"+name, "/")
			if isDir[key] {
				fmt.Fprintf(&proto, "%s d--755 0 0\n", name)
				walk(key)
				proto.WriteString("$\n")
			} else {
				fmt.Fprintf(&proto, "%s ---644 0 0 %s\n", name, filepath.Join(dir, key))
			}
		}
	}
	walk("")
	proto.WriteString("$\n")
	pf := filepath.Join(b.TempDir(), "proto")
	if err := os.WriteFile(pf, []byte(proto.String()), 0o644); err != nil {
		b.Fatal(err)
	}
	for _, f := range src {
		if f.Mode.IsDir() {
			files = append(files, File{Path: f.Path, Mode: fs.ModeDir | 0o755})
		}
	}
	return files, pf
}

// talosTree is a Talos-sized BOOT tree: a 17 MiB kernel, a 90 MiB
// initramfs, grub.cfg and 280 GRUB modules.
func talosTree() []File { return bootFilesSized(280, 17<<20, 90<<20) }

func allocatedBytes(b *testing.B, p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		b.Fatal(err)
	}
	return st.Blocks * 512
}

// BenchmarkWrite: this package writing the BOOT partition image.
func BenchmarkWrite(b *testing.B) {
	files, _ := benchTree(b, talosTree())
	img := filepath.Join(b.TempDir(), "boot.xfs")
	var data, written int64
	b.ResetTimer()
	for range b.N {
		out, err := os.Create(img)
		if err != nil {
			b.Fatal(err)
		}
		w := &countingFile{File: out}
		p, err := NewPlan(BootSize, files, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if err := out.Truncate(BootSize); err != nil {
			b.Fatal(err)
		}
		if err := p.Write(context.Background(), w); err != nil {
			b.Fatal(err)
		}
		out.Close()
		data, written = p.DataBytes(), w.n
	}
	b.StopTimer()
	b.ReportMetric(float64(written)/(1<<20), "MiB-written/op")
	b.ReportMetric(float64(data)/(1<<20), "MiB-data/op")
	b.ReportMetric(float64(allocatedBytes(b, img))/(1<<20), "MiB-allocated")
}

type countingFile struct {
	*os.File
	n int64
}

func (c *countingFile) WriteAt(p []byte, off int64) (int, error) {
	c.n += int64(len(p))
	return c.File.WriteAt(p, off)
}

// BenchmarkMkfsProto: what Talos runs for the same tree, mkfs.xfs -p
// protofile (Debian's xfsprogs 6.1 with lts_6.12's features, which it
// knows), on a truncated 2000 MiB image file.
func BenchmarkMkfsProto(b *testing.B) {
	testfixture.RequireTool(b, "mkfs.xfs")
	_, proto := benchTree(b, talosTree())
	img := filepath.Join(b.TempDir(), "boot.xfs")
	b.ResetTimer()
	for range b.N {
		os.Remove(img)
		f, err := os.Create(img)
		if err != nil {
			b.Fatal(err)
		}
		f.Truncate(BootSize)
		f.Close()
		out, err := exec.Command("mkfs.xfs", "-q", "-f", "-n", "ftype=1", "-L", "BOOT",
			"-m", "crc=1,finobt=1,rmapbt=1,reflink=1,inobtcount=1,bigtime=1,uuid="+bootUUID,
			"-i", "sparse=1,nrext64=1", "-p", proto, img).CombinedOutput()
		if err != nil {
			b.Fatalf("mkfs.xfs: %v\n%s", err, out)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(allocatedBytes(b, img))/(1<<20), "MiB-allocated")
}
