package imagecache

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/kiln-dev/kiln/internal/iox"
)

// ociLayoutFile is the oci-layout file as go-containerregistry (and so
// talosctl) writes it.
const ociLayoutFile = `{
    "imageLayoutVersion": "1.0.0"
}`

// chunk is the copy buffer size: every blob moves in writes of this size.
const chunk = 1 << 20

// Stats describe a Write.
type Stats struct {
	Manifests   int   // manifest files written
	Blobs       int   // blob files written
	CachedBlobs int   // of which taken from the layer cache
	Fetched     int64 // bytes downloaded
	TreeBytes   int64 // bytes of the flat tree
	OutputBytes int64 // bytes of the output (the OCI layout's blobs, or the tree)
	Duration    time.Duration
}

// Write writes the cache p into dir: the flat tree, or the OCI layout when
// p was planned with Layout OCI. dir must not exist or be empty. Everything
// is written to temporary directories beside dir, synced, and renamed into
// place only when complete; on error nothing is left behind. Write uses
// opts for Jobs, LayerCache, Created, NoSync, Progress and Logger; the
// layout and platforms are the plan's.
func Write(ctx context.Context, p *Plan, dir string, opts Options) (Stats, error) {
	start := time.Now()

	var st Stats

	dir = filepath.Clean(dir)
	if err := checkEmpty(dir); err != nil {
		return st, err
	}

	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return st, fmt.Errorf("output parent: %w", err)
	}

	removeStaleTemp(parent, filepath.Base(dir), opts.logger())

	out, err := os.MkdirTemp(parent, tempPrefix(dir, p.layout.String()))
	if err != nil {
		return st, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(out) //nolint:errcheck // gone after the rename, else cleanup

	w := &writer{p: p, opts: opts, root: out, progress: opts.Progress, bufs: newChunks(-1)}
	w.total = p.Size()

	if p.layout == OCI {
		spools, err := os.MkdirTemp(parent, tempPrefix(dir, "spool"))
		if err != nil {
			return st, fmt.Errorf("temp dir: %w", err)
		}
		defer os.RemoveAll(spools) //nolint:errcheck // scratch

		if st.OutputBytes, err = w.writeOCI(ctx, spools); err != nil {
			return st, err
		}
	} else {
		if err := w.writeManifests(); err != nil {
			return st, err
		}

		if err := w.writeBlobs(ctx); err != nil {
			return st, err
		}

		st.OutputBytes = w.total
	}

	st.Manifests = len(p.manifests)
	st.Blobs = len(p.blobs)
	st.CachedBlobs = int(w.cached)
	st.Fetched = w.fetched
	st.TreeBytes = w.total

	if !opts.NoSync {
		if err := syncDir(out); err != nil {
			return st, err
		}
	}

	if err := os.Rename(out, dir); err != nil {
		return st, fmt.Errorf("rename into place: %w", err)
	}

	if err := os.Chmod(dir, 0o755); err != nil {
		return st, err
	}

	st.Duration = time.Since(start)
	w.emit(Event{Phase: PhaseDone, Done: w.done, Total: w.total})
	opts.logger().Info("image cache written", "dir", dir, "id", p.ID(), "layout", p.layout.String(),
		"blobs", st.Blobs, "cached", st.CachedBlobs, "bytes", st.TreeBytes, "duration", st.Duration)

	return st, nil
}

// The temporary directories of a Write sit beside its output, named
// .<output>.<kind>-<pid>-<random> (kind: oci, flat or spool). A process
// killed mid-write leaves them; the next Write to the same output removes
// those whose process is gone.
func tempPrefix(dir, kind string) string {
	return "." + filepath.Base(dir) + "." + kind + "-" + strconv.Itoa(os.Getpid()) + "-"
}

// removeStaleTemp removes the temporary directories of Writes to
// parent/base whose process no longer runs. Names without a process ID
// (an older kiln's) count as stale.
func removeStaleTemp(parent, base string, logger *slog.Logger) {
	entries, err := os.ReadDir(parent)
	if err != nil {
		return
	}

	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), "."+base+".")
		if !ok || !e.IsDir() {
			continue
		}

		kind, rest, ok := strings.Cut(rest, "-")
		if !ok || (kind != OCI.String() && kind != Flat.String() && kind != "spool") {
			continue
		}

		if pidText, _, ok := strings.Cut(rest, "-"); ok {
			if pid, err := strconv.Atoi(pidText); err == nil && pid > 0 && processAlive(pid) {
				continue
			}
		}

		path := filepath.Join(parent, e.Name())
		if err := os.RemoveAll(path); err != nil {
			logger.Warn("could not remove what an interrupted image cache write left", "path", path, "error", err)

			continue
		}

		logger.Info("removed what an interrupted image cache write left", "path", path)
	}
}

// processAlive reports whether a process with pid exists (signal 0 checks
// without sending anything; EPERM means it exists under another user).
func processAlive(pid int) bool {
	if pid == os.Getpid() {
		return true
	}

	err := unix.Kill(pid, 0)

	return err == nil || errors.Is(err, unix.EPERM)
}

// checkEmpty refuses an existing non-empty dir (rename replaces only an
// empty directory).
func checkEmpty(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}

	if err != nil {
		return fmt.Errorf("output %s: %w", dir, err)
	}

	if len(entries) > 0 {
		return fmt.Errorf("output %s: %w", dir, ErrExists)
	}

	return nil
}

type writer struct {
	p        *Plan
	opts     Options
	root     string
	progress func(Event)

	mu      sync.Mutex
	done    int64
	total   int64
	fetched int64
	cached  int64
	left    int     // blobs not yet written
	bufs    *chunks // staging buffers of output files
}

func (w *writer) emit(e Event) {
	if w.progress == nil {
		return
	}

	w.mu.Lock()
	defer w.mu.Unlock()

	w.progress(e)
}

func (w *writer) writeManifests() error {
	paths := make([]string, 0, len(w.p.manifests))
	for p := range w.p.manifests {
		paths = append(paths, p)
	}

	slices.Sort(paths)

	for _, p := range paths {
		full := filepath.Join(w.root, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return err
		}

		if err := os.WriteFile(full, w.p.manifests[p], 0o644); err != nil {
			return err
		}
	}

	return os.MkdirAll(filepath.Join(w.root, blobDir), 0o755)
}

// sortedBlobs lists the plan's blobs largest first, so that the longest
// downloads start first.
func (w *writer) sortedBlobs() []*blobSource {
	list := make([]*blobSource, 0, len(w.p.blobs))
	for _, b := range w.p.blobs {
		list = append(list, b)
	}

	sort.Slice(list, func(i, j int) bool {
		if list[i].size != list[j].size {
			return list[i].size > list[j].size
		}

		return list[i].digest.Hex < list[j].digest.Hex
	})

	return list
}

func (w *writer) layerCache() error {
	if w.opts.LayerCache == "" {
		return nil
	}

	if err := os.MkdirAll(filepath.Join(w.opts.LayerCache, "sha256"), 0o755); err != nil {
		return fmt.Errorf("layer cache: %w", err)
	}

	return nil
}

// cachePath is b's file in the layer cache, or "" without one.
func (w *writer) cachePath(b *blobSource) string {
	if w.opts.LayerCache == "" {
		return ""
	}

	return filepath.Join(w.opts.LayerCache, b.digest.Algorithm, b.digest.Hex)
}

// blobDone counts a written blob and reports it; it reports the end of the
// fetches (PhasePack) with the last blob of an OCI write.
func (w *writer) blobDone(b *blobSource, cached bool) {
	w.mu.Lock()
	w.done += b.size
	w.left--

	if cached {
		w.cached++
	} else if _, ok := w.p.inline[b.digest]; !ok {
		w.fetched += b.size
	}

	e := Event{Phase: PhaseBlob, Digest: b.digest.String(), Cached: cached, Done: w.done, Total: w.total}
	last := w.left == 0
	w.mu.Unlock()

	w.emit(e)

	if last && w.p.layout == OCI {
		w.emit(Event{Phase: PhasePack, Done: e.Done, Total: e.Total})
	}
}

// writeBlobs writes every blob of the flat tree once, largest first, at
// most Jobs at a time.
func (w *writer) writeBlobs(ctx context.Context) error {
	if err := w.layerCache(); err != nil {
		return err
	}

	list := w.sortedBlobs()
	w.left = len(list)

	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(w.opts.jobs())

	bufs := sync.Pool{New: func() any { b := make([]byte, chunk); return &b }}

	for _, b := range list {
		g.Go(func() error {
			buf := bufs.Get().(*[]byte)
			defer bufs.Put(buf)

			cached, err := w.blob(ctx, b, *buf)
			if err != nil {
				return fmt.Errorf("blob %s (from %s): %w", b.digest, b.repo, err)
			}

			w.blobDone(b, cached)

			return nil
		})
	}

	return g.Wait()
}

// blob writes one blob into the tree: from the plan's memory, the layer
// cache (linked when it can be), or the registry.
func (w *writer) blob(ctx context.Context, b *blobSource, buf []byte) (cached bool, err error) {
	dst := filepath.Join(w.root, filepath.FromSlash(blobPath(b.digest)))

	if data, ok := w.p.inline[b.digest]; ok {
		return false, os.WriteFile(dst, data, 0o644)
	}

	cachePath := w.cachePath(b)
	if cachePath != "" {
		hit, err := w.fromCache(cachePath, dst, b, buf)
		if hit || err != nil {
			return hit, err
		}
	}

	f, err := createOut(dst, !w.opts.NoSync, w.bufs)
	if err != nil {
		return false, err
	}

	if err := w.fetch(ctx, b, f, buf); err != nil {
		f.Close() //nolint:errcheck // already failing

		return false, err
	}

	if err := f.Close(); err != nil {
		return false, err
	}

	if cachePath != "" {
		w.toCache(dst, cachePath, b, buf)
	}

	return false, nil
}

// fetch copies b into dst: from local storage when the resolver offers
// it and holds b, else from the registry.
func (w *writer) fetch(ctx context.Context, b *blobSource, dst io.Writer, buf []byte) error {
	if err := ctx.Err(); err != nil {
		return err
	}

	if b.local != nil {
		f, err := b.local.OpenBlob(b.digest)
		if err == nil {
			defer f.Close()

			// Storage is not the registry's word for the bytes: check them.
			_, err = copyVerified(dst, iox.ContextReader(ctx, f), b.digest, b.size, buf)

			return err
		}

		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("local blob: %w", err)
		}
	}

	l, err := b.puller.Layer(ctx, b.repo.Digest(b.digest.String()))
	if err != nil {
		return classify(err)
	}

	rc, err := l.Compressed()
	if err != nil {
		return classify(err)
	}
	defer rc.Close()

	// go-containerregistry's remote layer already checks the digest and
	// size at EOF (and fails the read); hashing twice costs a core.
	n, err := copyTo(dst, rc, buf)
	if err == nil && b.size >= 0 && n != b.size {
		err = fmt.Errorf("%s: %d bytes, want %d: %w", b.digest, n, b.size, ErrDigest)
	}

	return classify(err)
}

// fromCache puts b's layer-cache entry at dst, reading it once to check
// it: linked when the cache shares dst's file system (entries are never
// written in place, so the tree can share them), else copied. A bad entry
// is removed and is a miss.
func (w *writer) fromCache(cachePath, dst string, b *blobSource, buf []byte) (hit bool, err error) {
	f, err := os.Open(cachePath)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}

	if err != nil {
		return false, fmt.Errorf("layer cache: %w", err)
	}
	defer f.Close()

	if os.Link(cachePath, dst) == nil {
		_, err = copyVerified(io.Discard, f, b.digest, b.size, buf)
	} else {
		err = writeFile(dst, f, b, buf, !w.opts.NoSync, w.bufs)
	}

	if err == nil {
		return true, nil
	}

	os.Remove(dst) //nolint:errcheck // refetched, or failing

	if errors.Is(err, ErrDigest) {
		os.Remove(cachePath) //nolint:errcheck // a corrupt entry, refetch

		return false, nil
	}

	return false, fmt.Errorf("from layer cache %s: %w", cachePath, err)
}

// openCached opens and verifies b's layer-cache entry; it returns nil for a
// miss. A bad entry is removed and is a miss.
func openCached(cachePath string, b *blobSource, buf []byte) (*os.File, error) {
	f, err := os.Open(cachePath)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("layer cache: %w", err)
	}

	if _, err := copyVerified(io.Discard, f, b.digest, b.size, buf); err != nil {
		f.Close() //nolint:errcheck // read-only

		if errors.Is(err, ErrDigest) {
			os.Remove(cachePath) //nolint:errcheck // a corrupt entry, refetch

			return nil, nil
		}

		return nil, fmt.Errorf("layer cache: %w", err)
	}

	return f, nil
}

// cacheTemp is a name beside a layer-cache entry, unique to this write, to
// rename into place: concurrent runs may share the cache.
func cacheTemp(path string) string {
	return fmt.Sprintf("%s.tmp-%d-%d", path, os.Getpid(), time.Now().UnixNano())
}

// toCache adds a verified blob to the layer cache (hard link, else copy),
// through a temp name; failures only cost a later download.
func (w *writer) toCache(src, cachePath string, b *blobSource, buf []byte) {
	tmp := cacheTemp(cachePath)

	if err := os.Link(src, tmp); err != nil {
		in, err := os.Open(src)
		if err != nil {
			return
		}
		defer in.Close()

		if err := writeFile(tmp, in, b, buf, false, w.bufs); err != nil {
			os.Remove(tmp) //nolint:errcheck // best effort

			return
		}
	}

	if err := os.Rename(tmp, cachePath); err != nil {
		os.Remove(tmp) //nolint:errcheck // best effort
		w.opts.logger().Warn("layer cache", "blob", b.digest.String(), "err", err)
	}
}

// writeFile copies r to a new file at dst in chunk-sized writes, checking
// the digest and size at EOF.
func writeFile(dst string, r io.Reader, b *blobSource, buf []byte, sync bool, pool *chunks) error {
	f, err := createOut(dst, sync, pool)
	if err != nil {
		return err
	}

	if _, err := copyVerified(f, r, b.digest, b.size, buf); err != nil {
		f.Close() //nolint:errcheck // already failing

		return err
	}

	return f.Close()
}

// onlyWriter and onlyReader hide ReadFrom/WriteTo so that io.CopyBuffer
// uses the buffer (and its size) for every write.
type onlyWriter struct{ io.Writer }

type onlyReader struct{ io.Reader }

// copyTo copies src to dst through buf, or, for an output file or a
// spool, into their own chunks.
func copyTo(dst io.Writer, src io.Reader, buf []byte) (int64, error) {
	switch d := dst.(type) {
	case *outFile:
		return d.readFrom(src, buf)
	case *spool:
		return d.readFrom(src, buf)
	}

	return io.CopyBuffer(onlyWriter{dst}, onlyReader{src}, buf)
}

// copyVerified copies src to dst through buf, hashing as it goes, and fails
// with ErrDigest if the bytes are not want (or not size bytes, size ≥ 0).
func copyVerified(dst io.Writer, src io.Reader, want v1.Hash, size int64, buf []byte) (int64, error) {
	if want.Algorithm != "sha256" {
		return 0, fmt.Errorf("digest algorithm %q: %w", want.Algorithm, ErrInvalid)
	}

	h := sha256.New()

	n, err := copyTo(dst, io.TeeReader(src, h), buf)
	if err != nil {
		return n, err
	}

	if size >= 0 && n != size {
		return n, fmt.Errorf("%s: %d bytes, want %d: %w", want, n, size, ErrDigest)
	}

	if got := hex.EncodeToString(h.Sum(nil)); got != want.Hex {
		return n, fmt.Errorf("%s: got sha256:%s: %w", want, got, ErrDigest)
	}

	return n, nil
}

// syncDir flushes the file system holding dir (one syncfs instead of an
// fsync per file) before the rename makes it visible.
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()

	if err := unix.Syncfs(int(f.Fd())); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}

	return nil
}

// writeOCI writes the OCI layout into w.root. The blobs are fetched in the
// order the layer's tar holds them, Jobs at a time, each into a spool under
// scratch, and packed as they arrive: the flat tree is never written out.
// It returns the bytes of the layout.
func (w *writer) writeOCI(ctx context.Context, scratch string) (int64, error) {
	if err := w.layerCache(); err != nil {
		return 0, err
	}

	dir := filepath.Join(w.root, "blobs", "sha256")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return 0, err
	}

	entries, blobs := w.p.treeEntries()
	w.left = len(blobs)

	if len(blobs) == 0 {
		w.emit(Event{Phase: PhasePack, Total: w.total})
	}

	pool := newChunks(w.opts.spoolLimit())
	spools := make([]*spool, len(blobs))

	for i, b := range blobs {
		spools[i] = newSpool(pool, func() (*os.File, string, error) {
			path := filepath.Join(scratch, fileName(b.digest))
			f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)

			return f, path, err
		})
		spools[i].waitMem = true
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)

	var (
		wg   sync.WaitGroup
		next atomic.Int64
	)

	for range min(w.opts.jobs(), len(blobs)) {
		wg.Go(func() {
			buf := make([]byte, chunk)

			// Every spool is finished, even after a failure, so that the
			// packer never waits for one that nobody will fill.
			for i := int(next.Add(1) - 1); i < len(blobs); i = int(next.Add(1) - 1) {
				b := blobs[i]

				cached, err := w.spoolBlob(ctx, b, spools[i], buf)
				if err != nil {
					err = fmt.Errorf("blob %s (from %s): %w", b.digest, b.repo, err)
					spools[i].finish(err)
					cancel(err)

					continue
				}

				w.blobDone(b, cached)
			}
		})
	}

	layer, err := w.packTar(ctx, entries, blobs, spools, dir)
	if err != nil {
		cancel(err)

		// Workers waiting for memory the packer will not free.
		for _, s := range spools {
			s.abandon()
		}
	}

	wg.Wait()

	for _, s := range spools {
		s.close()
	}

	if err != nil {
		// The first failure is the cause; the packer may only have seen the
		// cancellation it caused.
		if cause := context.Cause(ctx); cause != nil && errors.Is(err, context.Canceled) {
			err = cause
		}

		return 0, err
	}

	return writeLayout(w.root, layer, w.p.outer, w.opts.Created)
}

// spoolBlob fills s with b: from the plan's memory, the layer cache (the
// verified entry itself), or the registry (copied into the layer cache on
// the way, when there is one).
func (w *writer) spoolBlob(ctx context.Context, b *blobSource, s *spool, buf []byte) (cached bool, err error) {
	if data, ok := w.p.inline[b.digest]; ok {
		s.complete(data, nil, int64(len(data)))

		return false, nil
	}

	cachePath := w.cachePath(b)
	if cachePath == "" {
		if err := w.fetch(ctx, b, s, buf); err != nil {
			return false, err
		}

		s.finish(nil)

		return false, nil
	}

	f, err := openCached(cachePath, b, buf)
	if err != nil {
		return false, err
	}

	if f != nil {
		s.complete(nil, f, b.size)

		return true, nil
	}

	entry := newCacheEntry(cachePath)
	if err := w.fetch(ctx, b, io.MultiWriter(s, entry), buf); err != nil {
		entry.discard()

		return false, err
	}

	s.finish(nil)
	entry.commit(w.opts.logger(), b)

	return false, nil
}

// cacheEntry writes a layer-cache entry beside its final name. It never
// fails the write it rides along with: a cache that cannot be written only
// costs a later download.
type cacheEntry struct {
	path string
	tmp  string
	f    *os.File
	err  error
}

func newCacheEntry(path string) *cacheEntry {
	e := &cacheEntry{path: path, tmp: cacheTemp(path)}
	e.f, e.err = os.OpenFile(e.tmp, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)

	return e
}

func (e *cacheEntry) Write(p []byte) (int, error) {
	if e.err == nil {
		_, e.err = e.f.Write(p)
	}

	return len(p), nil
}

func (e *cacheEntry) discard() {
	if e.f != nil {
		e.f.Close()      //nolint:errcheck // discarded
		os.Remove(e.tmp) //nolint:errcheck // best effort
	}
}

// commit renames a complete entry into place; the blob was verified by the
// fetch it rode along with.
func (e *cacheEntry) commit(log *slog.Logger, b *blobSource) {
	if e.f == nil {
		return
	}

	if err := e.f.Close(); e.err == nil {
		e.err = err
	}

	if e.err == nil {
		e.err = os.Rename(e.tmp, e.path)
	}

	if e.err != nil {
		os.Remove(e.tmp) //nolint:errcheck // best effort
		log.Warn("layer cache", "blob", b.digest.String(), "err", e.err)
	}
}
