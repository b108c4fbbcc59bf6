package kcopy

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"testing"
)

// asset embeds an *os.File, as a stored asset does.
type asset struct{ *os.File }

func TestCopyAt(t *testing.T) {
	dir := t.TempDir()
	data := make([]byte, 3<<20+17)
	rand.New(rand.NewSource(1)).Read(data) //nolint:gosec // test data
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, data, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	for name, r := range map[string]io.ReaderAt{
		"file":   f,
		"asset":  asset{f},
		"reader": bytes.NewReader(data), // through user space
	} {
		t.Run(name, func(t *testing.T) {
			out, err := os.Create(filepath.Join(dir, "out-"+name))
			if err != nil {
				t.Fatal(err)
			}
			defer out.Close()
			if err := CopySection(context.Background(), out, 4096, io.NewSectionReader(r, 5, int64(len(data))-10)); err != nil {
				t.Fatal(err)
			}
			// Within one file: the copy just made, again further on.
			if err := CopyAt(context.Background(), out, 8<<20, out, 4096, int64(len(data))-10); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(out.Name())
			if err != nil {
				t.Fatal(err)
			}
			want := make([]byte, 8<<20+len(data)-10)
			copy(want[4096:], data[5:len(data)-5])
			copy(want[8<<20:], data[5:len(data)-5])
			if !bytes.Equal(got, want) {
				t.Fatal("copied bytes differ")
			}
			if err := CopyAt(context.Background(), out, 0, r, int64(len(data))-3, 4); !errors.Is(err, io.ErrUnexpectedEOF) {
				t.Fatalf("short source: %v, want io.ErrUnexpectedEOF", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			if err := CopyAt(ctx, out, 0, r, 0, 100); !errors.Is(err, context.Canceled) {
				t.Fatalf("cancelled: %v", err)
			}
		})
	}
	if _, ok := File(io.NewSectionReader(f, 0, 1)); ok {
		t.Fatal("a section reader is not a file")
	}
}
