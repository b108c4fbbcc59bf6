package compress

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/klauspost/compress/zstd"
)

// benchImage returns a disk image to compress: $KILN_BENCH_IMAGE if set,
// else a synthetic 2246 MiB sparse image shaped like a Talos sd-boot disk:
// a 100 MiB incompressible UKI at 1 MiB (compressed kernel + initramfs),
// 16 MiB of x86 kernel modules (compressible), and a META ADV block.
func benchImage(b *testing.B) string {
	b.Helper()
	if p := os.Getenv("KILN_BENCH_IMAGE"); p != "" {
		return p
	}
	p := filepath.Join(b.TempDir(), "disk.raw")
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := f.Truncate(2246 << 20); err != nil {
		b.Fatal(err)
	}
	blob := make([]byte, 100<<20)
	rand.Read(blob)
	f.WriteAt(blob, 2<<20)
	var mods []byte
	filepathWalk(testfixture.ModulesDir(), func(b []byte) bool {
		mods = append(mods, b...)
		return len(mods) < 16<<20
	})
	f.WriteAt(mods, 110<<20)
	f.WriteAt([]byte("ZK<-adv-block"), 2102<<20)
	return p
}

func filepathWalk(root string, fn func([]byte) bool) {
	filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil && !fn(b) {
			return filepath.SkipAll
		}
		return nil
	})
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(p []byte) (int, error) { c.n += int64(len(p)); return len(p), nil }

func BenchmarkCompress(b *testing.B) {
	img := benchImage(b)
	st, _ := os.Stat(img)
	for _, tc := range []struct {
		name string
		f    Format
		opts Options
	}{
		{"zstd-default", Zstd, Options{}},
		{"zstd-best-8MiB", Zstd, Options{ZstdLevel: zstd.SpeedBestCompression, BlockSize: 8 << 20}},
		{"zstd-best-16MiB", Zstd, Options{ZstdLevel: zstd.SpeedBestCompression, BlockSize: 16 << 20}},
		{"zstd-better-8MiB", Zstd, Options{ZstdLevel: zstd.SpeedBetterCompression, BlockSize: 8 << 20}},
		{"zstd-better-16MiB", Zstd, Options{ZstdLevel: zstd.SpeedBetterCompression, BlockSize: 16 << 20}},
		{"xz", XZ, Options{}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var cw countWriter
			for b.Loop() {
				in, err := os.Open(img)
				if err != nil {
					b.Fatal(err)
				}
				cw.n = 0
				if err := Compress(context.Background(), &cw, in, tc.f, tc.opts); err != nil {
					b.Fatal(err)
				}
				in.Close()
			}
			b.SetBytes(st.Size())
			b.ReportMetric(float64(cw.n), "out-bytes")
		})
	}
}

// BenchmarkCLI runs the reference tools on the same image.
func BenchmarkCLI(b *testing.B) {
	img := benchImage(b)
	st, _ := os.Stat(img)
	for _, args := range [][]string{
		{"zstd", "-T0", "-3"}, {"zstd", "-T0", "-6"}, {"zstd", "-T0", "-7"}, {"zstd", "-T0", "-18"},
		{"xz", "-T0", "-6"},
	} {
		b.Run(fmt.Sprint(args), func(b *testing.B) {
			if _, err := exec.LookPath(args[0]); err != nil {
				b.Skip(err)
			}
			var cw countWriter
			for b.Loop() {
				cw.n = 0
				cmd := exec.Command(args[0], append(args[1:], "-c", img)...)
				cmd.Stdout = &cw
				cmd.Stderr = io.Discard
				if err := cmd.Run(); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(st.Size())
			b.ReportMetric(float64(cw.n), "out-bytes")
		})
	}
}
