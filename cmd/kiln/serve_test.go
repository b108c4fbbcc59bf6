package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()

	return b.buf.String()
}

// TestServePrefetchesBootFiles: kiln serve, by default, verifies and
// extracts the amd64 boot files of the newest locked release into the
// asset store in the background once it serves; a build then finds them.
// An architecture kiln does not know is refused before anything starts.
func TestServePrefetchesBootFiles(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(t.Context())

	var (
		logs syncBuffer
		wg   sync.WaitGroup
	)

	wg.Go(func() {
		serve(ctx, []string{"--listen", "127.0.0.1:0", "--data-dir", dir, "--demo", "--log-format", "json"}, &logs, func(string) string { return "" }) //nolint:errcheck // ends with ctx
	})

	defer func() {
		cancel()
		wg.Wait()
	}()

	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(logs.String(), `"msg":"boot files prefetched"`) {
		if time.Now().After(deadline) || strings.Contains(logs.String(), "prefetching boot files failed") {
			t.Fatalf("no prefetch logged:\n%s", logs.String())
		}

		time.Sleep(50 * time.Millisecond)
	}

	for _, file := range []string{"vmlinuz", "initramfs_xz", "systemd-boot_efi", "systemd-stub_efi"} {
		if got, _ := filepath.Glob(filepath.Join(dir, "assets", "*", "imager-*-amd64-"+file+".json")); len(got) != 1 {
			t.Errorf("amd64 %s in the asset store after the prefetch: %v", file, got)
		}
	}

	if got, _ := filepath.Glob(filepath.Join(dir, "assets", "*", "imager-*-arm64-*")); len(got) != 0 {
		t.Errorf("arm64 files prefetched though only amd64 was asked for: %v", got)
	}

	var stderr bytes.Buffer
	if err := serve(t.Context(), []string{"--data-dir", t.TempDir(), "--prefetch-boot-files", "amd64,riscv64"}, &stderr, func(string) string { return "" }); err == nil || !strings.Contains(err.Error(), `"riscv64"`) {
		t.Fatalf("--prefetch-boot-files riscv64 = %v, want it refused by name", err)
	}
}
