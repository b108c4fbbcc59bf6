package imagecache

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"os"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Handler serves a flat tree in dir as a read-only registry, by the rules
// of Talos' registryd:
//
//   - GET/HEAD /v2/ answers 200.
//   - /v2/<name>/blobs/sha256:<hex> is blob/sha256-<hex>, whatever <name>.
//   - /v2/<name>/manifests/<tag> reads manifests/<registry>/<name>/reference/<tag>
//     and serves it only if digest/sha256-<its hash> holds the same bytes;
//     /v2/<name>/manifests/sha256:<hex> is digest/sha256-<hex>.
//   - <registry> is the "ns" query parameter (containerd's mirror
//     requests), "host:port" written "host_port_"; without it, the first
//     directory under manifests/ (sorted) holding <name>/reference, with
//     Docker Hub names normalised (busybox → library/busybox).
//   - Content-Type is the manifest's mediaType (inferred for OCI manifests
//     without one), Docker-Content-Digest is set, Range and HEAD work.
//
// One extension: a <name> that starts with a registry directory of the tree
// ("registry.k8s.io/pause") is found there too, so that clients such as
// crane can name any image without the ns parameter.
func Handler(dir string) http.Handler {
	return &handler{root: os.DirFS(dir)}
}

type handler struct {
	root fs.FS
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "read-only registry", http.StatusMethodNotAllowed)

		return
	}

	p := strings.TrimSuffix(path.Clean(r.URL.Path), "/")
	if p == "/v2" || p == "/healthz" {
		w.WriteHeader(http.StatusOK)

		return
	}

	rest, ok := strings.CutPrefix(p, "/v2/")
	if !ok {
		http.NotFound(w, r)

		return
	}

	parts := strings.Split(rest, "/")
	if len(parts) < 3 {
		http.NotFound(w, r)

		return
	}

	kind, id := parts[len(parts)-2], parts[len(parts)-1]
	repo := strings.Join(parts[:len(parts)-2], "/")

	switch kind {
	case "blobs":
		h.blob(w, r, id)
	case "manifests":
		h.manifest(w, r, repo, id, r.URL.Query().Get("ns"))
	default:
		http.NotFound(w, r)
	}
}

func (h *handler) blob(w http.ResponseWriter, r *http.Request, id string) {
	d, err := v1.NewHash(id)
	if err != nil {
		http.Error(w, "bad digest", http.StatusBadRequest)

		return
	}

	h.serveFile(w, r, blobPath(d), d, "application/octet-stream")
}

func (h *handler) manifest(w http.ResponseWriter, r *http.Request, repo, id, ns string) {
	dir, ok := h.findRepo(repo, ns)
	if !ok {
		http.NotFound(w, r)

		return
	}

	var d v1.Hash

	if strings.HasPrefix(id, "sha256:") {
		var err error
		if d, err = v1.NewHash(id); err != nil {
			http.Error(w, "bad digest", http.StatusBadRequest)

			return
		}
	} else {
		tagged, err := fs.ReadFile(h.root, referencePath(dir, id))
		if err != nil {
			http.NotFound(w, r)

			return
		}

		sum := sha256.Sum256(tagged)
		d = v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(sum[:])}

		byDigest, err := fs.ReadFile(h.root, digestPath(dir, d))
		if err != nil || !bytes.Equal(byDigest, tagged) {
			http.Error(w, "tag and digest files differ", http.StatusInternalServerError)

			return
		}
	}

	data, err := fs.ReadFile(h.root, digestPath(dir, d))
	if err != nil {
		http.NotFound(w, r)

		return
	}

	mt, ok := manifestType(data)
	if !ok {
		http.Error(w, "manifest without media type", http.StatusInternalServerError)

		return
	}

	w.Header().Set("Content-Type", mt)
	w.Header().Set("Docker-Content-Digest", d.String())
	http.ServeContent(w, r, "", zeroTime, bytes.NewReader(data))
}

// findRepo is the tree directory (manifests/<registry>/<repo>) of a
// requested repository name.
func (h *handler) findRepo(repo, ns string) (string, bool) {
	has := func(registry, repo string) (string, bool) {
		r, err := name.NewRepository(untreeRegistry(registry) + "/" + repo)
		if err != nil {
			return "", false
		}

		dir := path.Join(manifestsDir, registry, r.RepositoryStr())
		if _, err := fs.Stat(h.root, dir); err != nil {
			return "", false
		}

		return dir, true
	}

	if ns != "" {
		return has(treeRegistry(ns, ns), repo)
	}

	entries, err := fs.ReadDir(h.root, manifestsDir)
	if err != nil {
		return "", false
	}

	for _, e := range entries {
		if _, err := fs.Stat(h.root, path.Join(manifestsDir, e.Name(), repoPath(e.Name(), repo), referenceDir)); err == nil {
			return has(e.Name(), repo)
		}
	}

	// Extension: "<registry dir>/<repo>".
	if first, rest, ok := strings.Cut(repo, "/"); ok {
		for _, e := range entries {
			if e.Name() == first || e.Name() == treeRegistry(first, first) {
				return has(e.Name(), rest)
			}
		}
	}

	return "", false
}

// repoPath normalises a repository name for a registry directory (Docker
// Hub's library/ prefix).
func repoPath(registry, repo string) string {
	r, err := name.NewRepository(untreeRegistry(registry) + "/" + repo)
	if err != nil {
		return repo
	}

	return r.RepositoryStr()
}

func (h *handler) serveFile(w http.ResponseWriter, r *http.Request, p string, d v1.Hash, contentType string) {
	f, err := h.root.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		http.NotFound(w, r)

		return
	}

	if err != nil {
		http.Error(w, "read error", http.StatusInternalServerError)

		return
	}
	defer f.Close()

	rs, ok := f.(interface {
		Read([]byte) (int, error)
		Seek(int64, int) (int64, error)
	})
	if !ok {
		http.Error(w, "not seekable", http.StatusInternalServerError)

		return
	}

	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Docker-Content-Digest", d.String())
	http.ServeContent(w, r, "", zeroTime, rs)
}

// manifestType is the media type of a manifest, inferred for OCI manifests
// that omit it.
func manifestType(data []byte) (string, bool) {
	var m struct {
		MediaType string          `json:"mediaType"`
		Manifests json.RawMessage `json:"manifests"`
		Layers    json.RawMessage `json:"layers"`
		Config    json.RawMessage `json:"config"`
	}

	if err := json.Unmarshal(data, &m); err != nil {
		return "", false
	}

	switch {
	case m.MediaType != "":
		return m.MediaType, true
	case m.Manifests != nil:
		return string(types.OCIImageIndex), true
	case m.Layers != nil || m.Config != nil:
		return string(types.OCIManifestSchema1), true
	}

	return "", false
}
