package imagecache

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/registry"
)

// countBlobs counts blob requests on their way to the registry.
type countBlobs struct {
	rt    http.RoundTripper
	blobs atomic.Int64
}

func (c *countBlobs) RoundTrip(r *http.Request) (*http.Response, error) {
	if strings.Contains(r.URL.Path, "/blobs/") {
		c.blobs.Add(1)
	}

	return c.rt.RoundTrip(r)
}

// TestLocalBlobs: with kiln's embedded registry as the source, Write reads
// blobs from its storage (no blob request reaches the registry), writes the
// same tree as through the registry, and refuses a corrupted stored blob
// by name, leaving nothing behind.
func TestLocalBlobs(t *testing.T) {
	storage := t.TempDir()

	e, err := registry.NewEmbedded(t.Context(), storage)
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { e.Close() }) //nolint:errcheck // test teardown

	srv := httptest.NewServer(e)
	t.Cleanup(srv.Close)

	f := newFixtureAt(t, strings.TrimPrefix(srv.URL, "http://"), 256<<10, 2)
	refs := f.benchRefs()
	count := &countBlobs{rt: registry.Transport(e)}
	local := DirectResolver{NameOptions: []name.Option{name.Insecure}, Remote: []remote.Option{remote.WithTransport(count)}, LocalBlobs: e}
	viaRegistry := DirectResolver{NameOptions: []name.Option{name.Insecure}}

	for _, layout := range []Layout{Flat, OCI} {
		t.Run(layout.String(), func(t *testing.T) {
			opts := Options{Platforms: []string{"all"}, Layout: layout, Signatures: true, Logger: quiet()}

			p, err := NewPlan(t.Context(), refs, local, nil, opts)
			if err != nil {
				t.Fatal(err)
			}

			count.blobs.Store(0)

			out := filepath.Join(t.TempDir(), "local")
			if _, err := Write(t.Context(), p, out, opts); err != nil {
				t.Fatal(err)
			}

			if n := count.blobs.Load(); n != 0 {
				t.Errorf("%d blob requests reached the registry", n)
			}

			pr, err := NewPlan(t.Context(), refs, viaRegistry, nil, opts)
			if err != nil {
				t.Fatal(err)
			}

			want := filepath.Join(t.TempDir(), "registry")
			if _, err := Write(t.Context(), pr, want, opts); err != nil {
				t.Fatal(err)
			}

			if layout == OCI {
				diffTrees(t, untar(t, ociLayer(t, readTree(t, out))), untar(t, ociLayer(t, readTree(t, want))))
			} else {
				diffTrees(t, readTree(t, out), readTree(t, want))
			}
		})
	}

	// Corrupt the largest stored blob.
	opts := Options{Platforms: []string{"linux/amd64"}, Layout: Flat, Signatures: true, Logger: quiet()}

	p, err := NewPlan(t.Context(), refs, local, nil, opts)
	if err != nil {
		t.Fatal(err)
	}

	var victim *blobSource
	for _, b := range p.blobs {
		if victim == nil || b.size > victim.size {
			victim = b
		}
	}

	sf, err := e.OpenBlob(victim.digest)
	if err != nil {
		t.Fatal(err)
	}

	path := sf.Name()
	sf.Close()

	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	data[len(data)/2] ^= 0xff
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}

	for _, layout := range []Layout{Flat, OCI} {
		opts.Layout = layout
		parent := t.TempDir()

		p, err := NewPlan(context.Background(), refs, local, nil, opts)
		if err != nil {
			t.Fatal(err)
		}

		_, err = Write(t.Context(), p, filepath.Join(parent, "cache"), opts)
		if !errors.Is(err, ErrDigest) || !strings.Contains(err.Error(), victim.digest.Hex) {
			t.Errorf("%s: corrupted stored blob: %v, want ErrDigest naming %s", layout, err, victim.digest)
		}

		if entries, _ := os.ReadDir(parent); len(entries) != 0 {
			t.Errorf("%s: left behind: %v", layout, entries)
		}
	}
}
