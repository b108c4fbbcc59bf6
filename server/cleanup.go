package server

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// lockDataDir takes <dataDir>/kiln.lock for the life of the process: what
// kiln cleans at start (build scratch, interrupted uploads) is only garbage
// if no other kiln is using the same directory. The returned function
// releases it.
func lockDataDir(dataDir string) (func() error, error) {
	if err := os.MkdirAll(dataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}

	path := filepath.Join(dataDir, "kiln.lock")

	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("data directory lock: %w", err)
	}

	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()

		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("another kiln is using the data directory %s (it holds %s)", dataDir, path)
		}

		return nil, fmt.Errorf("data directory lock %s: %w", path, err)
	}

	return f.Close, nil
}

// removeStaleUploads empties the upload sessions of the embedded registry
// (<repository>/_uploads/<id>): a push cut off by a crash of kiln or of the
// pushing client leaves its partial blob there, and no client resumes an
// upload across a restart (crane, kiln mirror, docker and containerd start
// over). Nothing can be uploading before kiln serves.
func removeStaleUploads(registryDir string, logger *slog.Logger) {
	root := filepath.Join(registryDir, "docker", "registry", "v2", "repositories")

	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}

			return err
		}

		if !d.IsDir() {
			return nil
		}

		switch d.Name() {
		case "_layers", "_manifests":
			return filepath.SkipDir
		case "_uploads":
			entries, err := os.ReadDir(path)
			if err != nil {
				return err
			}

			for _, e := range entries {
				if err := os.RemoveAll(filepath.Join(path, e.Name())); err != nil {
					return err
				}

				logger.Info("removed an upload to the embedded registry a restart cut off", "path", filepath.Join(path, e.Name()))
			}

			return filepath.SkipDir
		}

		return nil
	})
	if err != nil {
		logger.Warn("could not remove interrupted uploads of the embedded registry", "error", err)
	}
}
