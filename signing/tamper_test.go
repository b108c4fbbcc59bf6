package signing_test

import (
	"context"
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"

	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// lyingBlobs serves blob files as they are on disk, without the digest check
// ggcr's disk handler does in Stat: a registry that does not notice.
type lyingBlobs struct {
	registry.BlobHandler
	dir string
}

func (l lyingBlobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	fi, err := os.Stat(filepath.Join(l.dir, h.Algorithm, h.Hex))
	if err != nil {
		return 0, registry.ErrNotFound
	}
	return fi.Size(), nil
}

func (l lyingBlobs) Put(ctx context.Context, repo string, h v1.Hash, rc io.ReadCloser) error {
	return l.BlobHandler.(registry.BlobPutHandler).Put(ctx, repo, h, rc)
}

// TestTamperedBlobInRegistry alters the stored bytes of the signature
// payload blob behind the registry's back (same digest, other content), as
// a compromised mirror could.
func TestTamperedBlobInRegistry(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	blobs := t.TempDir()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithBlobHandler(lyingBlobs{registry.NewDiskBlobHandler(blobs), blobs})))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	repo, _ := name.NewRepository(u.Host + "/keys/tampered-blob")
	d, err := signingtest.PushRandomImage(f.ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := signingtest.SignLegacy(f.ctx, d, f.current); err != nil {
		t.Fatal(err)
	}
	st, _ := ociremote.SignatureTag(d)
	img, err := remote.Image(st)
	if err != nil {
		t.Fatal(err)
	}
	m, err := img.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	h := m.Layers[0].Digest
	p := filepath.Join(blobs, h.Algorithm, h.Hex)
	payload, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	// Same length, other image digest: only the blob digest can tell.
	altered := []byte(strings.Replace(string(payload), d.DigestStr()[7:17], "0123456789", 1))
	if err := os.WriteFile(p, altered, 0o644); err != nil {
		t.Fatal(err)
	}

	_, err = f.verifier(t).Verify(f.ctx, d)
	if err == nil {
		t.Fatal("Verify accepted a tampered signature blob")
	}
	t.Log(err)
	for _, w := range []string{d.String(), "no signature verifies", "legacy signature 0: reading", "error verifying sha256 checksum"} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not contain %q", err, w)
		}
	}
}

// TestRegistryFailureIsRefusal: a registry that refuses to serve signatures
// yields a refusal that says so, with the registry's error inside.
func TestRegistryFailureIsRefusal(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"errors":[{"code":"DENIED","message":"nope"}]}`, http.StatusForbidden)
	}))
	t.Cleanup(srv.Close)
	u, _ := url.Parse(srv.URL)
	d, err := name.NewDigest(u.Host + "/keys/denied@sha256:" + strings.Repeat("a", 64))
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.verifier(t).Verify(f.ctx, d)
	if !errors.Is(err, signing.ErrUntrusted) || !strings.Contains(err.Error(), "could not read signatures from the registry") {
		t.Fatalf("Verify = %v, want a refusal naming the registry failure", err)
	}
	var te *transport.Error
	if !errors.As(err, &te) || te.StatusCode != http.StatusForbidden {
		t.Errorf("errors.As(*transport.Error) = %v, want the registry's 403", te)
	}
}
