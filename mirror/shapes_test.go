package mirror

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

// k8sV19 stands in for the cluster images of a release kiln has no row
// for (the table starts at v1.10.0): Selection.KubernetesImages names them.
var k8sV19 = []string{"registry.k8s.io/kube-apiserver:v1.32.3", "ghcr.io/siderolabs/kubelet:v1.32.3", "registry.k8s.io/pause:3.10"}

func k8sFor(v string) []string {
	if v == "v1.9.6" {
		return k8sV19
	}

	return nil
}

// shapeSelection is what `kiln mirror --version v` selects by default:
// every extension and overlay, talosctl-all, the cluster images.
func shapeSelection(v string) Selection {
	sel := Selection{Versions: []release.Version{release.MustParseVersion(v)}, Extensions: []string{All}, Overlays: []string{All}, Talosctl: true, Kubernetes: true}

	if k := k8sFor(v); k != nil {
		sel.KubernetesImages = func(release.Version) ([]string, error) { return k, nil }
	}

	return sel
}

// planText is a plan without digests (the signatures fakeSign makes are
// random) and without the catalogs' extensions and overlays (whatever
// the demo release ships; TestPlanContents counts them): per root, its kind,
// repository, tags, platforms and how many signatures it has, then the
// notes.
func planText(p *Plan) string {
	var b strings.Builder

	sigs := map[v1.Hash]int{}

	for _, it := range p.Items {
		if it.Subject != nil {
			sigs[*it.Subject]++
		}
	}

	for _, it := range p.Items {
		if it.Kind == KindSignature || it.Kind == KindExtension || it.Kind == KindOverlay {
			continue
		}

		fmt.Fprintf(&b, "%-10s %s:%s [%s] signatures=%d\n", it.Kind, it.Repo, strings.Join(it.Tags, ","), strings.Join(it.Platforms, " "), sigs[it.Digest])
	}

	for _, n := range p.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}

	return b.String()
}

// TestPlanReleaseShapes plans releases shaped like v1.9 (the full
// installer, no installer-base, no talosctl-all), v1.10 (installer-base,
// no talosctl-all) and v1.11 (both), as the factory's copy-artifacts.sh
// copies them.
func TestPlanReleaseShapes(t *testing.T) {
	for _, v := range []string{"v1.9.6", "v1.10.0", "v1.11.0"} {
		t.Run(v, func(t *testing.T) {
			reg := newRegistry(t, false)

			if _, err := demo.Push(t.Context(), demo.Options{Version: v, Registry: reg, Sign: fakeSign, KubernetesImages: k8sFor(v)}); err != nil {
				t.Fatal(err)
			}

			plan, err := NewPlan(t.Context(), Registry{Mirror: release.Mirror{Registry: reg}}, shapeSelection(v))
			if err != nil {
				t.Fatal(err)
			}

			testfixture.Golden(t, "plan-"+v, planText(plan), *update)

			var text bytes.Buffer
			if err := plan.WriteText(&text); err != nil {
				t.Fatal(err)
			}

			for _, n := range plan.Notes {
				if !strings.Contains(text.String(), "note: "+n) {
					t.Errorf("WriteText does not print the note %q", n)
				}
			}
		})
	}
}

// TestMirrorReleaseShapesThroughRegistry mirrors v1.9-, v1.10- and
// v1.11-shaped releases out of a real registry process (Debian's
// docker-registry, no referrers API) into an archive and back into a
// second one.
func TestMirrorReleaseShapesThroughRegistry(t *testing.T) {
	bin := testfixture.DockerRegistry(t)

	src, err := name.NewRegistry(testfixture.StartRegistry(t, bin), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	dst, err := name.NewRegistry(testfixture.StartRegistry(t, bin), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	versions := []string{"v1.9.6", "v1.10.0", "v1.11.0"}

	for _, v := range versions {
		if _, err := demo.Push(t.Context(), demo.Options{Version: v, Registry: src, Sign: fakeSign, KubernetesImages: k8sFor(v)}); err != nil {
			t.Fatal(err)
		}
	}

	sel := shapeSelection("v1.11.0")
	sel.Versions = nil

	for _, v := range versions {
		sel.Versions = append(sel.Versions, release.MustParseVersion(v))
	}

	sel.KubernetesImages = func(v release.Version) ([]string, error) {
		if k := k8sFor(v.String()); k != nil {
			return k, nil
		}

		return release.KubernetesImages(v)
	}

	plan, err := NewPlan(t.Context(), Registry{Mirror: release.Mirror{Registry: src}}, sel)
	if err != nil {
		t.Fatal(err)
	}

	archive := Archive{Path: filepath.Join(t.TempDir(), "shapes.tar")}
	if _, err := Copy(t.Context(), plan, archive, Options{}); err != nil {
		t.Fatal(err)
	}

	back, err := NewPlan(t.Context(), archive, sel)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := Copy(t.Context(), back, Registry{Mirror: release.Mirror{Registry: dst}}, Options{}); err != nil {
		t.Fatal(err)
	}

	sameContent(t, plan, Registry{Mirror: release.Mirror{Registry: dst}})

	for repo, want := range map[string][]string{
		release.InstallerRepo:     {"v1.9.6"},
		release.InstallerBaseRepo: {"v1.10.0", "v1.11.0"},
		release.TalosctlAllRepo:   {"v1.11.0"},
		release.ImagerRepo:        versions,
	} {
		all, err := remote.List(dst.Repo(repo))
		if err != nil {
			t.Fatalf("%s: %v", repo, err)
		}

		// Leave out the .sig tags and referrers fallback tags.
		tags := slices.DeleteFunc(all, func(t string) bool { return strings.HasPrefix(t, "sha256-") })
		slices.Sort(tags)
		slices.Sort(want)

		if !slices.Equal(tags, want) {
			t.Errorf("%s tags in the destination = %v, want %v", repo, tags, want)
		}
	}

	if len(plan.Notes) != 2 {
		t.Errorf("notes = %q, want v1.9.6 and v1.10.0 without talosctl-all", plan.Notes)
	}
}

// TestGhcrSourceKeepsOtherRegistries: `--from ghcr.io` reads Talos's
// images from ghcr.io and registry.k8s.io's from registry.k8s.io, not
// from ghcr.io/registry.k8s.io/...; a namespace on ghcr.io is a mirror.
func TestGhcrSourceKeepsOtherRegistries(t *testing.T) {
	for _, tc := range []struct{ endpoint, path, want string }{
		{"ghcr.io", "siderolabs/imager", "ghcr.io/siderolabs/imager"},
		{"ghcr.io", "registry.k8s.io/kube-apiserver", "registry.k8s.io/kube-apiserver"},
		{"ghcr.io", "registry.k8s.io/networking/kube-network-policies", "registry.k8s.io/networking/kube-network-policies"},
		{"ghcr.io", "docker.io/library/busybox", "index.docker.io/library/busybox"},
		{"ghcr.io", "gcr.io/etcd-development/etcd", "gcr.io/etcd-development/etcd"},
		{"upstream", "registry.k8s.io/etcd", "registry.k8s.io/etcd"},
		{"ghcr.io/my-org", "registry.k8s.io/etcd", "ghcr.io/my-org/registry.k8s.io/etcd"},
		{"ghcr.io/my-org", "siderolabs/imager", "ghcr.io/my-org/siderolabs/imager"},
		{"harbor.example:5000/proxy", "registry.k8s.io/etcd", "harbor.example:5000/proxy/registry.k8s.io/etcd"},
		{"harbor.example:5000", "siderolabs/imager", "harbor.example:5000/siderolabs/imager"},
	} {
		ep, err := ParseEndpoint(tc.endpoint)
		if err != nil {
			t.Fatal(err)
		}

		repo, err := ep.(Registry).repo(tc.path)
		if err != nil || repo.Name() != tc.want {
			t.Errorf("%s: %s is read from %s (%v), want %s", tc.endpoint, tc.path, repo.Name(), err, tc.want)
		}
	}
}

// catalogImage is a one-layer image holding an image-digests file.
func catalogImage(t *testing.T, lines string) v1.Image {
	t.Helper()

	var buf bytes.Buffer

	if err := writeTar(&buf, release.ImageDigestsFile, lines); err != nil {
		t.Fatal(err)
	}

	data := buf.Bytes()

	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}

	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}

	return img
}

// TestCatalogChild: a catalog index's image is its first linux child, not
// the last one (an attestation, or another architecture).
func TestCatalogChild(t *testing.T) {
	reg := newRegistry(t, false)

	amd64 := catalogImage(t, "ghcr.io/siderolabs/gvisor:1@"+testDigest('1')+"\n")
	arm64 := catalogImage(t, "ghcr.io/siderolabs/arm64-only:1@"+testDigest('2')+"\n")

	att, err := mutate.AppendLayers(empty.Image, static.NewLayer([]byte(`{"_type":"https://in-toto.io/Statement/v0.1"}`), "application/vnd.in-toto+json"))
	if err != nil {
		t.Fatal(err)
	}

	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64"}}},
		mutate.IndexAddendum{Add: att, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "unknown", Architecture: "unknown"}}},
	)

	if err := remote.WriteIndex(reg.Repo(release.ExtensionsRepo).Tag(testVersion), idx); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		arches []string
		want   string
	}{
		{nil, "siderolabs/gvisor"},
		{[]string{"amd64", "arm64"}, "siderolabs/gvisor"},
		{[]string{"arm64"}, "siderolabs/arm64-only"},
	} {
		s, err := Registry{Mirror: release.Mirror{Registry: reg}}.openSource(t.Context())
		if err != nil {
			t.Fatal(err)
		}

		p := &planner{src: s, sel: Selection{Arches: tc.arches}, byKey: map[string]*Item{}}

		it, err := p.add(t.Context(), KindTalos, release.ExtensionsRepo, testVersion, testVersion, nil)
		if err != nil {
			t.Fatal(err)
		}

		img, err := p.image(t.Context(), it)
		if err != nil {
			t.Fatalf("arches %v: %v", tc.arches, err)
		}

		exts, err := release.ExtensionsFromImage(img)
		if err != nil || len(exts) != 1 || exts[0].Name() != tc.want {
			t.Errorf("arches %v: catalog read %+v, %v; want %s", tc.arches, exts, err, tc.want)
		}
	}
}

func testDigest(c byte) string {
	return "sha256:" + strings.Repeat(string(c), 64)
}

// writeTar writes a tar holding one regular file.
func writeTar(w io.Writer, file, content string) error {
	tw := tar.NewWriter(w)

	if err := tw.WriteHeader(&tar.Header{Name: file, Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg}); err != nil {
		return err
	}

	if _, err := io.WriteString(tw, content); err != nil {
		return err
	}

	return tw.Close()
}
