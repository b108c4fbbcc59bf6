package mirror

import (
	"context"
	"errors"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

const testVersion = "v1.13.0"

// newRegistry starts an in-process registry; referrers=false behaves like
// distribution 2.8 (cosign v3 bundles under the sha256-<hex> fallback tag).
func newRegistry(t *testing.T, referrers bool) name.Registry {
	t.Helper()

	srv := httptest.NewServer(registry.New(registry.WithReferrersSupport(referrers), registry.Logger(discardLogger())))
	t.Cleanup(srv.Close)

	reg, err := name.NewRegistry(strings.TrimPrefix(srv.URL, "http://"), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	return reg
}

// fakeSign attaches to every index both a legacy cosign signature tag and
// an OCI referrer (a signature "bundle" artifact with a subject).
func fakeSign(ctx context.Context, ref name.Digest, _ name.Repository) error {
	desc, err := remote.Head(ref, remote.WithContext(ctx))
	if err != nil {
		return err
	}

	if !isIndex(desc.MediaType) {
		return nil
	}

	sig, err := random.Image(64, 1)
	if err != nil {
		return err
	}

	tag := ref.Context().Tag("sha256-" + desc.Digest.Hex + ".sig")
	if err := remote.Write(tag, sig, remote.WithContext(ctx)); err != nil {
		return err
	}

	bundle, err := random.Image(48, 1)
	if err != nil {
		return err
	}

	bundle = mutate.MediaType(bundle, types.OCIManifestSchema1)
	bundle = mutate.ConfigMediaType(bundle, "application/vnd.dev.sigstore.bundle.v0.3+json")
	bundle = mutate.Subject(bundle, *desc.DeepCopy()).(v1.Image)

	d, err := bundle.Digest()
	if err != nil {
		return err
	}

	return remote.Write(ref.Context().Digest(d.String()), bundle, remote.WithContext(ctx))
}

type fixture struct {
	src Registry
	rel *demo.Release
}

func pushRelease(t *testing.T, referrers bool) fixture {
	t.Helper()

	reg := newRegistry(t, referrers)

	rel, err := demo.Push(t.Context(), demo.Options{Version: testVersion, Registry: reg, Sign: fakeSign})
	if err != nil {
		t.Fatal(err)
	}

	return fixture{src: Registry{Mirror: release.Mirror{Registry: reg}}, rel: rel}
}

func fullSelection() Selection {
	return Selection{
		Versions:   []release.Version{release.MustParseVersion(testVersion)},
		Extensions: []string{All},
		Overlays:   []string{All},
		Talosctl:   true,
		Kubernetes: true,
	}
}

// sameContent checks that every item of plan is in dst with the same
// digest under every tag, and that every referrer is there too.
func sameContent(t *testing.T, plan *Plan, dst Endpoint) {
	t.Helper()

	s, err := dst.openSource(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	for _, it := range plan.Items {
		for _, m := range it.manifests {
			got, err := s.manifest(t.Context(), it.Repo, m.Digest.String())
			if err != nil {
				t.Fatalf("%s: manifest %s: %v", it, m.Digest, err)
			}

			if string(got.Raw) != string(m.Raw) {
				t.Errorf("%s: manifest %s bytes differ", it, m.Digest)
			}
		}

		for _, tag := range it.Tags {
			got, err := s.manifest(t.Context(), it.Repo, tag)
			if err != nil {
				t.Fatalf("%s: tag %s: %v", it, tag, err)
			}

			if got.Digest != it.Digest {
				t.Errorf("%s:%s: got %s, want %s", it.Repo, tag, got.Digest, it.Digest)
			}
		}

		if it.Subject != nil && len(it.Tags) == 0 {
			refs, err := s.referrers(t.Context(), it.Repo, *it.Subject)
			if err != nil {
				t.Fatal(err)
			}

			if !slices.ContainsFunc(refs, func(d v1.Descriptor) bool { return d.Digest == it.Digest }) {
				t.Errorf("%s: referrer of %s missing in %s", it, it.Subject, dst)
			}
		}
	}
}

func countKinds(p *Plan) map[Kind]int {
	m := map[Kind]int{}
	for _, it := range p.Items {
		m[it.Kind]++
	}

	return m
}

func TestPlanContents(t *testing.T) {
	f := pushRelease(t, false)

	plan, err := NewPlan(t.Context(), f.src, fullSelection())
	if err != nil {
		t.Fatal(err)
	}

	k8s, _ := release.KubernetesImages(release.MustParseVersion(testVersion))
	kinds := countKinds(plan)

	if got, want := kinds[KindTalos], 5; got != want {
		t.Errorf("talos items: got %d, want %d", got, want)
	}

	if got, want := kinds[KindExtension], len(f.rel.ExtensionImages); got != want {
		t.Errorf("extension items: got %d, want %d", got, want)
	}

	if got, want := kinds[KindOverlay], len(f.rel.OverlayImages); got != want {
		t.Errorf("overlay items: got %d, want %d", got, want)
	}

	if got, want := kinds[KindKubernetes], len(k8s); got != want {
		t.Errorf("kubernetes items: got %d, want %d", got, want)
	}

	roots := kinds[KindTalos] + kinds[KindExtension] + kinds[KindOverlay] + kinds[KindKubernetes]
	if got, want := kinds[KindSignature], 2*roots; got != want {
		t.Errorf("signature items: got %d, want %d (a .sig and a referrer per image)", got, want)
	}

	for repo, d := range f.rel.ExtensionImages {
		if !slices.ContainsFunc(plan.Items, func(it *Item) bool { return it.Repo == repo && it.Digest.String() == d.DigestStr() }) {
			t.Errorf("extension %s@%s not planned", repo, d.DigestStr())
		}
	}

	var b strings.Builder
	if err := plan.WriteText(&b); err != nil {
		t.Fatal(err)
	}

	if !strings.Contains(b.String(), "siderolabs/imager:"+testVersion) || !strings.Contains(b.String(), "total: ") {
		t.Errorf("dry-run text lacks the imager or the total:\n%s", b.String())
	}

	if plan.Size() <= 0 {
		t.Errorf("plan size %d", plan.Size())
	}
}

func TestRegistryToRegistry(t *testing.T) {
	f := pushRelease(t, false)

	plan, err := NewPlan(t.Context(), f.src, fullSelection())
	if err != nil {
		t.Fatal(err)
	}

	dst := Registry{Mirror: release.Mirror{Registry: newRegistry(t, true), Namespace: "kiln"}}

	st, err := Copy(t.Context(), plan, dst, Options{Jobs: 3})
	if err != nil {
		t.Fatal(err)
	}

	if st.BlobsCopied == 0 || st.BytesCopied == 0 || st.TagsWritten == 0 {
		t.Errorf("first run: %v", st)
	}

	sameContent(t, plan, dst)

	// Through plain ggcr: the .sig tag of the imager is there.
	imager := dst.Registry.Repo("kiln", release.ImagerRepo)

	desc, err := remote.Head(imager.Tag(testVersion))
	if err != nil {
		t.Fatal(err)
	}

	if desc.Digest.String() != f.rel.Imager.DigestStr() {
		t.Errorf("imager: got %s, want %s", desc.Digest, f.rel.Imager.DigestStr())
	}

	if _, err := remote.Head(imager.Tag("sha256-" + desc.Digest.Hex + ".sig")); err != nil {
		t.Errorf("imager .sig tag: %v", err)
	}

	// Second run: nothing.
	st2, err := Copy(t.Context(), plan, dst, Options{})
	if err != nil {
		t.Fatal(err)
	}

	if st2.BlobsCopied != 0 || st2.BytesCopied != 0 || st2.ManifestsWritten != 0 || st2.TagsWritten != 0 {
		t.Errorf("second run copied something: %v", st2)
	}

	if st2.BlobsSkipped != st.BlobsCopied+st.BlobsSkipped {
		t.Errorf("second run skipped %d blobs, want %d", st2.BlobsSkipped, st.BlobsCopied)
	}
}

// Registry (no referrers API) → layout → registry (no referrers API), and
// the same through an archive: digests, tags and referrers survive.
func TestRoundTrips(t *testing.T) {
	f := pushRelease(t, false)

	plan, err := NewPlan(t.Context(), f.src, fullSelection())
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()

	for _, mid := range []Endpoint{Layout{Dir: filepath.Join(dir, "layout")}, Archive{Path: filepath.Join(dir, "release.tar")}} {
		t.Run(fmt.Sprintf("%T", mid), func(t *testing.T) {
			if _, err := Copy(t.Context(), plan, mid, Options{Jobs: 4}); err != nil {
				t.Fatal(err)
			}

			sameContent(t, plan, mid)

			plan2, err := NewPlan(t.Context(), mid, fullSelection())
			if err != nil {
				t.Fatal(err)
			}

			if got, want := len(plan2.Items), len(plan.Items); got != want {
				t.Errorf("plan from %s: %d items, want %d", mid, got, want)
			}

			if got, want := plan2.Size(), plan.Size(); got != want {
				t.Errorf("plan from %s: size %d, want %d", mid, got, want)
			}

			dst := Registry{Mirror: release.Mirror{Registry: newRegistry(t, false)}}
			if _, err := Copy(t.Context(), plan2, dst, Options{}); err != nil {
				t.Fatal(err)
			}

			sameContent(t, plan, dst)

			// Second run into the layout/archive: nothing copied, file untouched.
			var before os.FileInfo
			if a, ok := mid.(Archive); ok {
				before, _ = os.Stat(a.Path)
			}

			st, err := Copy(t.Context(), plan, mid, Options{})
			if err != nil {
				t.Fatal(err)
			}

			if st.BytesCopied != 0 || st.ManifestsWritten != 0 || st.TagsWritten != 0 {
				t.Errorf("second run into %s: %v", mid, st)
			}

			if a, ok := mid.(Archive); ok {
				after, _ := os.Stat(a.Path)
				if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
					t.Errorf("archive rewritten by a run with nothing to copy")
				}
			}
		})
	}
}

func TestInterruptedCopyResumes(t *testing.T) {
	f := pushRelease(t, false)

	plan, err := NewPlan(t.Context(), f.src, fullSelection())
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()

	for _, dst := range []Endpoint{
		Registry{Mirror: release.Mirror{Registry: newRegistry(t, false)}},
		Layout{Dir: filepath.Join(dir, "layout")},
		Archive{Path: filepath.Join(dir, "a.tar")},
	} {
		t.Run(fmt.Sprintf("%T", dst), func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()

			const stopAfter = 5

			var mu sync.Mutex

			copied := 0
			stop := func(e Event) {
				mu.Lock()
				defer mu.Unlock()

				if e.Kind == EventBlob && !e.Skipped {
					if copied++; copied == stopAfter {
						cancel()
					}
				}
			}

			st1, err := Copy(ctx, plan, dst, Options{Jobs: 1, Progress: stop})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted copy: got %v, want context.Canceled", err)
			}

			if st1.TagsWritten != 0 {
				t.Errorf("interrupted copy wrote %d tags", st1.TagsWritten)
			}

			// Nothing findable: no tag in a registry, no index/archive.
			s, err := dst.openSource(t.Context())
			if err == nil {
				if _, err := s.manifest(t.Context(), release.ImagerRepo, testVersion); !errors.Is(err, ErrNotFound) {
					t.Errorf("imager tag after interruption: %v", err)
				}

				s.Close()
			}

			st2, err := Copy(t.Context(), plan, dst, Options{})
			if err != nil {
				t.Fatal(err)
			}

			// Blobs stored once per destination (layout, archive, this
			// registry) but planned in two repositories count as skipped
			// the second time, so compare with a third, idle run.
			total := st2.BlobsCopied + st2.BlobsSkipped
			if st2.BlobsSkipped < st1.BlobsCopied || st2.BlobsCopied > total-st1.BlobsCopied || st2.BlobsCopied == 0 {
				t.Errorf("resume: first run copied %d, second copied %d and skipped %d of %d", st1.BlobsCopied, st2.BlobsCopied, st2.BlobsSkipped, total)
			}

			st3, err := Copy(t.Context(), plan, dst, Options{})
			if err != nil {
				t.Fatal(err)
			}

			if st3.BlobsCopied != 0 || st3.BlobsSkipped != total {
				t.Errorf("third run: %v", st3)
			}

			if st1.BlobsCopied < stopAfter {
				t.Errorf("first run copied %d blobs, want at least %d", st1.BlobsCopied, stopAfter)
			}

			sameContent(t, plan, dst)
		})
	}
}

func TestDryRunWritesNothing(t *testing.T) {
	f := pushRelease(t, false)

	plan, err := NewPlan(t.Context(), f.src, fullSelection())
	if err != nil {
		t.Fatal(err)
	}

	dir := filepath.Join(t.TempDir(), "layout")
	archive := filepath.Join(t.TempDir(), "a.tar")
	reg := Registry{Mirror: release.Mirror{Registry: newRegistry(t, false)}}

	for _, dst := range []Endpoint{Layout{Dir: dir}, Archive{Path: archive}, reg} {
		st, err := Copy(t.Context(), plan, dst, Options{DryRun: true})
		if err != nil {
			t.Fatal(err)
		}

		if st.BytesCopied == 0 || st.BlobsSkipped != 0 {
			t.Errorf("%s dry run: %v", dst, st)
		}
	}

	if entries, _ := os.ReadDir(filepath.Join(dir, "blobs", "sha256")); len(entries) != 0 {
		t.Errorf("dry run wrote %d blobs", len(entries))
	}

	if _, err := os.Stat(filepath.Join(dir, "index.json")); err == nil {
		t.Error("dry run wrote index.json")
	}

	for _, p := range []string{archive, archive + partialExt} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("dry run wrote %s", p)
		}
	}

	if _, err := remote.Head(reg.Registry.Repo(release.ImagerRepo).Tag(testVersion)); err == nil {
		t.Error("dry run pushed the imager")
	}
}

// refuser refuses one digest and records every reference it was asked about.
type refuser struct {
	mu     sync.Mutex
	refuse string
	seen   []name.Digest
}

var errUntrusted = errors.New("no trusted signature")

func (r *refuser) Verify(ctx context.Context, ref name.Digest) (signing.Verified, error) {
	return signing.CheckFunc(r.check).Verify(ctx, ref)
}

func (r *refuser) check(ctx context.Context, ref name.Digest) error {
	r.mu.Lock()
	r.seen = append(r.seen, ref)
	r.mu.Unlock()

	// Like a real verifier: the signature must be readable at ref.
	sig := ref.Context().Tag("sha256-" + strings.TrimPrefix(ref.DigestStr(), "sha256:") + ".sig")
	if _, err := remote.Head(sig, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("signature %s: %w", sig, err)
	}

	if ref.DigestStr() == r.refuse {
		return errUntrusted
	}

	return nil
}

func TestVerifierRefusal(t *testing.T) {
	f := pushRelease(t, false)

	sel := fullSelection()
	sel.Kubernetes = false // the fake signs only indexes; Kubernetes images are indexes too, but keep it short

	plan, err := NewPlan(t.Context(), f.src, sel)
	if err != nil {
		t.Fatal(err)
	}

	bad := f.rel.ExtensionImages["siderolabs/gvisor"]
	if bad.DigestStr() == "" {
		for _, d := range f.rel.ExtensionImages {
			bad = d
			break
		}
	}

	archive := Archive{Path: filepath.Join(t.TempDir(), "a.tar")}

	// Accepted: registry source, then the archive as a source (served on loopback).
	if _, err := Copy(t.Context(), plan, archive, Options{Verifier: &refuser{}}); err != nil {
		t.Fatal(err)
	}

	aplan, err := NewPlan(t.Context(), archive, sel)
	if err != nil {
		t.Fatal(err)
	}

	for _, src := range []struct {
		name string
		plan *Plan
	}{{"registry", plan}, {"archive", aplan}} {
		t.Run(src.name, func(t *testing.T) {
			v := &refuser{refuse: bad.DigestStr()}
			dst := Registry{Mirror: release.Mirror{Registry: newRegistry(t, false)}}

			_, err := Copy(t.Context(), src.plan, dst, Options{Verifier: v})

			var verr *VerifyError
			if !errors.As(err, &verr) || !errors.Is(err, errUntrusted) {
				t.Fatalf("got %v, want a VerifyError wrapping errUntrusted", err)
			}

			if verr.Item.Digest.String() != bad.DigestStr() || !strings.Contains(err.Error(), bad.DigestStr()) ||
				!strings.Contains(err.Error(), verr.Item.Repo) {
				t.Errorf("error does not name the image: %v", err)
			}

			if _, err := remote.Head(dst.Registry.Repo(verr.Item.Repo).Digest(bad.DigestStr())); err == nil {
				t.Errorf("refused image %s was written", bad)
			}

			if _, err := remote.Head(dst.Registry.Repo(release.ImagerRepo).Tag(testVersion)); err == nil {
				t.Error("a tag was written despite the refusal")
			}

			if src.name == "archive" && len(v.seen) > 0 && v.seen[0].RegistryStr() == f.src.Registry.RegistryStr() {
				t.Error("archive source verified against the original registry")
			}
		})
	}
}

func TestArchFilter(t *testing.T) {
	f := pushRelease(t, true)

	sel := fullSelection()
	sel.Arches = []string{"arm64"}

	plan, err := NewPlan(t.Context(), f.src, sel)
	if err != nil {
		t.Fatal(err)
	}

	full, err := NewPlan(t.Context(), f.src, fullSelection())
	if err != nil {
		t.Fatal(err)
	}

	if plan.Size() >= full.Size() {
		t.Errorf("arm64 plan %d bytes, full plan %d", plan.Size(), full.Size())
	}

	// A registry that validates indexes (ggcr's, distribution's default)
	// refuses the partial index, with an explanation.
	reg := Registry{Mirror: release.Mirror{Registry: newRegistry(t, true)}}
	if _, err := Copy(t.Context(), plan, reg, Options{}); err == nil || !strings.Contains(err.Error(), "every architecture") {
		t.Errorf("partial index into a validating registry: got %v", err)
	}

	dst := Layout{Dir: t.TempDir()}
	if _, err := Copy(t.Context(), plan, dst, Options{}); err != nil {
		t.Fatal(err)
	}

	s, err := dst.openSource(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	m, err := s.manifest(t.Context(), release.ImagerRepo, testVersion)
	if err != nil {
		t.Fatal(err)
	}

	if m.Digest.String() != f.rel.Imager.DigestStr() {
		t.Errorf("index digest changed: %s, want %s", m.Digest, f.rel.Imager.DigestStr())
	}

	im, err := v1.ParseIndexManifest(strings.NewReader(string(m.Raw)))
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range im.Manifests {
		_, err := s.manifest(t.Context(), release.ImagerRepo, c.Digest.String())
		switch c.Platform.Architecture {
		case "arm64":
			if err != nil {
				t.Errorf("arm64 child %s missing: %v", c.Digest, err)
			}
		default:
			if err == nil {
				t.Errorf("%s child %s copied", c.Platform, c.Digest)
			}
		}
	}
}
