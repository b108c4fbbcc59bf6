package storage_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/storage"
)

// A raw disk image as the builder writes it: 2 GiB, sparse, with its data
// (GPT, boot partition) at the start and the backup GPT at the end.
const (
	sparseSize = 2 << 30
	sparseData = 32 << 20
)

func writeSparse(b *testing.B, a storage.Assets, key string, data []byte) storage.AssetWriter {
	b.Helper()

	w, err := a.Create(context.Background(), key)
	if err != nil {
		b.Fatal(err)
	}

	if _, err := w.WriteAt(data, 1<<20); err != nil {
		b.Fatal(err)
	}

	if _, err := w.WriteAt(data[:33*512], sparseSize-33*512); err != nil {
		b.Fatal(err)
	}

	return w
}

// BenchmarkCommitOpenSparse is a build's path through the cache: Commit of
// a 2 GiB sparse disk image, then the Open that hands it to the client.
func BenchmarkCommitOpenSparse(b *testing.B) {
	ctx := context.Background()
	a, err := storage.NewFSAssets(b.TempDir(), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}

	data := make([]byte, sparseData)
	rand.Read(data) //nolint:errcheck // never fails

	b.SetBytes(sparseSize)

	var cpu time.Duration

	for range b.N {
		b.StopTimer()
		w := writeSparse(b, a, "sparse-disk", data)
		b.StartTimer()

		start := processCPU(b)

		if err := w.Commit(); err != nil {
			b.Fatal(err)
		}

		f, err := a.Open(ctx, "sparse-disk")
		if err != nil {
			b.Fatal(err)
		}

		f.Close()

		cpu += processCPU(b) - start
	}

	reportCPU(b, cpu)
}

// processCPU is the process's user+system CPU time: steadier than wall
// time on a loaded machine, and it counts the kernel's work (zero-filling
// the page cache for reads of holes) too.
func processCPU(b *testing.B) time.Duration {
	b.Helper()

	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}

	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, cpu time.Duration) {
	b.ReportMetric(float64(cpu.Microseconds())/1000/float64(b.N), "cpu-ms/op")
}

// BenchmarkOpenSparseAfterStart is the first Open of that image in a fresh
// process, which verifies it.
func BenchmarkOpenSparseAfterStart(b *testing.B) {
	data := make([]byte, sparseData)
	rand.Read(data) //nolint:errcheck // never fails

	benchOpenAfterStart(b, sparseSize, writeSparse, data)
}

// BenchmarkSHA256Sparse is the first Asset.SHA256 of that image, which the
// API's sha256 fields ask for: the holes hashed as zeros, once.
func BenchmarkSHA256Sparse(b *testing.B) {
	ctx := context.Background()
	dir := b.TempDir()
	logger := slog.New(slog.DiscardHandler)

	a, err := storage.NewFSAssets(dir, 0, logger)
	if err != nil {
		b.Fatal(err)
	}

	data := make([]byte, sparseData)
	rand.Read(data) //nolint:errcheck // never fails

	b.SetBytes(sparseSize)

	var cpu time.Duration

	for range b.N {
		b.StopTimer()

		if err := writeSparse(b, a, "sparse-disk", data).Commit(); err != nil {
			b.Fatal(err)
		}

		f, err := a.Open(ctx, "sparse-disk")
		if err != nil {
			b.Fatal(err)
		}

		b.StartTimer()

		start := processCPU(b)

		if _, err := f.SHA256(ctx); err != nil {
			b.Fatal(err)
		}

		cpu += processCPU(b) - start

		f.Close()
	}

	reportCPU(b, cpu)
}

// The assets of issue 17's bench: an ISO with a 68 MB initramfs (162 MiB,
// every byte data, written at offsets through File as the ISO writer does)
// and a raw disk (2 GiB sparse, 77 MiB of data in a few extents).
const (
	isoSize       = 162 << 20
	diskSize      = 2 << 30
	diskDataBytes = 77 << 20
)

// writeISO writes a dense asset through File, so that Commit digests the
// file (not what Write saw).
func writeISO(b *testing.B, a storage.Assets, key string, data []byte) storage.AssetWriter {
	b.Helper()

	w, err := a.Create(context.Background(), key)
	if err != nil {
		b.Fatal(err)
	}

	if _, err := w.File().Write(data); err != nil {
		b.Fatal(err)
	}

	return w
}

// writeDisk writes the raw disk's layout: GPT, 12 MiB of an ESP, 63 MiB of
// a boot partition, 2 MiB of a state partition, and the backup GPT at the
// end.
func writeDisk(b *testing.B, a storage.Assets, key string, data []byte) storage.AssetWriter {
	b.Helper()

	w, err := a.Create(context.Background(), key)
	if err != nil {
		b.Fatal(err)
	}

	extents := []struct{ off, n int64 }{
		{0, 34 * 512},
		{1 << 20, 12 << 20},
		{105 << 20, 63 << 20},
		{1 << 30, 2 << 20},
		{diskSize - 33*512, 33 * 512},
	}

	var used int64

	for _, e := range extents {
		if _, err := w.WriteAt(data[used:used+e.n], e.off); err != nil {
			b.Fatal(err)
		}

		used += e.n
	}

	return w
}

func randomBytes(n int) []byte {
	data := make([]byte, n)
	rand.Read(data) //nolint:errcheck // never fails

	return data
}

// benchCommit times Commit alone (digest, renames) of assets that write
// writes untimed; the page cache holds them dirty, as after a build. Each
// is a new key, as a build's is: a rename onto an existing file would make
// ext4 write the new one out first (auto_da_alloc). The one before is
// removed untimed.
func benchCommit(b *testing.B, size int64, write func(*testing.B, storage.Assets, string, []byte) storage.AssetWriter, data []byte) {
	dir := b.TempDir()

	a, err := storage.NewFSAssets(dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}

	b.SetBytes(size)
	b.ResetTimer()

	var cpu time.Duration

	for i := range b.N {
		b.StopTimer()

		key := fmt.Sprintf("commit-asset-%d", i)
		if i > 0 {
			prev := assetPath(dir, fmt.Sprintf("commit-asset-%d", i-1))
			os.Remove(prev)           //nolint:errcheck // untimed cleanup
			os.Remove(prev + ".json") //nolint:errcheck // as above
		}

		w := write(b, a, key, data)
		b.StartTimer()

		start := processCPU(b)

		if err := w.Commit(); err != nil {
			b.Fatal(err)
		}

		cpu += processCPU(b) - start
	}

	reportCPU(b, cpu)
}

// BenchmarkCommitISO is the Commit of a freshly written 162 MiB ISO.
func BenchmarkCommitISO(b *testing.B) {
	benchCommit(b, isoSize, writeISO, randomBytes(isoSize))
}

// BenchmarkCommitDisk is the Commit of a freshly written 2 GiB raw disk
// holding 77 MiB of data.
func BenchmarkCommitDisk(b *testing.B) {
	benchCommit(b, diskSize, writeDisk, randomBytes(diskDataBytes+1<<16))
}

// BenchmarkOpenISOAfterStart is the first Open of the ISO in a fresh
// process, which checks the CRC of every chunk.
func BenchmarkOpenISOAfterStart(b *testing.B) {
	benchOpenAfterStart(b, isoSize, writeISO, randomBytes(isoSize))
}

// benchOpenAfterStart measures the first Open, in a fresh process, of an
// asset of size written by write from data.
func benchOpenAfterStart(b *testing.B, size int64, write func(*testing.B, storage.Assets, string, []byte) storage.AssetWriter, data []byte) {
	ctx := context.Background()
	dir := b.TempDir()
	logger := slog.New(slog.DiscardHandler)

	a, err := storage.NewFSAssets(dir, 0, logger)
	if err != nil {
		b.Fatal(err)
	}

	if err := write(b, a, "opened-asset", data).Commit(); err != nil {
		b.Fatal(err)
	}

	b.SetBytes(size)
	b.ResetTimer()

	var cpu time.Duration

	for range b.N {
		b.StopTimer()
		fresh, err := storage.NewFSAssets(dir, 0, logger)
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()

		start := processCPU(b)

		f, err := fresh.Open(ctx, "opened-asset")
		if err != nil {
			b.Fatal(err)
		}

		f.Close()

		cpu += processCPU(b) - start
	}

	reportCPU(b, cpu)
}

// BenchmarkWriteStreamed is an asset written only by Write (an extracted
// 68 MB initramfs, a UKI) in 32 KiB pieces, as io.Copy writes, then
// committed: the digest is computed as it is written.
func BenchmarkWriteStreamed(b *testing.B) {
	const size = 68 << 20

	data := randomBytes(size)
	dir := b.TempDir()

	a, err := storage.NewFSAssets(dir, 0, slog.New(slog.DiscardHandler))
	if err != nil {
		b.Fatal(err)
	}

	b.SetBytes(size)
	b.ResetTimer()

	var cpu time.Duration

	for i := range b.N {
		if i > 0 { // a new key each time, as in benchCommit
			b.StopTimer()
			prev := assetPath(dir, fmt.Sprintf("streamed-asset-%d", i-1))
			os.Remove(prev)           //nolint:errcheck // untimed cleanup
			os.Remove(prev + ".json") //nolint:errcheck // as above
			b.StartTimer()
		}

		start := processCPU(b)

		w, err := a.Create(context.Background(), fmt.Sprintf("streamed-asset-%d", i))
		if err != nil {
			b.Fatal(err)
		}

		for p := data; len(p) > 0; p = p[min(len(p), 32<<10):] {
			if _, err := w.Write(p[:min(len(p), 32<<10)]); err != nil {
				b.Fatal(err)
			}
		}

		if err := w.Commit(); err != nil {
			b.Fatal(err)
		}

		cpu += processCPU(b) - start
	}

	reportCPU(b, cpu)
}
