package storage

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
)

// randomSparseFile writes a file of size bytes with data at random places
// (some of it zeros written out, so allocated), holes elsewhere, and
// returns its content.
func randomSparseFile(t *testing.T, path string, size int64, rng *rand.Rand) []byte {
	t.Helper()

	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	want := make([]byte, size)

	if size > 0 {
		for range rng.IntN(6) {
			off := rng.Int64N(size)
			n := min(size-off, 1+rng.Int64N(3*chunkSize))
			p := want[off : off+n]

			if rng.IntN(4) > 0 { // else zeros, written out
				for i := range p {
					p[i] = byte(rng.Uint32())
				}
			}

			if _, err := f.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
		}
	}

	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}

	return want
}

// The parallel pass gives what one goroutine gives, and what the bytes
// streamed give, byte for byte, for any number of workers and any layout
// of data and holes: the chunks' CRCs and the ETag.
func TestDigestChunksAsSequential(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(17, 1))

	sizes := []int64{0, 1, chunkSize - 1, chunkSize, chunkSize + 1, 2 * chunkSize, 7*chunkSize + 4321, 12 * chunkSize}
	for range 12 {
		sizes = append(sizes, rng.Int64N(20*chunkSize))
	}

	for i, size := range sizes {
		path := filepath.Join(dir, strconv.Itoa(i))
		want := randomSparseFile(t, path, size, rng)

		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}

		seq, err := digestSequential(ctx, f, size, true)
		if err != nil {
			t.Fatal(err)
		}

		s := newStreamDigest()
		s.Write(want) //nolint:errcheck // never fails
		streamed := s.sum()

		if seq.etag != streamed.etag || !bytes.Equal(seq.crcs, streamed.crcs) {
			t.Fatalf("size %d: sequential pass %s, streamed %s", size, seq.etag, streamed.etag)
		}

		for _, workers := range []int{1, 2, 3, 8} {
			for _, wantETag := range []bool{true, false} {
				got, err := digestChunks(ctx, f, size, wantETag, workers)
				if err != nil {
					t.Fatal(err)
				}

				etag := seq.etag
				if !wantETag {
					etag = ""
				}

				if got.etag != etag || !bytes.Equal(got.crcs, seq.crcs) || got.sha256 != "" {
					t.Fatalf("size %d, %d workers, ETag %v: %s (CRCs equal %v), want %s",
						size, workers, wantETag, got.etag, bytes.Equal(got.crcs, seq.crcs), etag)
				}
			}
		}

		f.Close()
	}
}

// countdownCtx is a context that ends after its Err was asked a number of
// times: a cancellation that lands in the middle of a pass, every time.
type countdownCtx struct {
	context.Context //nolint:containedctx // the parent

	left atomic.Int64
}

func (c *countdownCtx) Err() error {
	if c.left.Add(-1) < 0 {
		return context.Canceled
	}

	return nil
}

// A pass stops when its context ends, on every worker.
func TestDigestChunksCancelled(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dense")

	if err := os.WriteFile(path, bytes.Repeat([]byte{0x5a}, 16*chunkSize), 0o600); err != nil {
		t.Fatal(err)
	}

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	for _, workers := range []int{1, 2, 4} {
		ctx := &countdownCtx{Context: context.Background()}
		ctx.left.Store(5)

		if _, err := digestChunks(ctx, f, 16*chunkSize, true, workers); !errors.Is(err, context.Canceled) {
			t.Fatalf("%d workers: pass cancelled after 5 chunks = %v", workers, err)
		}

		// Each worker stops at its next chunk: a few checks past the end,
		// not one per chunk.
		if left := ctx.left.Load(); left < -int64(workers) {
			t.Fatalf("%d workers: the context was checked %d times after it ended", workers, -left)
		}
	}
}

// readBytes is what this process has read by read(2) and pread(2), page
// cache included (/proc/self/io's rchar).
func readBytes(t *testing.T) int64 {
	t.Helper()

	f, err := os.Open("/proc/self/io")
	if err != nil {
		t.Skipf("no /proc/self/io: %v", err)
	}
	defer f.Close()

	lines := bufio.NewScanner(f)
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), "rchar: "); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}

			return n
		}
	}

	t.Skip("no rchar in /proc/self/io")

	return 0
}

// The parallel pass reads the chunks that hold data, never a hole: a
// 1 GiB file with 4 MiB of data in it reads the 6 chunks they touch.
func TestDigestChunksReadsNoHoles(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "sparse")

	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	const size = 1 << 30

	data := bytes.Repeat([]byte{0xc3}, 3*chunkSize)
	if _, err := f.WriteAt(data[:chunkSize], chunkSize/2); err != nil { // across two chunks
		t.Fatal(err)
	}

	if _, err := f.WriteAt(data, 700*chunkSize+5); err != nil { // across four
		t.Fatal(err)
	}

	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}

	if _, err := f.Seek(0, seekData); err != nil {
		t.Skipf("no SEEK_DATA here: %v", err)
	}

	before := readBytes(t)

	d, err := digestChunks(ctx, f, size, true, 2)
	if err != nil {
		t.Fatal(err)
	}

	// A page for /proc/self/io's own read.
	if read := readBytes(t) - before; read > 6*chunkSize+4096 {
		t.Fatalf("the pass read %d bytes, want the 6 chunks that hold data", read)
	}

	if len(d.crcs) != 4*size/chunkSize {
		t.Fatalf("%d CRCs", len(d.crcs)/4)
	}
}

// BenchmarkDigestChunks is the digest pass alone over a 162 MiB ISO in the
// page cache, on one goroutine and on digestWorkers.
func BenchmarkDigestChunks(b *testing.B) {
	const size = 162 << 20

	path := filepath.Join(b.TempDir(), "iso")
	data := make([]byte, size)

	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}

	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}

	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()

	for _, workers := range []int{1, digestWorkers()} {
		b.Run("workers="+strconv.Itoa(workers), func(b *testing.B) {
			b.SetBytes(size)

			for range b.N {
				if _, err := digestChunks(context.Background(), f, size, true, workers); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
