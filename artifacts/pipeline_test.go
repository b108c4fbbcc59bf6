package artifacts

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
	"testing/iotest"
)

type failingWriter struct{ after int }

func (w *failingWriter) Write(p []byte) (int, error) {
	if w.after <= 0 {
		return 0, errors.New("disk full")
	}

	w.after--

	return len(p), nil
}

// TestPipeline: the stages copy every byte in order, and pass on the
// reader's error and the writer's.
func TestPipeline(t *testing.T) {
	data := make([]byte, 5<<20+12345)
	rand.Read(data) //nolint:errcheck // never fails

	var pool chunkPool

	ra := newReadAhead(iotest.HalfReader(bytes.NewReader(data)), &pool)

	var out bytes.Buffer
	if n, err := pipeCopy(t.Context(), &out, ra, &pool); err != nil || n != int64(len(data)) || !bytes.Equal(out.Bytes(), data) {
		t.Fatalf("pipeCopy = %d, %v; same bytes: %v", n, err, bytes.Equal(out.Bytes(), data))
	}

	ra.Close()

	broken := newReadAhead(io.MultiReader(bytes.NewReader(data), iotest.ErrReader(errors.New("connection reset"))), &pool)
	if _, err := io.Copy(io.Discard, broken); err == nil || err.Error() != "connection reset" {
		t.Fatalf("read-ahead of a failing reader = %v, want its error", err)
	}

	broken.Close()

	if _, err := pipeCopy(t.Context(), &failingWriter{after: 2}, bytes.NewReader(data), &pool); err == nil || err.Error() != "disk full" {
		t.Fatalf("pipeCopy to a failing writer = %v, want its error", err)
	}

	// Closed early, the read-ahead stops.
	early := newReadAhead(bytes.NewReader(data), &pool)
	if _, err := io.ReadFull(early, make([]byte, 100)); err != nil {
		t.Fatal(err)
	}

	early.Close()
}
