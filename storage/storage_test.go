package storage_test

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/storage"
	"github.com/kiln-dev/kiln/storage/storagetest"
)

func TestFS(t *testing.T) {
	storagetest.Schematics(t, func(t *testing.T) storage.Schematics {
		s, err := storage.NewFS(t.TempDir(), slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}

		return s
	})
}

func TestMemory(t *testing.T) {
	storagetest.Schematics(t, func(*testing.T) storage.Schematics { return storage.NewMemory() })
}

const emptyID = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"

func TestFSSurvivesRestart(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	logger := slog.New(slog.DiscardHandler)

	s, err := storage.NewFS(dir, logger)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := s.Put(ctx, emptyID, []byte("customization: {}\n")); err != nil {
		t.Fatal(err)
	}

	// A crash mid-Put leaves a temp file; reopening removes it and it is never listed.
	leftover := filepath.Join(dir, "schematics", "37", ".tmp-123")
	if err := os.WriteFile(leftover, []byte("half"), 0o644); err != nil {
		t.Fatal(err)
	}

	s, err = storage.NewFS(dir, logger)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp file survived reopening: %v", err)
	}

	got, err := s.Get(ctx, emptyID)
	if err != nil || string(got) != "customization: {}\n" {
		t.Fatalf("Get after restart = %q, %v", got, err)
	}
}

func TestFSDetectsCorruption(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	s, err := storage.NewFS(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}

	if _, err := s.Put(ctx, emptyID, []byte("customization: {}\n")); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(filepath.Join(dir, "schematics", "37", emptyID), []byte("tampered"), 0o644); err != nil {
		t.Fatal(err)
	}

	if _, err := s.Get(ctx, emptyID); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("Get(tampered) error = %v, want ErrCorrupt", err)
	}
}
