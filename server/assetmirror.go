package server

import (
	"bytes"
	"context"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/internal/checksums"
	"github.com/kiln-dev/kiln/internal/echo"
	"github.com/kiln-dev/kiln/internal/iox"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/storage"
)

// The files of an asset mirror directory, <version>/<file> in the layout of
// the Sidero air-gap plan's assetMirror.
const (
	mirrorDisk          = "metal-amd64.raw.xz"
	mirrorKernel        = "vmlinuz-amd64"
	mirrorInitramfs     = "initramfs-amd64.xz"
	mirrorImageCache    = "image-cache.oci"
	mirrorDiskWithCache = "metal-amd64-with-cache.raw.xz"
	mirrorChecksums     = "checksums.txt"
)

// mirrorFiles are the files of a schematic's mirror directory, checksums.txt
// last. The image cache and the disk carrying it are there only when the
// schematic embeds an image cache.
func mirrorFiles(sc *schematic.Schematic) []string {
	files := []string{mirrorDisk, mirrorKernel, mirrorInitramfs}
	if sc.Customization.ImageCache.Enabled() {
		files = append(files, mirrorImageCache, mirrorDiskWithCache)
	}

	return append(files, mirrorChecksums)
}

// maxSumMemo bounds the sha512 digests remembered: a few hundred mirror
// directories' worth.
const maxSumMemo = 1024

// assetMirror serves /assets/{schematic}/{version}/{file}: a schematic's boot
// assets under the names the Sidero air-gap plan's asset mirror uses, built
// on demand through the builder and its cache as /image/ builds them, with a
// checksums.txt that `sha512sum -c` checks.
type assetMirror struct {
	schematics *schematics
	builder    *builder.Builder
	releases   *artifacts.Manager
	errors     *factoryRoutes

	// sums remembers the sha512 of assets by their sha256 (which storage
	// computed and checks): checksums.txt would otherwise read every
	// file whole on each request.
	mu   sync.Mutex
	sums map[string]string
}

func newAssetMirror(sc *schematics, b *builder.Builder, rel *artifacts.Manager, errs *factoryRoutes) *assetMirror {
	return &assetMirror{schematics: sc, builder: b, releases: rel, errors: errs, sums: map[string]string{}}
}

func (m *assetMirror) register(mux *http.ServeMux) {
	mux.HandleFunc("GET /assets/{schematic}/{version}/{file}", m.serve)
	mux.HandleFunc("HEAD /assets/{schematic}/{version}/{file}", m.serve)
}

// errNotCached is what open answers, without building, for a file that is
// not built yet.
var errNotCached = errors.New("not built yet")

// serve answers one file. GET builds it (checksums.txt builds every file);
// HEAD, as on /image/, answers from the cache without building, and says
// X-Kiln-Cache: miss with no length for what is not built.
func (m *assetMirror) serve(w http.ResponseWriter, r *http.Request) {
	id, file := r.PathValue("schematic"), r.PathValue("file")
	build := r.Method != http.MethodHead

	_, sc, err := m.schematics.get(r.Context(), id)
	if err != nil {
		m.errors.writeError(w, r, err)

		return
	}

	files := mirrorFiles(sc)
	if !slices.Contains(files, file) {
		m.errors.writeError(w, r, status.Errorf(codes.NotFound, "no file %q in the asset mirror of schematic %s: it has %s",
			echo.Clip(file), id, strings.Join(files, ", ")))

		return
	}

	version, err := m.releases.CheckVersion(r.Context(), r.PathValue("version"))
	if err != nil {
		m.errors.writeError(w, r, err)

		return
	}

	if file == mirrorChecksums {
		m.serveChecksums(w, r, id, sc, version, files[:len(files)-1], build)

		return
	}

	asset, built, err := m.open(r.Context(), id, sc, version, file, build)
	if errors.Is(err, errNotCached) {
		setMirrorHeaders(w, file)
		w.Header().Set("X-Kiln-Cache", "miss")
		w.WriteHeader(http.StatusOK)

		return
	}

	if err != nil {
		m.errors.writeError(w, r, err)

		return
	}

	defer asset.Close()

	setMirrorHeaders(w, file)
	w.Header().Set("X-Kiln-Cache", cacheHeader(built))
	w.Header().Set("ETag", `"`+asset.ETag()+`"`)
	w.Header().Set("Content-Length", strconv.FormatInt(asset.Size(), 10))

	http.ServeContent(w, r, "", asset.ModTime(), asset)
}

func (m *assetMirror) serveChecksums(w http.ResponseWriter, r *http.Request, id string, sc *schematic.Schematic, version release.Version, files []string, build bool) {
	entries := make([]checksums.Entry, 0, len(files))
	anyBuilt := false

	for _, f := range files {
		asset, built, err := m.open(r.Context(), id, sc, version, f, build)
		if errors.Is(err, errNotCached) {
			setMirrorHeaders(w, mirrorChecksums)
			w.Header().Set("X-Kiln-Cache", "miss")
			w.WriteHeader(http.StatusOK)

			return
		}

		if err != nil {
			m.errors.writeError(w, r, fmt.Errorf("%s: %w", f, err))

			return
		}

		sum, err := m.sha512(r.Context(), asset)
		asset.Close()

		if err != nil {
			m.errors.writeError(w, r, fmt.Errorf("%s: %w", f, err))

			return
		}

		anyBuilt = anyBuilt || built
		entries = append(entries, checksums.Entry{Name: f, SHA512: sum})
	}

	body, err := checksums.Format(entries)
	if err != nil {
		m.errors.writeError(w, r, err)

		return
	}

	setMirrorHeaders(w, mirrorChecksums)
	w.Header().Set("X-Kiln-Cache", cacheHeader(anyBuilt))
	w.Header().Set("Cache-Control", "no-cache")

	http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
}

// open opens the asset behind a mirror file, building it if build, else
// only from the cache (errNotCached when it is not there).
func (m *assetMirror) open(ctx context.Context, id string, sc *schematic.Schematic, version release.Version, file string, build bool) (storage.Asset, bool, error) {
	v := version.String()

	switch file {
	case mirrorKernel:
		return m.asset(ctx, builder.Request{SchematicID: id, Version: v, Path: "kernel-amd64"}, build)
	case mirrorInitramfs:
		return m.asset(ctx, builder.Request{SchematicID: id, Version: v, Path: "initramfs-amd64.xz"}, build)
	case mirrorDiskWithCache:
		return m.asset(ctx, builder.Request{SchematicID: id, Version: v, Path: "metal-amd64.raw.xz"}, build)
	case mirrorDisk:
		diskID := id
		if sc.Customization.ImageCache.Enabled() {
			// kiln embeds a schematic's image cache in its disks: the
			// disk without it is the same schematic's without the
			// imageCache section (the public factory's ID for it),
			// stored as POST /schematics would store it.
			plain := *sc
			plain.Customization.ImageCache = schematic.ImageCache{}

			c, err := m.schematics.create(ctx, &plain)
			if err != nil {
				return nil, false, fmt.Errorf("the schematic without its image cache: %w", err)
			}

			diskID = c.id
		}

		return m.asset(ctx, builder.Request{SchematicID: diskID, Version: v, Path: "metal-amd64.raw.xz"}, build)
	case mirrorImageCache:
		ic := sc.Customization.ImageCache
		req := builder.CacheRequest{Images: ic.Images, Platforms: ic.Platforms, Layout: "oci"}

		if ic.Kubernetes {
			req.KubernetesForTalos = v
		}

		if len(req.Platforms) == 0 {
			req.Platforms = []string{"linux/amd64"}
		}

		if !build {
			a, err := m.builder.LookupImageCache(ctx, req)
			if errors.Is(err, storage.ErrNotFound) {
				return nil, false, errNotCached
			}

			return a, false, err
		}

		res, err := m.builder.ImageCache(ctx, req, nil)
		if err != nil {
			return nil, false, err
		}

		return res.Asset, !res.CacheHit, nil
	}

	return nil, false, fmt.Errorf("asset mirror file %q has no source", file)
}

func (m *assetMirror) asset(ctx context.Context, req builder.Request, build bool) (storage.Asset, bool, error) {
	if build {
		res, err := m.builder.Build(ctx, req, nil)
		if err != nil {
			return nil, false, err
		}

		return res.Asset, !res.CacheHit, nil
	}

	p, err := m.builder.Plan(ctx, req)
	if err != nil {
		return nil, false, err
	}

	a, err := m.builder.Lookup(ctx, p)
	if errors.Is(err, storage.ErrNotFound) {
		return nil, false, errNotCached
	}

	return a, false, err
}

// sha512 is the asset's sha512, read once per content.
func (m *assetMirror) sha512(ctx context.Context, a storage.Asset) (string, error) {
	m.mu.Lock()
	sum, ok := m.sums[a.ETag()]
	m.mu.Unlock()

	if ok {
		return sum, nil
	}

	h := sha512.New()
	if _, err := iox.Copy(ctx, h, io.NewSectionReader(a, 0, a.Size())); err != nil {
		return "", fmt.Errorf("sha512: %w", err)
	}

	sum = hex.EncodeToString(h.Sum(nil))

	m.mu.Lock()
	if len(m.sums) >= maxSumMemo {
		clear(m.sums)
	}

	m.sums[a.ETag()] = sum
	m.mu.Unlock()

	return sum, nil
}

func setMirrorHeaders(w http.ResponseWriter, file string) {
	ct := "application/octet-stream"

	switch file {
	case mirrorChecksums:
		ct = "text/plain; charset=utf-8"
	case mirrorImageCache:
		ct = "application/x-tar"
	}

	w.Header().Set("Content-Type", ct)
	w.Header().Set("Accept-Ranges", "bytes")
}
