package server

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/storage"
)

// A cached asset with holes is served byte for byte, its holes' zeros from
// memory (see deadlineWriter.ReadFrom): whole, by ranges that start and end
// in holes and in data, by several ranges at once, and with the trailing
// hole of a disk image's backup GPT region.
func TestSparseAssetDownload(t *testing.T) {
	ctx := context.Background()

	assets, err := storage.NewFSAssets(t.TempDir(), 0, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	const size = 9<<20 + 4321

	want := make([]byte, size)

	w, err := assets.Create(ctx, "sparse-download")
	if err != nil {
		t.Fatal(err)
	}

	for i, off := range []int64{0, 1<<20 - 7, 3<<20 + 12345, 6 << 20, size - 5000} {
		data := bytes.Repeat([]byte{byte(i + 1), 0x5a, 0xc3}, 700)
		copy(want[off:], data)

		if _, err := w.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}

	if err := w.File().Truncate(size); err != nil {
		t.Fatal(err)
	}

	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}

	dl := deadlines{read: 10 * time.Second, write: 10 * time.Second}
	srv := &http.Server{ReadHeaderTimeout: time.Minute, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w, r, done := dl.wrap(w, r, false)
		defer done()

		a, err := assets.Open(r.Context(), "sparse-download")
		if err != nil {
			http.Error(w, err.Error(), 500)

			return
		}
		defer a.Close()

		if _, sparse := a.(holeReporter); !sparse {
			http.Error(w, "the asset reports no holes", 500)

			return
		}

		http.ServeContent(&statusRecorder{ResponseWriter: w}, r, "", time.Time{}, a)
	})}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	go srv.Serve(lis) //nolint:errcheck

	t.Cleanup(func() { srv.Close() })

	get := func(rng string) (*http.Response, []byte) {
		t.Helper()

		req, _ := http.NewRequest("GET", "http://"+lis.Addr().String()+"/", nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}

		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()

		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatal(err)
		}

		return resp, body
	}

	if resp, body := get(""); resp.StatusCode != 200 || !bytes.Equal(body, want) {
		t.Fatalf("whole: %d, %d bytes, equal %v", resp.StatusCode, len(body), bytes.Equal(body, want))
	}

	for _, r := range [][2]int{
		{10, 2<<20 + 5},          // data into a hole
		{2 << 20, 3<<20 + 20000}, // hole into data
		{1<<20 + 100, 2 << 20},   // inside a hole
		{6<<20 + 1, size - 1},    // data, hole, data to the end
		{size - 100, size - 1},   // the last bytes
		{4 << 20, 5<<20 + 10},    // across a chunk boundary in a hole
	} {
		resp, body := get(fmt.Sprintf("bytes=%d-%d", r[0], r[1]))
		if resp.StatusCode != http.StatusPartialContent || !bytes.Equal(body, want[r[0]:r[1]+1]) {
			t.Fatalf("range %v: %d, %d bytes", r, resp.StatusCode, len(body))
		}
	}

	resp, body := get("bytes=0-99,2097152-3158000")

	_, params, err := mime.ParseMediaType(resp.Header.Get("Content-Type"))
	if err != nil || resp.StatusCode != http.StatusPartialContent {
		t.Fatalf("multipart: %d %v", resp.StatusCode, err)
	}

	parts := multipart.NewReader(bytes.NewReader(body), params["boundary"])

	for _, r := range [][2]int{{0, 99}, {2097152, 3158000}} {
		p, err := parts.NextPart()
		if err != nil {
			t.Fatal(err)
		}

		got, _ := io.ReadAll(p)
		if !bytes.Equal(got, want[r[0]:r[1]+1]) || !strings.HasPrefix(p.Header.Get("Content-Range"), fmt.Sprintf("bytes %d-%d/", r[0], r[1])) {
			t.Fatalf("part %v: %d bytes, %s", r, len(got), p.Header.Get("Content-Range"))
		}
	}

}
