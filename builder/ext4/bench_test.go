package ext4

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/builder/disk"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

// benchTree is a ~300 MB image cache: a few large layers, many small
// configs and manifests.
var benchTree = treeSpec{seed: 300, big: []int64{100 << 20, 90<<20 + 17, 60 << 20, 30<<20 + 5, 20 << 20}, small: 200}

// BenchmarkImageCache builds a ~300 MB cache (run by hand:
// go test -run '^$' -bench ImageCache -benchtime 3x ./builder/ext4/).
//
//   - Build: the standalone image through a recording wrapper. It reports
//     MB/s of content, the number of WriteAt calls, and the share of bytes
//     written in calls of at least 1 MiB, and fails if content went out in
//     small writes.
//   - Disk4K: the raw disk (4096-byte sectors) with the cache as its
//     IMAGECACHE partition via disk.Write; e2fsck -fn checks the result once.
func BenchmarkImageCache(b *testing.B) {
	src := filepath.Join(b.TempDir(), "cache")
	makeTree(b, src, benchTree)
	tr, err := scan(src)
	if err != nil {
		b.Fatal(err)
	}
	b.Logf("%d files, %d bytes, Size %d (Talos rule %d)", tr.files, tr.content, sizeFor(tr), talosSize(tr.content))

	b.Run("Build", func(b *testing.B) {
		out := filepath.Join(b.TempDir(), "cache.ext4")
		b.SetBytes(tr.content)
		for b.Loop() {
			f, err := os.Create(out)
			if err != nil {
				b.Fatal(err)
			}
			size := sizeFor(tr)
			if err := f.Truncate(size); err != nil {
				b.Fatal(err)
			}
			rec := &recorder{File: f}
			if err := buildAt(context.Background(), rec, 0, size, tr, "IMAGECACHE", newOptions(nil)); err != nil {
				b.Fatal(err)
			}
			f.Close()
			n, total, big, small := rec.stats()
			b.ReportMetric(float64(n), "writes/op")
			b.ReportMetric(float64(small), "small-writes/op")
			b.ReportMetric(100*float64(big)/float64(total), "%bytes-in-≥1MiB-writes")
			// Everything but small files, file tails and metadata goes out
			// in writes of at least 1 MiB.
			if float64(big) < 0.95*float64(tr.content) {
				b.Errorf("only %d of %d content bytes written in ≥ 1 MiB writes (%d writes, %d small)", big, tr.content, n, small)
			}
		}
	})

	b.Run("Disk4K", func(b *testing.B) {
		out := filepath.Join(b.TempDir(), "disk.raw")
		part, err := Partition(src)
		if err != nil {
			b.Fatal(err)
		}
		p := disk.Params{
			SectorSize: 4096,
			EFISize:    2 * MiB,
			EFI:        disk.ContentFunc(func(context.Context, disk.Target) error { return nil }),
			Extra:      []disk.Partition{part},
		}
		p.Size = 1*MiB + p.EFISize + disk.METASize + part.Size + 1*MiB
		b.SetBytes(tr.content)
		for b.Loop() {
			f, err := os.Create(out)
			if err != nil {
				b.Fatal(err)
			}
			if err := disk.Write(context.Background(), f, p); err != nil {
				b.Fatal(err)
			}
			f.Close()
		}
		b.StopTimer()
		testfixture.RequireTool(b, "e2fsck")
		tb, _ := disk.Layout(p)
		e, _ := tb.Partition(disk.LabelIMAGECACHE)
		f, err := os.Open(out)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		img := filepath.Join(b.TempDir(), "p.ext4")
		extractRange(b, f, e.Offset, e.Size, img)
		b.Logf("e2fsck -fn: %s", lastLines(run(b, "e2fsck", "-fn", img), 1))
	})
}
