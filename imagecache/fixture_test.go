package imagecache

import (
	"context"
	"io"
	"log"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/release"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// fixture is a registry holding a kiln mirror (upstream names under mirror
// paths) and, at its own host:port, images named directly.
type fixture struct {
	host   string // 127.0.0.1:port
	mirror name.Registry
	// upstream ref → digest of what it names (index or manifest)
	digests map[string]v1.Hash
	shared  v1.Layer
}

// image builds a single-platform image with the shared layer and n own layers.
func image(t testing.TB, shared v1.Layer, p v1.Platform, layerSize int64, n int) v1.Image {
	t.Helper()

	img, err := mutate.AppendLayers(empty.Image, shared)
	if err != nil {
		t.Fatal(err)
	}

	for range n {
		l, err := random.Layer(layerSize, types.DockerLayer)
		if err != nil {
			t.Fatal(err)
		}

		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant

	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}

	return img
}

// multiArch is an index of linux/amd64, linux/arm64/v8 and an attestation
// child (unknown/unknown), as buildx writes.
func multiArch(t testing.TB, shared v1.Layer, layerSize int64, n int) v1.ImageIndex {
	t.Helper()

	amd := image(t, shared, v1.Platform{OS: "linux", Architecture: "amd64"}, layerSize, n)
	arm := image(t, shared, v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, layerSize, n)
	att := image(t, shared, v1.Platform{OS: "unknown", Architecture: "unknown"}, 100, 1)

	return mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
		mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"}}},
	)
}

// signature is a cosign-style .sig image for digest d.
func signature(t testing.TB) v1.Image {
	t.Helper()

	l, err := random.Layer(200, "application/vnd.dev.cosign.simplesigning.v1+json")
	if err != nil {
		t.Fatal(err)
	}

	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), l)
	if err != nil {
		t.Fatal(err)
	}

	return img
}

// newFixture starts an in-process registry and pushes:
//
//	ghcr.io/siderolabs/kubelet:v1.36.0        index (amd64, arm64/v8, attestation), signed (.sig)
//	registry.k8s.io/pause:3.10                single linux/amd64 image, signed
//	docker.io/library/busybox:1.37            index, unsigned
//	<host>/direct/app:v1                      index, signed, named at the registry's host:port
//
// The first three under kiln mirror paths (siderolabs/kubelet,
// registry.k8s.io/pause, docker.io/library/busybox).
func newFixture(t testing.TB, layerSize int64, layers int) *fixture {
	t.Helper()

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)

	u, _ := url.Parse(srv.URL)

	return newFixtureAt(t, u.Host, layerSize, layers)
}

// newFixtureAt pushes the fixture to the registry at host.
func newFixtureAt(t testing.TB, host string, layerSize int64, layers int) *fixture {
	t.Helper()

	f := &fixture{host: host, digests: map[string]v1.Hash{}}

	var err error
	if f.mirror, err = name.NewRegistry(host); err != nil {
		t.Fatal(err)
	}

	if f.shared, err = random.Layer(layerSize, types.DockerLayer); err != nil {
		t.Fatal(err)
	}

	push := func(upstream, at string, obj any, signed bool) {
		ref, err := name.ParseReference(at)
		if err != nil {
			t.Fatal(err)
		}

		switch o := obj.(type) {
		case v1.ImageIndex:
			err = remote.WriteIndex(ref, o)
		case v1.Image:
			err = remote.Write(ref, o)
		}

		if err != nil {
			t.Fatal(err)
		}

		d, err := obj.(interface{ Digest() (v1.Hash, error) }).Digest()
		if err != nil {
			t.Fatal(err)
		}

		f.digests[upstream] = d

		if signed {
			sig := ref.Context().Tag(d.Algorithm + "-" + d.Hex + ".sig")
			if err := remote.Write(sig, signature(t)); err != nil {
				t.Fatal(err)
			}
		}
	}

	push("ghcr.io/siderolabs/kubelet:v1.36.0", f.host+"/siderolabs/kubelet:v1.36.0", multiArch(t, f.shared, layerSize, layers), true)
	push("registry.k8s.io/pause:3.10", f.host+"/registry.k8s.io/pause:3.10", image(t, f.shared, v1.Platform{OS: "linux", Architecture: "amd64"}, layerSize, layers), true)
	push("docker.io/library/busybox:1.37", f.host+"/docker.io/library/busybox:1.37", multiArch(t, f.shared, layerSize, layers), false)
	push(f.host+"/direct/app:v1", f.host+"/direct/app:v1", multiArch(t, f.shared, layerSize, layers), true)

	return f
}

// resolver fetches names at the fixture's host directly, others from the
// mirror paths, as kiln does with MirrorResolver.
func (f *fixture) resolver() Resolver { return fixtureResolver{f} }

type fixtureResolver struct{ f *fixture }

func (r fixtureResolver) Resolve(ref string) (name.Reference, []remote.Option, error) {
	if strings.HasPrefix(ref, r.f.host+"/") {
		return DirectResolver{}.Resolve(ref)
	}

	m, err := release.Mirror{Registry: r.f.mirror}.Ref(ref)

	return m, nil, err
}

// refs is the standard input list: an index, a digest-pinned single image,
// a Docker Hub short name, and a host:port image.
func (f *fixture) refs() []string {
	return []string{
		"ghcr.io/siderolabs/kubelet:v1.36.0",
		"registry.k8s.io/pause:3.10@" + f.digests["registry.k8s.io/pause:3.10"].String(),
		"busybox:1.37",
		f.host + "/direct/app:v1",
	}
}

func (f *fixture) plan(t testing.TB, opts Options) *Plan {
	t.Helper()

	p, err := NewPlan(context.Background(), f.refs(), f.resolver(), nil, opts)
	if err != nil {
		t.Fatal(err)
	}

	return p
}
