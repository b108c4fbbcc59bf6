package storage_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/storage"
)

func newAssets(t *testing.T, dir string, limit int64) *storage.FSAssets {
	t.Helper()

	a, err := storage.NewFSAssets(dir, limit, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	return a
}

func put(t *testing.T, a storage.Assets, key, content string) {
	t.Helper()

	w, err := a.Create(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := io.WriteString(w, content); err != nil {
		t.Fatal(err)
	}

	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
}

func TestAssetsLifecycle(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := newAssets(t, dir, 0)

	if _, err := a.Open(ctx, "aaaaaaaaaaaa"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open(missing) = %v, want ErrNotFound", err)
	}

	// Nothing is visible before Commit, nothing is left after Cancel.
	w, err := a.Create(ctx, "bbbbbbbbbbbb")
	if err != nil {
		t.Fatal(err)
	}

	io.WriteString(w, "half") //nolint:errcheck

	if _, err := a.Open(ctx, "bbbbbbbbbbbb"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open before Commit = %v, want ErrNotFound", err)
	}

	if err := w.Cancel(); err != nil {
		t.Fatal(err)
	}

	if tmp, _ := os.ReadDir(filepath.Join(dir, "assets", "tmp")); len(tmp) != 0 {
		t.Fatalf("Cancel left %d temp files", len(tmp))
	}

	put(t, a, "cccccccccccc", "the asset")

	got, err := a.Open(ctx, "cccccccccccc")
	if err != nil {
		t.Fatal(err)
	}

	data, _ := io.ReadAll(got)
	got.Close()

	if etag, _ := storage.ETagOf(strings.NewReader("the asset")); string(data) != "the asset" || got.Size() != 9 || got.ETag() != etag {
		t.Fatalf("Open = %q size %d etag %s, want %s", data, got.Size(), got.ETag(), etag)
	}

	// A corrupted entry is refused and dropped, in a fresh process too.
	if err := os.WriteFile(filepath.Join(dir, "assets", "cc", "cccccccccccc"), []byte("the assex"), 0o644); err != nil {
		t.Fatal(err)
	}

	a2 := newAssets(t, dir, 0)
	if _, err := a2.Open(ctx, "cccccccccccc"); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("Open(corrupt) = %v, want ErrCorrupt", err)
	}

	if _, err := a2.Open(ctx, "cccccccccccc"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open after a corrupt entry was dropped = %v, want ErrNotFound", err)
	}

	if _, err := a.Create(ctx, "../etc/passwd"); err == nil || !strings.Contains(err.Error(), "not valid") {
		t.Fatalf("Create with a path key = %v", err)
	}
}

func TestAssetsEvictLeastRecentlyUsed(t *testing.T) {
	ctx := context.Background()
	a := newAssets(t, t.TempDir(), 25)

	put(t, a, "key-000001", "0123456789")
	time.Sleep(20 * time.Millisecond)
	put(t, a, "key-000002", "0123456789")
	time.Sleep(20 * time.Millisecond)

	// Using the first makes the second the least recently used.
	if f, err := a.Open(ctx, "key-000001"); err != nil {
		t.Fatal(err)
	} else {
		f.Close()
	}

	time.Sleep(20 * time.Millisecond)
	put(t, a, "key-000003", "0123456789")

	if _, err := a.Open(ctx, "key-000002"); !errors.Is(err, storage.ErrNotFound) {
		t.Errorf("least recently used entry survived: %v", err)
	}

	for _, k := range []string{"key-000001", "key-000003"} {
		f, err := a.Open(ctx, k)
		if err != nil {
			t.Errorf("%s evicted: %v", k, err)

			continue
		}

		f.Close()
	}
}

// A crash between an asset's rename and its metadata, or during the
// metadata write, leaves files nothing would ever serve or evict: the next
// start removes them and keeps complete entries.
func TestIncompleteAssetsRemovedAtStart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	put(t, newAssets(t, dir, 0), "cccccccccccc", "the asset")

	bucket := filepath.Join(dir, "assets", "dd")
	if err := os.MkdirAll(bucket, 0o755); err != nil {
		t.Fatal(err)
	}

	orphans := []string{filepath.Join(bucket, "dddddddddddd"), filepath.Join(bucket, "dddddddddddd.json.tmp")}
	for _, f := range orphans {
		if err := os.WriteFile(f, []byte("half"), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	a := newAssets(t, dir, 0)

	for _, f := range orphans {
		if _, err := os.Stat(f); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the start: %v", f, err)
		}
	}

	got, err := a.Open(ctx, "cccccccccccc")
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()

	if data, _ := io.ReadAll(got); string(data) != "the asset" {
		t.Fatalf("complete asset = %q", data)
	}
}

// Commit stops with the context of Create, and leaves nothing.
func TestCommitCancelled(t *testing.T) {
	dir := t.TempDir()
	a := newAssets(t, dir, 0)

	ctx, cancel := context.WithCancel(context.Background())

	w, err := a.Create(ctx, "eeeeeeeeeeee")
	if err != nil {
		t.Fatal(err)
	}

	io.WriteString(w, "an asset") //nolint:errcheck
	cancel()

	if err := w.Commit(); !errors.Is(err, context.Canceled) {
		t.Fatalf("Commit after cancel = %v, want context.Canceled", err)
	}

	if _, err := a.Open(context.Background(), "eeeeeeeeeeee"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open after a cancelled commit = %v", err)
	}

	if tmp, _ := os.ReadDir(filepath.Join(dir, "assets", "tmp")); len(tmp) != 0 {
		t.Fatalf("a cancelled commit left %d temp files", len(tmp))
	}
}
