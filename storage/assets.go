package storage

import (
	"bytes"
	"context"
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
	"syscall"
	"time"
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

// Asset is a committed asset: a seekable file with its size and digests.
type Asset interface {
	io.ReadSeekCloser
	io.ReaderAt
	Size() int64
	// ETag is the asset's strong entity tag, without quotes: a digest of its
	// content's chunks that never hashes a hole, the same for the same bytes
	// in every kiln (see digest.go, ETagOf).
	ETag() string
	// SHA256 is the hex SHA-256 of the content. It is computed the first
	// time it is asked for (a second for a 2 GiB sparse disk image, which
	// hashes its holes as zeros), checking the chunks' CRCs on the way, and
	// recorded: ErrCorrupt if the content changed since its commit.
	SHA256(ctx context.Context) (string, error)
	ModTime() time.Time
}

// AssetWriter writes an asset; its digests are computed once: as Write
// writes, or at Commit.
type AssetWriter interface {
	io.Writer
	io.WriterAt
	// File is the temp file being written, for writers that need one
	// (disk images are written sparse at offsets).
	File() *os.File
	// Commit digests what was written in one pass that skips the file's
	// holes and hashes its chunks on several cores (unless it was only
	// written by Write, which digested it as it went), and makes it visible
	// atomically with its digests, which Open then trusts. It does not sync
	// the file: a power loss can lose a build, never make a torn one served
	// (see fsAssetWriter.Commit). It stops, leaving nothing, when the context given to
	// Create ends: digesting a multi-gigabyte disk image takes a second that
	// an abandoned build should not keep.
	Commit() error
	// Cancel drops the write.
	Cancel() error
}

// On-disk layout of the asset cache:
//
//	<dir>/assets/<key[0:2]>/<key>        the asset
//	<dir>/assets/<key[0:2]>/<key>.json   {"size":..,"etag":..,"crc32c":..[,"sha256":..]}, written after the asset
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
	Size int64 `json:"size"`
	// SHA256 is recorded the first time Asset.SHA256 is asked for. Entries
	// written before the ETag existed have it from their commit.
	SHA256 string `json:"sha256,omitempty"`
	// ETag is the chunk digest (see digest.go). Entries written before it
	// existed lack it: their first Open computes and adds it.
	ETag string `json:"etag,omitempty"`
	// CRC32C holds the big-endian CRC-32C of each chunkSize piece (see
	// digest.go). Entries written before it existed lack it: their first
	// Open checks the sha256 and adds it.
	CRC32C []byte `json:"crc32c,omitempty"`
}

// FSAssets is the filesystem asset cache, bounded in total size: after each
// commit the least recently opened assets are removed until the cache fits.
type FSAssets struct {
	dir    string
	limit  int64
	logger *slog.Logger

	mu       sync.Mutex
	verified map[string]stamp // key -> the entry's file when its digests last checked out

	// metaMu serialises rewrites of an entry's metadata after its commit
	// (digests added to it), which share one temp file name.
	metaMu sync.Mutex
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

	a := &FSAssets{dir: root, limit: limit, logger: logger, verified: map[string]stamp{}}
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

// Open implements Assets. An entry is trusted while its file keeps the stamp
// (inode, size, mtime, ctime) under which its digests last checked out in
// this process: its Commit, or its first Open after a start, which checks the
// chunk CRCs of the chunks that hold data. A file written since (a flipped
// byte moves its ctime), truncated or replaced is checked again; one that
// does not match is dropped.
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

	if err := a.check(ctx, key, f, st, &meta); err != nil {
		f.Close()

		return nil, err
	}

	// The access time drives eviction; atime is often off (noatime), so
	// the metadata file's mtime records it instead.
	now := time.Now()
	_ = os.Chtimes(p+".json", now, now) //nolint:errcheck // best effort: only eviction order depends on it

	return &fsAsset{File: f, a: a, key: key, meta: &meta, stamp: stampOf(st), mod: st.ModTime()}, nil
}

func (a *FSAssets) drop(key string) {
	p := a.path(key)
	os.Remove(p + ".json") //nolint:errcheck // best effort
	os.Remove(p)           //nolint:errcheck // best effort

	a.mu.Lock()
	delete(a.verified, key)
	a.mu.Unlock()
}

// check verifies an entry's file against its metadata unless it was
// verified under its current stamp already.
func (a *FSAssets) check(ctx context.Context, key string, f *os.File, st os.FileInfo, meta *assetMeta) error {
	now := stampOf(st)

	a.mu.Lock()
	trusted, ok := a.verified[key]
	a.mu.Unlock()

	if ok && trusted == now {
		return nil
	}

	// Entries committed before CRCs were recorded (ETags came after them;
	// an empty asset has no CRC) are checked by their sha256.
	legacy := len(meta.CRC32C) == 0 && meta.ETag == ""

	d, err := digest(ctx, f, meta.Size, legacy, meta.ETag == "")
	if err != nil {
		return fmt.Errorf("asset %s: %w", key, err)
	}

	if (legacy && d.sha256 != meta.SHA256) || (!legacy && !bytes.Equal(d.crcs, meta.CRC32C)) {
		a.drop(key)

		if legacy {
			a.logger.Warn("dropping a corrupt cached asset", "key", key, "path", f.Name(), "sha256", d.sha256, "recorded", meta.SHA256)
		} else {
			a.logger.Warn("dropping a corrupt cached asset", "key", key, "path", f.Name(), "chunk", firstDiff(d.crcs, meta.CRC32C))
		}

		return fmt.Errorf("asset %s: content no longer matches the digests recorded at commit: %w", key, ErrCorrupt)
	}

	if legacy || meta.ETag == "" {
		meta.CRC32C = d.crcs
		if meta.ETag == "" {
			meta.ETag = d.etag
		}

		if err := a.rewriteMeta(key, meta); err != nil {
			a.logger.Warn("could not record the digests of a cached asset", "key", key, "error", err)
		}
	}

	a.mu.Lock()
	a.verified[key] = now
	a.mu.Unlock()

	return nil
}

// firstDiff is the index of the first chunk whose CRCs differ, for the log.
func firstDiff(got, want []byte) int {
	for i := 0; i+4 <= min(len(got), len(want)); i += 4 {
		if !bytes.Equal(got[i:i+4], want[i:i+4]) {
			return i / 4
		}
	}

	return min(len(got), len(want)) / 4
}

// rewriteMeta replaces an entry's metadata, the asset file staying as it
// is: digests computed after its commit.
func (a *FSAssets) rewriteMeta(key string, meta *assetMeta) error {
	data, _ := json.Marshal(meta) //nolint:errcheck // plain struct

	a.metaMu.Lock()
	defer a.metaMu.Unlock()

	// An entry dropped or evicted meanwhile stays gone.
	if _, err := os.Stat(a.path(key) + ".json"); err != nil {
		return err
	}

	return writeFileAtomic(a.path(key)+".json", data)
}

type fsAsset struct {
	*os.File

	a     *FSAssets
	key   string
	meta  *assetMeta
	stamp stamp
	mod   time.Time

	dataStart, dataEnd int64 // the data extent HoleAt last found
}

// HoleAt is the length of the hole at off: 0 where off holds data, where it
// is past the end, or where the file system cannot say. A server sends that
// many zeros from memory instead of reading them: reading a hole (sendfile
// too) makes the kernel allocate and zero-fill page cache for it, which was
// nearly all of a 2 GiB raw disk's cold download. It keeps the file's
// offset.
func (f *fsAsset) HoleAt(off int64) int64 {
	if off < 0 || off >= f.meta.Size {
		return 0
	}

	if off >= f.dataStart && off < f.dataEnd {
		return 0
	}

	cur, err := f.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0
	}

	defer f.Seek(cur, io.SeekStart) //nolint:errcheck // back where it was; a failure shows in the next read

	start, err := f.Seek(off, seekData)

	switch {
	case errors.Is(err, syscall.ENXIO): // no data from off to the end
		return f.meta.Size - off
	case err != nil:
		return 0
	case start > off:
		return start - off
	}

	end, err := f.Seek(start, seekHole)
	if err != nil {
		return 0
	}

	f.dataStart, f.dataEnd = start, end

	return 0
}

func (f *fsAsset) Size() int64        { return f.meta.Size }
func (f *fsAsset) ETag() string       { return f.meta.ETag }
func (f *fsAsset) ModTime() time.Time { return f.mod }

// SHA256 implements Asset. The pass runs over a handle of its own on the
// same inode (it seeks to find the holes, and the asset may be being read),
// and checks the chunk CRCs too: a file changed since Open is not given a
// digest of changed bytes. Concurrent first calls for one asset may both
// hash it; they record the same value.
func (f *fsAsset) SHA256(ctx context.Context) (string, error) {
	if f.meta.SHA256 != "" {
		return f.meta.SHA256, nil
	}

	// Another request may have computed it since this one opened the asset.
	if data, err := os.ReadFile(f.a.path(f.key) + ".json"); err == nil {
		var recorded assetMeta
		if json.Unmarshal(data, &recorded) == nil && recorded.SHA256 != "" && recorded.ETag == f.meta.ETag && recorded.Size == f.meta.Size {
			f.meta.SHA256 = recorded.SHA256

			return recorded.SHA256, nil
		}
	}

	g, err := os.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd()))
	if err != nil { // no /proc: the file by its name, which a rebuild may have replaced
		g, err = os.Open(f.Name())
	}

	if err != nil {
		return "", fmt.Errorf("asset %s: %w", f.key, err)
	}
	defer g.Close()

	st, err := g.Stat()
	if err != nil {
		return "", fmt.Errorf("asset %s: %w", f.key, err)
	}

	if now := stampOf(st); now != f.stamp {
		if now.dev != f.stamp.dev || now.ino != f.stamp.ino {
			return "", fmt.Errorf("asset %s: replaced since it was opened", f.key)
		}

		f.a.drop(f.key)

		return "", fmt.Errorf("asset %s: changed since it was opened: %w", f.key, ErrCorrupt)
	}

	d, err := digest(ctx, g, f.meta.Size, true, false)
	if err != nil {
		return "", fmt.Errorf("asset %s: sha256: %w", f.key, err)
	}

	if !bytes.Equal(d.crcs, f.meta.CRC32C) {
		f.a.drop(f.key)
		f.a.logger.Warn("dropping a corrupt cached asset", "key", f.key, "path", f.Name(), "chunk", firstDiff(d.crcs, f.meta.CRC32C))

		return "", fmt.Errorf("asset %s: content no longer matches the digests recorded at commit: %w", f.key, ErrCorrupt)
	}

	meta := *f.meta
	meta.SHA256 = d.sha256

	if err := f.a.rewriteMeta(f.key, &meta); err != nil {
		f.a.logger.Warn("could not record the sha256 of a cached asset", "key", f.key, "error", err)
	}

	f.meta = &meta

	return d.sha256, nil
}

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

	return &fsAssetWriter{ctx: ctx, a: a, key: key, f: f, stream: newStreamDigest()}, nil
}

type fsAssetWriter struct {
	ctx  context.Context //nolint:containedctx // Commit is bound to the build that created the writer
	a    *FSAssets
	key  string
	f    *os.File
	done bool
	// stream digests what Write writes, as it goes; nil once the file may
	// have been written anywhere else (WriteAt, File), when Commit digests
	// the file instead.
	stream *streamDigest
}

func (w *fsAssetWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if w.stream != nil {
		w.stream.Write(p[:n]) //nolint:errcheck // never fails
	}

	return n, err
}

func (w *fsAssetWriter) WriteAt(p []byte, off int64) (int, error) {
	w.stream = nil

	return w.f.WriteAt(p, off)
}

func (w *fsAssetWriter) File() *os.File {
	w.stream = nil

	return w.f
}

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

	if err := w.ctx.Err(); err != nil {
		return err
	}

	// Not synced: an fsync here blocked a commit 65-120 ms (a 162 MiB ISO)
	// and 35-45 ms (a 2 GiB disk with 77 MiB of data) on ext4, and would
	// only make a build survive a power loss; the cache rebuilds what it
	// loses. It is not what keeps torn bytes from being served. After a
	// power loss the metadata's rename may be on disk before the asset's
	// data (ext4's delayed allocation writes the blocks later, in any
	// order), so an entry can come back shorter than its recorded size, or
	// with chunks that read as zeros (blocks never written, holes now), or,
	// on a file system that does not order data before metadata, with
	// another file's old blocks; its metadata file can come back empty. A
	// fresh process trusts no entry (FSAssets.verified starts empty): its
	// first Open of each checks the size, then the CRC-32C recorded at
	// Commit of every chunk (a chunk that is now a hole must have had the
	// CRC of zeros), and drops what does not match (ErrCorrupt: the build
	// runs again); unreadable metadata drops the entry too. Those CRCs are
	// computed from the page cache, the bytes as written, whether or not
	// they reached the disk, and SEEK_DATA counts written pages not yet on
	// disk as data (lseek(2)), so the digest pass below needs no sync
	// either. TestAssetTornByPowerLoss holds each of these cases.
	st, err := w.f.Stat()
	if err != nil {
		return err
	}

	var d digests

	if w.stream != nil && w.stream.n == st.Size() {
		d = w.stream.sum()
	} else if d, err = digest(w.ctx, w.f, st.Size(), false, true); err != nil {
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

	// The rename moved the file's ctime: the stamp trusted is the one after.
	st, err = w.f.Stat()
	w.f.Close()

	if err != nil {
		os.Remove(final) //nolint:errcheck // the entry is invisible without its metadata anyway

		return err
	}

	meta, _ := json.Marshal(assetMeta{Size: st.Size(), ETag: d.etag, CRC32C: d.crcs}) //nolint:errcheck // plain struct

	if err := writeFileAtomic(final+".json", meta); err != nil {
		os.Remove(final) //nolint:errcheck // the entry is invisible without its metadata anyway

		return err
	}

	w.a.mu.Lock()
	w.a.verified[w.key] = stampOf(st)
	w.a.mu.Unlock()

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
