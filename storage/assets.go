package storage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/kiln-dev/kiln/internal/iox"
)

// Assets caches built boot assets under their build-plan key.
type Assets interface {
	// Open returns a committed asset, ErrNotFound if there is none, or
	// ErrCorrupt if its content no longer matches the digest recorded at
	// commit (the entry is then removed, so the next build replaces it).
	// The caller closes the asset.
	Open(ctx context.Context, key string) (Asset, error)
	// Create starts writing an asset. Nothing is visible to Open until
	// Commit; Cancel (or a failed Commit) leaves nothing behind.
	Create(ctx context.Context, key string) (AssetWriter, error)
}

// Asset is a committed asset: a seekable file with its size and digest.
type Asset interface {
	io.ReadSeekCloser
	io.ReaderAt
	Size() int64
	// SHA256 is the hex digest of the content.
	SHA256() string
	ModTime() time.Time
}

// AssetWriter writes an asset; the digest is computed while writing.
type AssetWriter interface {
	io.Writer
	io.WriterAt
	// File is the temp file being written, for writers that need one
	// (disk images are written sparse at offsets).
	File() *os.File
	// Commit hashes what was written (the file, holes included), syncs it
	// and makes it visible atomically. It stops, leaving nothing, when the
	// context given to Create ends: hashing a multi-gigabyte disk image
	// takes seconds that an abandoned build should not keep.
	Commit() error
	// Cancel drops the write.
	Cancel() error
}

// On-disk layout of the asset cache:
//
//	<dir>/assets/<key[0:2]>/<key>        the asset
//	<dir>/assets/<key[0:2]>/<key>.json   {"size":..,"sha256":..}, written after the asset
//	<dir>/assets/tmp/<random>            writes in progress (removed on start)
//
// An asset counts as present only with its .json, which is renamed into
// place last; an asset file without one (a crash between the two renames)
// and a .json.tmp are removed on start.
const (
	assetsDir    = "assets"
	assetsTmpDir = "tmp"
)

type assetMeta struct {
	Size   int64  `json:"size"`
	SHA256 string `json:"sha256"`
}

// FSAssets is the filesystem asset cache, bounded in total size: after each
// commit the least recently opened assets are removed until the cache fits.
type FSAssets struct {
	dir    string
	limit  int64
	logger *slog.Logger

	mu       sync.Mutex
	verified map[string]time.Time // key -> mtime of the entry when its digest last checked out
}

var _ Assets = (*FSAssets)(nil)

// NewFSAssets opens the asset cache under dir, limited to limit bytes (0 is
// unlimited), removing writes a crash interrupted.
func NewFSAssets(dir string, limit int64, logger *slog.Logger) (*FSAssets, error) {
	root := filepath.Join(dir, assetsDir)
	tmp := filepath.Join(root, assetsTmpDir)

	if err := os.RemoveAll(tmp); err != nil {
		return nil, fmt.Errorf("asset cache: clean %s: %w", tmp, err)
	}

	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("asset cache: %w", err)
	}

	a := &FSAssets{dir: root, limit: limit, logger: logger, verified: map[string]time.Time{}}
	a.removeIncomplete()

	return a, nil
}

// removeIncomplete removes what a crash during a commit left: metadata
// half written, and asset files whose metadata was never written (they
// would never be served, nor counted against the bound).
func (a *FSAssets) removeIncomplete() {
	buckets, _ := os.ReadDir(a.dir) //nolint:errcheck // nothing to clean in an unreadable cache

	for _, b := range buckets {
		if !b.IsDir() || b.Name() == assetsTmpDir {
			continue
		}

		bucket := filepath.Join(a.dir, b.Name())
		files, _ := os.ReadDir(bucket) //nolint:errcheck // as above

		for _, f := range files {
			name := f.Name()

			incomplete := strings.HasSuffix(name, ".tmp")
			if !incomplete && !strings.HasSuffix(name, ".json") {
				_, err := os.Stat(filepath.Join(bucket, name+".json"))
				incomplete = errors.Is(err, fs.ErrNotExist)
			}

			if !incomplete {
				continue
			}

			if err := os.Remove(filepath.Join(bucket, name)); err != nil {
				a.logger.Warn("could not remove an incomplete cached asset", "path", filepath.Join(bucket, name), "error", err)

				continue
			}

			a.logger.Info("removed an incomplete cached asset", "path", filepath.Join(bucket, name))
		}
	}
}

func (a *FSAssets) path(key string) string { return filepath.Join(a.dir, key[:2], key) }

func validKey(key string) error {
	if len(key) < 8 || strings.ContainsAny(key, "/\\.") {
		return fmt.Errorf("asset key %q is not valid", key)
	}

	return nil
}

// Open implements Assets. The first open of an entry in this process checks
// its full digest; later opens trust it while its mtime is unchanged.
func (a *FSAssets) Open(ctx context.Context, key string) (Asset, error) {
	if err := validKey(key); err != nil {
		return nil, err
	}

	p := a.path(key)

	metaData, err := os.ReadFile(p + ".json")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("asset %s: %w", key, ErrNotFound)
	}

	if err != nil {
		return nil, fmt.Errorf("asset %s: %w", key, err)
	}

	var meta assetMeta
	if err := json.Unmarshal(metaData, &meta); err != nil {
		a.drop(key)

		return nil, fmt.Errorf("asset %s metadata: %w", key, ErrCorrupt)
	}

	f, err := os.Open(p)
	if err != nil {
		a.drop(key)

		return nil, fmt.Errorf("asset %s: %w", key, ErrCorrupt)
	}

	st, err := f.Stat()
	if err != nil || st.Size() != meta.Size {
		f.Close()
		a.drop(key)

		return nil, fmt.Errorf("asset %s: size changed: %w", key, ErrCorrupt)
	}

	a.mu.Lock()
	checkedAt, ok := a.verified[key]
	a.mu.Unlock()

	if !ok || !checkedAt.Equal(st.ModTime()) {
		sum, err := hashFile(ctx, f)
		if err != nil {
			f.Close()

			return nil, fmt.Errorf("asset %s: %w", key, err)
		}

		if sum != meta.SHA256 {
			f.Close()
			a.drop(key)
			a.logger.Warn("dropping a corrupt cached asset", "key", key)

			return nil, fmt.Errorf("asset %s: digest %s, recorded %s: %w", key, sum, meta.SHA256, ErrCorrupt)
		}

		a.mu.Lock()
		a.verified[key] = st.ModTime()
		a.mu.Unlock()
	}

	// The access time drives eviction; atime is often off (noatime), so
	// the metadata file's mtime records it instead.
	now := time.Now()
	_ = os.Chtimes(p+".json", now, now) //nolint:errcheck // best effort: only eviction order depends on it

	return &fsAsset{File: f, size: meta.Size, sha: meta.SHA256, mod: st.ModTime()}, nil
}

func (a *FSAssets) drop(key string) {
	p := a.path(key)
	os.Remove(p + ".json") //nolint:errcheck // best effort
	os.Remove(p)           //nolint:errcheck // best effort

	a.mu.Lock()
	delete(a.verified, key)
	a.mu.Unlock()
}

func hashFile(ctx context.Context, f *os.File) (string, error) {
	h := sha256.New()
	if _, err := iox.Copy(ctx, h, io.NewSectionReader(f, 0, 1<<62)); err != nil {
		return "", err
	}

	return hex.EncodeToString(h.Sum(nil)), nil
}

type fsAsset struct {
	*os.File

	size int64
	sha  string
	mod  time.Time
}

func (f *fsAsset) Size() int64        { return f.size }
func (f *fsAsset) SHA256() string     { return f.sha }
func (f *fsAsset) ModTime() time.Time { return f.mod }

// Create implements Assets.
func (a *FSAssets) Create(ctx context.Context, key string) (AssetWriter, error) {
	if err := validKey(key); err != nil {
		return nil, err
	}

	if err := ctx.Err(); err != nil {
		return nil, err
	}

	f, err := os.CreateTemp(filepath.Join(a.dir, assetsTmpDir), key+"-")
	if err != nil {
		return nil, fmt.Errorf("asset %s: %w", key, err)
	}

	return &fsAssetWriter{ctx: ctx, a: a, key: key, f: f}, nil
}

type fsAssetWriter struct {
	ctx  context.Context //nolint:containedctx // Commit is bound to the build that created the writer
	a    *FSAssets
	key  string
	f    *os.File
	done bool
}

func (w *fsAssetWriter) Write(p []byte) (int, error)              { return w.f.Write(p) }
func (w *fsAssetWriter) WriteAt(p []byte, off int64) (int, error) { return w.f.WriteAt(p, off) }
func (w *fsAssetWriter) File() *os.File                           { return w.f }

func (w *fsAssetWriter) Cancel() error {
	if w.done {
		return nil
	}

	w.done = true
	w.f.Close()

	return os.Remove(w.f.Name())
}

func (w *fsAssetWriter) Commit() (err error) {
	if w.done {
		return errors.New("asset writer already finished")
	}

	defer func() {
		if err != nil {
			w.Cancel() //nolint:errcheck // already failing
		}
	}()

	st, err := w.f.Stat()
	if err != nil {
		return err
	}

	sum, err := hashFile(w.ctx, w.f)
	if err != nil {
		return err
	}

	if err := w.f.Sync(); err != nil {
		return err
	}

	final := w.a.path(w.key)
	if err := os.MkdirAll(filepath.Dir(final), 0o755); err != nil {
		return err
	}

	if err := os.Rename(w.f.Name(), final); err != nil {
		return err
	}

	w.done = true
	w.f.Close()

	meta, _ := json.Marshal(assetMeta{Size: st.Size(), SHA256: sum}) //nolint:errcheck // plain struct

	if err := writeFileAtomic(final+".json", meta); err != nil {
		os.Remove(final) //nolint:errcheck // the entry is invisible without its metadata anyway

		return err
	}

	w.a.evict(w.key)

	return nil
}

func writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		os.Remove(tmp) //nolint:errcheck // a full disk may have left part of it

		return err
	}

	return os.Rename(tmp, path)
}

// evict removes least recently used entries until the cache fits its limit;
// keep is the entry just written, never evicted by its own commit.
func (a *FSAssets) evict(keep string) {
	if a.limit <= 0 {
		return
	}

	type entry struct {
		key  string
		size int64
		used time.Time
	}

	var (
		entries []entry
		total   int64
	)

	buckets, _ := os.ReadDir(a.dir) //nolint:errcheck // an unreadable cache is simply not evicted

	for _, b := range buckets {
		if !b.IsDir() || b.Name() == assetsTmpDir {
			continue
		}

		files, _ := os.ReadDir(filepath.Join(a.dir, b.Name())) //nolint:errcheck // as above

		for _, f := range files {
			key, ok := strings.CutSuffix(f.Name(), ".json")
			if !ok {
				continue
			}

			info, err := f.Info()
			if err != nil {
				continue
			}

			st, err := os.Stat(filepath.Join(a.dir, b.Name(), key))
			if err != nil {
				continue
			}

			entries = append(entries, entry{key, st.Size(), info.ModTime()})
			total += st.Size()
		}
	}

	slices.SortFunc(entries, func(x, y entry) int { return x.used.Compare(y.used) })

	for _, e := range entries {
		if total <= a.limit {
			return
		}

		if e.key == keep {
			continue
		}

		a.drop(e.key)
		total -= e.size
		a.logger.Info("evicted a cached asset", "key", e.key, "size", e.size)
	}
}
