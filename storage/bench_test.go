package storage_test

import (
	"context"
	"crypto/rand"
	"log/slog"
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
	ctx := context.Background()
	dir := b.TempDir()
	logger := slog.New(slog.DiscardHandler)

	a, err := storage.NewFSAssets(dir, 0, logger)
	if err != nil {
		b.Fatal(err)
	}

	data := make([]byte, sparseData)
	rand.Read(data) //nolint:errcheck // never fails

	if err := writeSparse(b, a, "sparse-disk", data).Commit(); err != nil {
		b.Fatal(err)
	}

	b.SetBytes(sparseSize)
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

		f, err := fresh.Open(ctx, "sparse-disk")
		if err != nil {
			b.Fatal(err)
		}

		f.Close()

		cpu += processCPU(b) - start
	}

	reportCPU(b, cpu)
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
