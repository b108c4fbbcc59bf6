package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
)

// On-disk layout under the data directory; schematicPath is the only place
// that spells it.
//
//	<dir>/
//	└── schematics/
//	    └── <id[0:2]>/          fan-out, so no directory grows past ~1/256 of all
//	        ├── <id>            canonical YAML, sha256(content) == id
//	        └── .tmp-<random>   a Put in progress (or left by a crash)
const (
	schematicsDir = "schematics"
	tmpPrefix     = ".tmp-"
)

// FS stores content as files under a directory.
type FS struct {
	dir string
}

var _ Schematics = (*FS)(nil)

// NewFS opens (creating if needed) a store under dir and removes temp files
// that an interrupted Put left behind.
func NewFS(dir string, logger *slog.Logger) (*FS, error) {
	root := filepath.Join(dir, schematicsDir)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("storage: create %s: %w", root, err)
	}

	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		if !d.IsDir() && strings.HasPrefix(d.Name(), tmpPrefix) {
			logger.Info("removing an incomplete write", "path", path)

			return os.Remove(path)
		}

		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("storage: clean %s: %w", root, err)
	}

	return &FS{dir: dir}, nil
}

func (s *FS) schematicPath(id string) string {
	return filepath.Join(s.dir, schematicsDir, id[:2], id)
}

// Put implements Schematics. The content is written to a temp file in the
// final directory, synced, then hard-linked to its name: unlike rename, a link
// fails when the name exists, which tells exactly one concurrent writer that
// it created the entry, and never replaces a good copy.
func (s *FS) Put(ctx context.Context, id string, content []byte) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}

	final := s.schematicPath(id)
	if _, err := os.Stat(final); err == nil {
		return false, nil
	}

	dir := filepath.Dir(final)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return false, fmt.Errorf("storage: put %s: %w", id, err)
	}

	tmp, err := os.CreateTemp(dir, tmpPrefix)
	if err != nil {
		return false, fmt.Errorf("storage: put %s: %w", id, err)
	}

	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the link, or garbage on failure

	if _, err = tmp.Write(content); err == nil {
		err = tmp.Sync()
	}

	if closeErr := tmp.Close(); err == nil {
		err = closeErr
	}

	if err != nil {
		return false, fmt.Errorf("storage: put %s: %w", id, err)
	}

	if err := os.Link(tmp.Name(), final); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return false, nil
		}

		return false, fmt.Errorf("storage: put %s: %w", id, err)
	}

	if err := syncDir(dir); err != nil {
		return true, fmt.Errorf("storage: put %s: %w", id, err)
	}

	return true, nil
}

// Get implements Schematics.
func (s *FS) Get(ctx context.Context, id string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	data, err := os.ReadFile(s.schematicPath(id))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("schematic %s: %w", id, ErrNotFound)
	}

	if err != nil {
		return nil, fmt.Errorf("storage: get %s: %w", id, err)
	}

	if sum := sha256.Sum256(data); hex.EncodeToString(sum[:]) != id {
		return nil, fmt.Errorf("schematic %s: %w", id, ErrCorrupt)
	}

	return data, nil
}

// List implements Schematics. Directory listings come sorted, and the fan-out
// prefix is the ID's own prefix, so walking them in order yields sorted IDs.
func (s *FS) List(ctx context.Context, after string, limit int) ([]string, error) {
	root := filepath.Join(s.dir, schematicsDir)

	buckets, err := os.ReadDir(root)
	if err != nil {
		return nil, fmt.Errorf("storage: list: %w", err)
	}

	var ids []string

	for _, b := range buckets {
		if !b.IsDir() || (len(after) >= 2 && b.Name() < after[:2]) {
			continue
		}

		if err := ctx.Err(); err != nil {
			return nil, err
		}

		entries, err := os.ReadDir(filepath.Join(root, b.Name()))
		if err != nil {
			return nil, fmt.Errorf("storage: list: %w", err)
		}

		for _, e := range entries {
			name := e.Name()
			if strings.HasPrefix(name, tmpPrefix) || name <= after {
				continue
			}

			ids = append(ids, name)
			if len(ids) == limit {
				return ids, nil
			}
		}
	}

	return ids, nil
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}

	err = d.Sync()
	if closeErr := d.Close(); err == nil {
		err = closeErr
	}

	return err
}
