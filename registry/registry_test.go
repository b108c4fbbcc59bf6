package registry_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/registry"
)

func TestEmbeddedInProcessAndOverHTTP(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	reg, err := registry.NewEmbedded(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	img, err := random.Image(3<<20, 2)
	if err != nil {
		t.Fatal(err)
	}

	// Push in process: the host name is never resolved.
	inproc := remote.WithTransport(registry.Transport(reg))

	ref, err := name.NewTag("kiln.internal/siderolabs/imager:v1.13.0", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.Write(ref, img, inproc, remote.WithContext(ctx)); err != nil {
		t.Fatalf("push in process: %v", err)
	}

	want, _ := img.Digest()

	// Read it back over a real socket, as crane or a node would.
	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)

	remoteRef, err := name.NewTag(strings.TrimPrefix(srv.URL, "http://")+"/siderolabs/imager:v1.13.0", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	desc, err := remote.Get(remoteRef, remote.WithContext(ctx))
	if err != nil || desc.Digest != want {
		t.Fatalf("Get over HTTP = %v, %v; want %s", desc, err, want)
	}

	// And in process, layers streamed and verified by ggcr.
	got, err := remote.Image(ref, inproc)
	if err != nil {
		t.Fatal(err)
	}

	layers, _ := got.Layers()
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			t.Fatal(err)
		}

		if _, err := io.Copy(io.Discard, rc); err != nil {
			t.Fatalf("read layer: %v", err)
		}

		if err := rc.Close(); err != nil {
			t.Fatalf("layer digest check: %v", err)
		}
	}

	tags, err := remote.List(ref.Context(), inproc)
	if err != nil || len(tags) != 1 || tags[0] != "v1.13.0" {
		t.Fatalf("List = %v, %v", tags, err)
	}

	// A reopened registry has the same content.
	reg2, err := registry.NewEmbedded(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg2.Close() })

	if d, err := remote.Head(ref, remote.WithTransport(registry.Transport(reg2))); err != nil || d.Digest != want {
		t.Fatalf("after reopen Head = %v, %v", d, err)
	}

	// HEAD of a missing manifest is a 404, not a hang.
	missing, _ := name.NewTag("kiln.internal/siderolabs/imager:v0.0.0", name.Insecure)
	if _, err := remote.Head(missing, inproc); err == nil {
		t.Fatal("Head of a missing tag succeeded")
	}
}

// TestOpenBlob: a pushed layer opens from storage with the bytes the
// registry serves; a digest it does not hold, or one that is not a sha256
// hex string, is fs.ErrNotExist (never a path outside the storage).
func TestOpenBlob(t *testing.T) {
	reg, err := registry.NewEmbedded(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	layer, err := random.Layer(100_000, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}

	repo, err := name.NewRepository("kiln.internal/x/y", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.WriteLayer(repo, layer, remote.WithTransport(registry.Transport(reg))); err != nil {
		t.Fatal(err)
	}

	d, _ := layer.Digest()

	f, err := reg.OpenBlob(d)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	got, _ := io.ReadAll(f)

	rc, _ := layer.Compressed()
	want, _ := io.ReadAll(rc)

	if !bytes.Equal(got, want) {
		t.Errorf("stored blob: %d bytes, want %d", len(got), len(want))
	}

	for _, h := range []v1.Hash{
		{Algorithm: "sha256", Hex: strings.Repeat("ab", 32)},
		{Algorithm: "sha256", Hex: "../../../../etc/passwd"},
		{Algorithm: "sha512", Hex: d.Hex},
		{Algorithm: "sha256", Hex: strings.ToUpper(d.Hex)},
	} {
		if _, err := reg.OpenBlob(h); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("OpenBlob(%s): %v, want fs.ErrNotExist", h, err)
		}
	}
}

// TestCatalog: /v2/_catalog lists what the registry holds, in pages as
// clients ask for them (crane catalog asks n=1000, curl users n=100); a
// registry configured in code has no catalog unless its bound is set.
func TestCatalog(t *testing.T) {
	reg, err := registry.NewEmbedded(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	inproc := remote.WithTransport(registry.Transport(reg))

	img, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}

	want := []string{"kiln-demo/siderolabs/imager", "siderolabs/imager", "siderolabs/installer-base"}
	for _, repo := range want {
		ref, _ := name.NewTag("kiln.internal/"+repo+":v1.13.0", name.Insecure)
		if err := remote.Write(ref, img, inproc); err != nil {
			t.Fatal(err)
		}
	}

	srv := httptest.NewServer(reg)
	t.Cleanup(srv.Close)

	r, err := name.NewRegistry(strings.TrimPrefix(srv.URL, "http://"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	got, err := remote.Catalog(t.Context(), r)
	if err != nil || strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("Catalog = %v, %v; want %v", got, err, want)
	}

	for _, n := range []int{1, 100, 1000} {
		page, err := remote.CatalogPage(r, "", n)
		if err != nil || len(page) != min(n, len(want)) {
			t.Errorf("CatalogPage(n=%d) = %v, %v", n, page, err)
		}
	}
}
