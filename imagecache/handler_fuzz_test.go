package imagecache

import (
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzHandler: no request makes Handler panic, answer with a status other
// than these, or serve a byte of a file beside its tree.
func FuzzHandler(f *testing.F) {
	root := f.TempDir()
	tree := filepath.Join(root, "tree")
	// No byte of it is in anything the tree serves, so that any part of
	// it in a body (a range of it) is a leak.
	secret := "\xff\xfe\xfd\xfc\xfb\xfa"

	hexOf := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return hex.EncodeToString(sum[:])
	}

	blob := "layer bytes"
	manifest := `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","layers":[]}`
	files := map[string]string{
		"../secret":                                         secret,
		"blob/sha256-" + hexOf(blob):                        blob,
		"blob/sha256-" + hexOf(secret):                      "not the secret",
		"manifests/ghcr.io/siderolabs/kubelet/reference/v1": manifest,
		"manifests/ghcr.io/siderolabs/kubelet/digest/sha256-" + hexOf(manifest): manifest,
		"manifests/127.0.0.1_5000_/app/reference/v1":                            manifest,
		"manifests/127.0.0.1_5000_/app/digest/sha256-" + hexOf(manifest):        manifest,
		"manifests/docker.io/library/busybox/reference/1":                       manifest,
		"manifests/docker.io/library/busybox/digest/sha256-" + hexOf(manifest):  manifest,
	}

	for name, data := range files {
		p := filepath.Join(tree, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			f.Fatal(err)
		}

		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			f.Fatal(err)
		}
	}

	h := Handler(tree)

	for _, s := range []struct{ method, path, ns, rng string }{
		{"GET", "/v2/", "", ""},
		{"GET", "/v2/siderolabs/kubelet/manifests/v1", "", ""},
		{"HEAD", "/v2/siderolabs/kubelet/manifests/sha256:" + hexOf(manifest), "ghcr.io", ""},
		{"GET", "/v2/app/manifests/v1", "127.0.0.1:5000", ""},
		{"GET", "/v2/busybox/manifests/1", "docker.io", ""},
		{"GET", "/v2/x/blobs/sha256:" + hexOf(blob), "", "bytes=2-5"},
		{"GET", "/v2/../secret", "", ""},
		{"GET", "/v2/siderolabs/kubelet/manifests/..", "../..", ""},
		{"PUT", "/v2/x/blobs/uploads/", "", ""},
	} {
		f.Add(s.method, s.path, s.ns, s.rng)
	}

	f.Fuzz(func(t *testing.T, method, p, ns, rng string) {
		req := &http.Request{
			Method: method,
			URL:    &url.URL{Path: p, RawQuery: url.Values{"ns": {ns}}.Encode()},
			Header: http.Header{"Range": {rng}},
		}

		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)

		switch rec.Code {
		case http.StatusOK, http.StatusPartialContent, http.StatusBadRequest, http.StatusNotFound,
			http.StatusMethodNotAllowed, http.StatusRequestedRangeNotSatisfiable:
		default:
			t.Errorf("%s %q ns=%q range=%q: status %d", method, p, ns, rng, rec.Code)
		}

		if body := rec.Body.String(); body != "" && strings.Contains(secret, body) {
			t.Errorf("%s %q ns=%q range=%q served %q from outside the tree", method, p, ns, rng, body)
		}
	})
}
