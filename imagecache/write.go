package imagecache

import (
	"archive/tar"
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	v1 "github.com/google/go-containerregistry/pkg/v1"
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
// opts for Jobs, LayerCache, Created, Progress and Logger; the layout and
// platforms are the plan's.
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

	tree, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".tree-")
	if err != nil {
		return st, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(tree) //nolint:errcheck // gone after the rename, else cleanup

	w := &writer{p: p, opts: opts, root: tree, progress: opts.Progress}
	w.total = p.Size()

	if err := w.writeManifests(); err != nil {
		return st, err
	}

	if err := w.writeBlobs(ctx); err != nil {
		return st, err
	}

	st.Manifests = len(p.manifests)
	st.Blobs = len(p.blobs)
	st.CachedBlobs = int(w.cached)
	st.Fetched = w.fetched
	st.TreeBytes = p.Size()

	out := tree

	if p.layout == OCI {
		w.emit(Event{Phase: PhasePack, Done: w.done, Total: w.total})

		layoutDir, err := os.MkdirTemp(parent, "."+filepath.Base(dir)+".oci-")
		if err != nil {
			return st, fmt.Errorf("temp dir: %w", err)
		}
		defer os.RemoveAll(layoutDir) //nolint:errcheck // as above

		n, err := pack(ctx, tree, layoutDir, p.outer, opts.Created)
		if err != nil {
			return st, err
		}

		st.OutputBytes = n
		out = layoutDir
	} else {
		st.OutputBytes = st.TreeBytes
	}

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

// writeBlobs fetches every blob once, largest first, at most Jobs at a time.
func (w *writer) writeBlobs(ctx context.Context) error {
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

	if w.opts.LayerCache != "" {
		if err := os.MkdirAll(filepath.Join(w.opts.LayerCache, "sha256"), 0o755); err != nil {
			return fmt.Errorf("layer cache: %w", err)
		}
	}

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

			w.mu.Lock()
			w.done += b.size
			if cached {
				w.cached++
			} else if _, ok := w.p.inline[b.digest]; !ok {
				w.fetched += b.size
			}
			e := Event{Phase: PhaseBlob, Digest: b.digest.String(), Cached: cached, Done: w.done, Total: w.total}
			w.mu.Unlock()

			w.emit(e)

			return nil
		})
	}

	return g.Wait()
}

// blob writes one blob into the tree: from the plan's memory, the layer
// cache, or the registry, checking digest and size while copying.
func (w *writer) blob(ctx context.Context, b *blobSource, buf []byte) (cached bool, err error) {
	dst := filepath.Join(w.root, filepath.FromSlash(blobPath(b.digest)))

	if data, ok := w.p.inline[b.digest]; ok {
		return false, os.WriteFile(dst, data, 0o644)
	}

	var cachePath string
	if w.opts.LayerCache != "" {
		cachePath = filepath.Join(w.opts.LayerCache, b.digest.Algorithm, b.digest.Hex)

		if ok, err := copyFromCache(cachePath, dst, b, buf); err != nil {
			return false, err
		} else if ok {
			return true, nil
		}
	}

	if err := ctx.Err(); err != nil {
		return false, err
	}

	l, err := b.puller.Layer(ctx, b.repo.Digest(b.digest.String()))
	if err != nil {
		return false, classify(err)
	}

	rc, err := l.Compressed()
	if err != nil {
		return false, classify(err)
	}
	defer rc.Close()

	// go-containerregistry's remote layer already checks the digest and
	// size at EOF (and fails the read); hashing twice costs a core.
	if err := writeFileTrusted(dst, rc, b, buf); err != nil {
		return false, classify(err)
	}

	if cachePath != "" {
		w.toCache(dst, cachePath, b, buf)
	}

	return false, nil
}

// copyFromCache copies a cached blob, verifying it; a bad entry is removed
// and reported as a miss.
func copyFromCache(cachePath, dst string, b *blobSource, buf []byte) (bool, error) {
	f, err := os.Open(cachePath)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}

	if err != nil {
		return false, fmt.Errorf("layer cache: %w", err)
	}
	defer f.Close()

	if err := writeFile(dst, f, b, buf); err != nil {
		if errors.Is(err, ErrDigest) {
			os.Remove(cachePath) //nolint:errcheck // a corrupt entry, refetch
			os.Remove(dst)       //nolint:errcheck // rewritten below

			return false, nil
		}

		return false, err
	}

	return true, nil
}

// toCache adds a verified blob to the layer cache (hard link, else copy),
// through a temp name; failures only cost a later download.
func (w *writer) toCache(src, cachePath string, b *blobSource, buf []byte) {
	tmp := fmt.Sprintf("%s.tmp-%d-%d", cachePath, os.Getpid(), time.Now().UnixNano())

	if err := os.Link(src, tmp); err != nil {
		in, err := os.Open(src)
		if err != nil {
			return
		}
		defer in.Close()

		if err := writeFile(tmp, in, b, buf); err != nil {
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
func writeFile(dst string, r io.Reader, b *blobSource, buf []byte) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}

	if _, err := copyVerified(f, r, b.digest, b.size, buf); err != nil {
		f.Close() //nolint:errcheck // already failing

		return err
	}

	return f.Close()
}

// writeFileTrusted is writeFile for a reader that verifies the digest
// itself; only the size is checked here.
func writeFileTrusted(dst string, r io.Reader, b *blobSource, buf []byte) error {
	f, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}

	n, err := io.CopyBuffer(onlyWriter{f}, onlyReader{r}, buf)
	if err == nil && b.size >= 0 && n != b.size {
		err = fmt.Errorf("%s: %d bytes, want %d: %w", b.digest, n, b.size, ErrDigest)
	}

	if err != nil {
		f.Close() //nolint:errcheck // already failing

		return err
	}

	return f.Close()
}

// onlyWriter and onlyReader hide ReadFrom/WriteTo so that io.CopyBuffer
// uses the buffer (and its size) for every write.
type onlyWriter struct{ io.Writer }

type onlyReader struct{ io.Reader }

// copyVerified copies src to dst through buf, hashing as it goes, and fails
// with ErrDigest if the bytes are not want (or not size bytes, size ≥ 0).
func copyVerified(dst io.Writer, src io.Reader, want v1.Hash, size int64, buf []byte) (int64, error) {
	if want.Algorithm != "sha256" {
		return 0, fmt.Errorf("digest algorithm %q: %w", want.Algorithm, ErrInvalid)
	}

	h := sha256.New()

	n, err := io.CopyBuffer(onlyWriter{io.MultiWriter(dst, h)}, onlyReader{src}, buf)
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

// pack writes the OCI layout of the tree into out, as talosctl does: an
// OCI image (OCI manifest and config, created, one gzip layer of the tree)
// in a layout whose index.json has a single descriptor with the platform.
// It returns the bytes written.
func pack(ctx context.Context, tree, out string, platform v1.Platform, created time.Time) (int64, error) {
	blobs := filepath.Join(out, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return 0, err
	}

	layer, err := packLayer(ctx, tree, blobs)
	if err != nil {
		return 0, fmt.Errorf("pack tree: %w", err)
	}

	if created.IsZero() {
		created = time.Unix(0, 0)
	}

	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)

	img, err = mutate.CreatedAt(img, v1.Time{Time: created.UTC()})
	if err != nil {
		return 0, err
	}

	img, err = mutate.AppendLayers(img, layer)
	if err != nil {
		return 0, err
	}

	cfg, err := img.RawConfigFile()
	if err != nil {
		return 0, err
	}

	cfgName, err := img.ConfigName()
	if err != nil {
		return 0, err
	}

	man, err := img.RawManifest()
	if err != nil {
		return 0, err
	}

	manDigest, err := img.Digest()
	if err != nil {
		return 0, err
	}

	idx := mutate.AppendManifests(empty.Index, mutate.IndexAddendum{
		Add: img,
		Descriptor: v1.Descriptor{
			MediaType: types.OCIManifestSchema1,
			Size:      int64(len(man)),
			Digest:    manDigest,
			Platform:  &platform,
		},
	})

	index, err := idx.RawManifest()
	if err != nil {
		return 0, err
	}

	files := []struct {
		path string
		data []byte
	}{
		{filepath.Join(blobs, cfgName.Hex), cfg},
		{filepath.Join(blobs, manDigest.Hex), man},
		{filepath.Join(out, "oci-layout"), []byte(ociLayoutFile)},
		{filepath.Join(out, "index.json"), index},
	}

	n := layer.size

	for _, f := range files {
		if err := os.WriteFile(f.path, f.data, 0o644); err != nil {
			return 0, err
		}

		n += int64(len(f.data))
	}

	return n, nil
}

// fileLayer is the packed tree: a gzip file whose digests were computed
// while it was written.
type fileLayer struct {
	path           string
	digest, diffID v1.Hash
	size           int64
}

var _ v1.Layer = (*fileLayer)(nil)

func (l *fileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *fileLayer) Size() (int64, error)                { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

func (l *fileLayer) Uncompressed() (io.ReadCloser, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}

	zr, err := gzip.NewReader(f)
	if err != nil {
		f.Close() //nolint:errcheck // already failing

		return nil, err
	}

	return struct {
		io.Reader
		io.Closer
	}{zr, f}, nil
}

// packLayer streams the tree as a tar (entries sorted by path, directories
// included, modes 0755/0644, no times or owners: what talosctl's filemap
// writes) through gzip into blobs/<digest>, hashing both streams.
func packLayer(ctx context.Context, tree, blobs string) (*fileLayer, error) {
	type entry struct {
		rel  string
		full string
		dir  bool
		size int64
	}

	var entries []entry

	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		rel, err := filepath.Rel(tree, p)
		if err != nil || rel == "." {
			return err
		}

		e := entry{rel: filepath.ToSlash(rel), full: p, dir: d.IsDir()}
		if !e.dir {
			info, err := d.Info()
			if err != nil {
				return err
			}

			e.size = info.Size()
		}

		entries = append(entries, e)

		return nil
	})
	if err != nil {
		return nil, err
	}

	slices.SortFunc(entries, func(a, b entry) int {
		switch {
		case a.rel < b.rel:
			return -1
		case a.rel > b.rel:
			return 1
		}

		return 0
	})

	tmp, err := os.CreateTemp(blobs, ".layer-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name()) //nolint:errcheck // renamed on success

	compressed := sha256.New()
	cw := &countWriter{h: compressed}
	bw := bufio.NewWriterSize(io.MultiWriter(tmp, cw), chunk)

	zw, err := gzip.NewWriterLevel(bw, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}

	uncompressed := sha256.New()
	tw := tar.NewWriter(io.MultiWriter(zw, uncompressed))
	buf := make([]byte, chunk)

	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}

		if e.dir {
			if err := tw.WriteHeader(&tar.Header{Name: e.rel, Mode: 0o755, Typeflag: tar.TypeDir}); err != nil {
				return nil, err
			}

			continue
		}

		if err := tw.WriteHeader(&tar.Header{Name: e.rel, Mode: 0o644, Size: e.size}); err != nil {
			return nil, err
		}

		f, err := os.Open(e.full)
		if err != nil {
			return nil, err
		}

		_, err = io.CopyBuffer(onlyWriter{tw}, onlyReader{f}, buf)
		f.Close() //nolint:errcheck // read-only

		if err != nil {
			return nil, fmt.Errorf("%s: %w", e.rel, err)
		}
	}

	if err := tw.Close(); err != nil {
		return nil, err
	}

	if err := zw.Close(); err != nil {
		return nil, err
	}

	if err := bw.Flush(); err != nil {
		return nil, err
	}

	if err := tmp.Close(); err != nil {
		return nil, err
	}

	l := &fileLayer{
		digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(compressed.Sum(nil))},
		diffID: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(uncompressed.Sum(nil))},
		size:   cw.n,
	}
	l.path = filepath.Join(blobs, l.digest.Hex)

	if err := os.Rename(tmp.Name(), l.path); err != nil {
		return nil, err
	}

	return l, os.Chmod(l.path, 0o644)
}

type countWriter struct {
	h hash.Hash
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	c.n += int64(len(p))

	return c.h.Write(p)
}
