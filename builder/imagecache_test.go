package builder

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"
)

// TestTarTreeReproducible: the same tree written at another time, under
// another umask, tars to the same bytes, with fixed modes and time. (No
// test of this package runs in parallel: the umask is this test's.)
func TestTarTreeReproducible(t *testing.T) {
	write := func(umask int, mtime time.Time) []byte {
		defer syscall.Umask(syscall.Umask(umask))

		dir := t.TempDir()
		for name, data := range map[string]string{"index.json": "{}", "blobs/sha256/ab": "blob", "oci-layout": "layout"} {
			p := filepath.Join(dir, filepath.FromSlash(name))
			if err := os.MkdirAll(filepath.Dir(p), 0o777); err != nil {
				t.Fatal(err)
			}

			if err := os.WriteFile(p, []byte(data), 0o666); err != nil {
				t.Fatal(err)
			}

			if err := os.Chtimes(p, mtime, mtime); err != nil {
				t.Fatal(err)
			}
		}

		var buf bytes.Buffer
		if err := tarTree(t.Context(), &buf, dir); err != nil {
			t.Fatal(err)
		}

		return buf.Bytes()
	}

	a := write(0o022, time.Unix(1, 0))
	b := write(0o077, time.Now())

	if !bytes.Equal(a, b) {
		t.Fatal("the same tree gave two tars")
	}

	tr := tar.NewReader(bytes.NewReader(a))

	var names []string

	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}

		if err != nil {
			t.Fatal(err)
		}

		names = append(names, h.Name)
		wantMode := int64(0o644)
		if h.Typeflag == tar.TypeDir {
			wantMode = 0o755
		}

		if h.Mode != wantMode || !h.ModTime.Equal(time.Unix(SourceDateEpoch, 0)) || h.Uid != 0 || h.Uname != "" {
			t.Errorf("%s: mode %o, time %v, owner %d %q", h.Name, h.Mode, h.ModTime, h.Uid, h.Uname)
		}
	}

	if want := []string{"blobs/", "blobs/sha256/", "blobs/sha256/ab", "index.json", "oci-layout"}; !slices.Equal(names, want) {
		t.Errorf("entries %q, want %q", names, want)
	}
}
