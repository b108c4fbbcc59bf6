package storage_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/kiln-dev/kiln/storage"
)

// fallocate(2) modes.
const (
	fallocKeepSize  = 0x01
	fallocPunchHole = 0x02
	fallocZeroRange = 0x10
)

// Commit does not sync, so a power loss can bring an entry back with its
// metadata on disk and its data not, or not all of it (see
// fsAssetWriter.Commit). Each way that can look at the next start is made
// here by hand on a committed entry; the fresh process that opens it must
// not serve it, must drop it, and must take the rebuilt asset.
func TestAssetTornByPowerLoss(t *testing.T) {
	const key = "torn-asset"

	for _, tc := range []struct {
		name string
		tear func(t *testing.T, asset, meta string)
		want error // of the first Open in the fresh process
	}{
		{
			name: "data never written: empty file",
			tear: func(t *testing.T, asset, _ string) { truncate(t, asset, 0) },
			want: storage.ErrCorrupt,
		},
		{
			name: "data written up to 5 MiB: shorter file",
			tear: func(t *testing.T, asset, _ string) { truncate(t, asset, 5<<20) },
			want: storage.ErrCorrupt,
		},
		{
			name: "a chunk never written: a hole now",
			tear: func(t *testing.T, asset, _ string) {
				fallocate(t, asset, fallocPunchHole|fallocKeepSize, 0, 1<<20)
			},
			want: storage.ErrCorrupt,
		},
		{
			name: "a chunk's blocks allocated, never written: zeros",
			tear: func(t *testing.T, asset, _ string) {
				fallocate(t, asset, fallocZeroRange|fallocKeepSize, 5<<20, 1<<20)
			},
			want: storage.ErrCorrupt,
		},
		{
			name: "the last chunk's blocks belong to another file",
			tear: func(t *testing.T, asset, _ string) {
				writeAt(t, asset, bytes.Repeat([]byte("old"), 1000), 9<<20)
			},
			want: storage.ErrCorrupt,
		},
		{
			name: "metadata never written: empty file",
			tear: func(t *testing.T, _, meta string) { truncate(t, meta, 0) },
			want: storage.ErrCorrupt,
		},
		{
			name: "metadata's rename lost",
			tear: func(t *testing.T, _, meta string) {
				if err := os.Remove(meta); err != nil {
					t.Fatal(err)
				}
			},
			want: storage.ErrNotFound,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			want := sparseAsset(t, newAssets(t, dir, 0), key)
			asset := assetPath(dir, key)

			tc.tear(t, asset, asset+".json")

			a := newAssets(t, dir, 0) // the start after the power loss

			if f, err := a.Open(ctx, key); !errors.Is(err, tc.want) {
				if err == nil {
					f.Close()
				}

				t.Fatalf("Open of the torn asset = %v, want %v", err, tc.want)
			}

			if _, err := a.Open(ctx, key); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Open after = %v, want ErrNotFound", err)
			}

			for _, p := range []string{asset, asset + ".json"} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s left: %v", p, err)
				}
			}

			// The build runs again; its asset is served.
			if got := sparseAsset(t, a, key); !bytes.Equal(got, want) {
				t.Fatal("the test's asset is not reproducible")
			}

			f, err := newAssets(t, dir, 0).Open(ctx, key)
			if err != nil {
				t.Fatalf("Open of the rebuilt asset: %v", err)
			}
			defer f.Close()

			if got, _ := io.ReadAll(f); !bytes.Equal(got, want) {
				t.Fatal("the rebuilt asset is served with other bytes")
			}
		})
	}
}

func truncate(t *testing.T, path string, size int64) {
	t.Helper()

	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

func writeAt(t *testing.T, path string, data []byte, off int64) {
	t.Helper()

	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if _, err := f.WriteAt(data, off); err != nil {
		t.Fatal(err)
	}
}

func fallocate(t *testing.T, path string, mode uint32, off, n int64) {
	t.Helper()

	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if err := syscall.Fallocate(int(f.Fd()), mode, off, n); err != nil {
		if errors.Is(err, syscall.EOPNOTSUPP) {
			t.Skipf("fallocate mode %#x: %v", mode, err)
		}

		t.Fatal(err)
	}
}
