package mirror

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

const someDigest = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestNormalizeImage(t *testing.T) {
	for in, want := range map[string]string{
		"nginx":                                   "docker.io/library/nginx:latest",
		"nginx:1.27":                              "docker.io/library/nginx:1.27",
		"library/nginx:1.27":                      "docker.io/library/nginx:1.27",
		"docker.io/nginx":                         "docker.io/library/nginx:latest",
		"index.docker.io/library/nginx:1.27":      "docker.io/library/nginx:1.27",
		"docker.io/bitnami/redis:7":               "docker.io/bitnami/redis:7",
		"quay.io/x/y@" + someDigest:               "quay.io/x/y@" + someDigest,
		"quay.io/x/y:v1@" + someDigest:            "quay.io/x/y:v1@" + someDigest,
		"nginx@" + someDigest:                     "docker.io/library/nginx@" + someDigest,
		"registry.k8s.io/etcd:3.5.21-0":           "registry.k8s.io/etcd:3.5.21-0",
		"ghcr.io/siderolabs/flannel:v0.26.7":      "ghcr.io/siderolabs/flannel:v0.26.7",
		"localhost:5000/team/app:1":               "localhost:5000/team/app:1",
		"registry.example.com:8443/a/b/c/d:x":     "registry.example.com:8443/a/b/c/d:x",
		"gcr.io/etcd-development/etcd:v3.5.21":    "gcr.io/etcd-development/etcd:v3.5.21",
		"registry.k8s.io/coredns/coredns:v1.12.1": "registry.k8s.io/coredns/coredns:v1.12.1",
	} {
		got, err := NormalizeImage(in)
		if err != nil || got != want {
			t.Errorf("NormalizeImage(%q) = %q, %v; want %q", in, got, err, want)
		}
	}

	for _, bad := range []string{
		"", "Nginx", "nginx:", "nginx:has space", "nginx\t", "nginx@sha256:abc", "nginx@sha512:" + strings.Repeat("a", 128),
		"nginx@" + strings.ToUpper(someDigest), "nginx@" + someDigest + "@" + someDigest, "https://docker.io/nginx", "a//b", "-x", "a/b-", "a/.b", "nginx:-x", "nginx:.x",
	} {
		if got, err := NormalizeImage(bad); err == nil {
			t.Errorf("NormalizeImage(%q) = %q, want an error", bad, got)
		}
	}
}

func TestImageMirrorPath(t *testing.T) {
	for in, want := range map[string]string{
		"docker.io/library/nginx:latest":       "docker.io/library/nginx",
		"ghcr.io/siderolabs/flannel:v0.26.7":   "siderolabs/flannel",
		"registry.k8s.io/etcd:3.5.21-0":        "registry.k8s.io/etcd",
		"quay.io/x/y@" + someDigest:            "quay.io/x/y",
		"gcr.io/etcd-development/etcd:v3.5.21": "gcr.io/etcd-development/etcd",
	} {
		if got, err := ImageMirrorPath(in); err != nil || got != want {
			t.Errorf("ImageMirrorPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}

	for _, in := range []string{"registry.example.com:8443/a/b:x", "localhost:5000/app:1"} {
		if got, err := ImageMirrorPath(in); err == nil || !strings.Contains(err.Error(), "a registry with a port cannot be mirrored") {
			t.Errorf("ImageMirrorPath(%q) = %q, %v; want an error", in, got, err)
		}

		if _, err := ReadImageList(strings.NewReader(in+"\n"), "f"); err == nil || !strings.Contains(err.Error(), "f:1: ") {
			t.Errorf("ReadImageList(%q): %v", in, err)
		}
	}
}

func TestReadImageList(t *testing.T) {
	list := `# cluster add-ons
nginx:1.27
  docker.io/library/nginx:1.27   # the same image, once

quay.io/x/y@` + someDigest + `
registry.k8s.io/etcd:3.5.21-0
`

	got, err := ReadImageList(strings.NewReader(list), "images.txt")
	if err != nil {
		t.Fatal(err)
	}

	want := []string{"docker.io/library/nginx:1.27", "quay.io/x/y@" + someDigest, "registry.k8s.io/etcd:3.5.21-0"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("ReadImageList = %q, want %q", got, want)
	}

	// Every bad line is named, by number, and nothing is returned.
	got, err = ReadImageList(strings.NewReader("nginx\n\nNot An Image\n# ok\nnginx@sha256:12\n"), "images.txt")
	if err == nil || got != nil {
		t.Fatalf("ReadImageList of bad lines = %q, %v", got, err)
	}

	for _, want := range []string{"images.txt:3: ", "images.txt:5: ", `"Not An Image"`, "sha256:<64 lower-case hex digits>"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}

	if _, err := ReadImageList(strings.NewReader("nginx\n"+strings.Repeat("a", 5000)+"\n"), "-"); err == nil || !strings.Contains(err.Error(), "-:2: a line longer than") {
		t.Errorf("a too long line: %v", err)
	}
}

func FuzzNormalizeImage(f *testing.F) {
	for _, s := range []string{"nginx", "quay.io/x/y@" + someDigest, "localhost:5000/a:b", "a:b@" + someDigest, "index.docker.io/x"} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, s string) {
		got, err := NormalizeImage(s)
		if err != nil {
			return
		}

		// The normal form is its own normal form, and has a mirror path.
		again, err := NormalizeImage(got)
		if err != nil || again != got {
			t.Fatalf("NormalizeImage(%q) = %q, then %q, %v", s, got, again, err)
		}

		// A list takes it exactly when it has a mirror path.
		_, pathErr := ImageMirrorPath(got)
		if _, err := ReadImageList(strings.NewReader(got+"\n"), "f"); (err == nil) != (pathErr == nil) {
			t.Fatalf("ReadImageList(%q): %v; ImageMirrorPath: %v", got, err, pathErr)
		}
	})
}

// imagesFixture is a source registry laid out as a mirror, holding images
// "of" several upstream hosts, and a policy: hub names nginx and redis
// (signed with key), no rule names the others.
type imagesFixture struct {
	src    Registry
	nginx  name.Digest // an index, signed
	redis  name.Digest // named by the policy, unsigned
	quay   name.Digest // by digest, no rule
	policy *signing.Policy
}

func newImagesFixture(t *testing.T) imagesFixture {
	t.Helper()

	ctx := t.Context()
	reg := newRegistry(t, false)
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)

	push := func(path, tag string, index bool) name.Digest {
		repo := reg.Repo(path)

		var (
			d   v1.Hash
			err error
		)

		if index {
			idx, ierr := random.Index(256, 1, 2)
			if ierr != nil {
				t.Fatal(ierr)
			}

			err = remote.WriteIndex(repo.Tag(tag), idx)
			d, _ = idx.Digest()
		} else {
			img, ierr := random.Image(256, 2)
			if ierr != nil {
				t.Fatal(ierr)
			}

			err = remote.Write(repo.Tag(tag), img)
			d, _ = img.Digest()
		}

		if err != nil {
			t.Fatal(err)
		}

		return repo.Digest(d.String())
	}

	f := imagesFixture{
		src:   Registry{Mirror: release.Mirror{Registry: reg}},
		nginx: push("docker.io/library/nginx", "1.27", true),
		redis: push("docker.io/library/redis", "7", false),
		quay:  push("quay.io/acme/tool", "unused", false),
	}
	push("registry.k8s.io/etcd", "3.5.21-0", true)
	push("siderolabs/flannel", "v0.26.7", false)

	if err := signingtest.SignLegacy(ctx, f.nginx, key); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "k.pub"), key.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	file := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(file, []byte("rules:\n  - name: hub\n    repositories: [docker.io/library/nginx, docker.io/library/redis]\n    keys: [{path: k.pub}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	p, err := signing.LoadPolicy(file)
	if err != nil {
		t.Fatal(err)
	}

	f.policy = p

	return f
}

func (f imagesFixture) options(t *testing.T, events *[]Event) Options {
	t.Helper()

	v, err := signing.NewVerifier(f.policy)
	if err != nil {
		t.Fatal(err)
	}

	return Options{
		Verifier: v,
		HasRule:  func(r name.Repository) bool { _, ok := f.policy.RuleFor(r); return ok },
		Progress: func(e Event) { *events = append(*events, e) },
	}
}

func TestCopyImages(t *testing.T) {
	ctx := context.Background()
	f := newImagesFixture(t)

	list, err := ReadImageList(strings.NewReader("nginx:1.27\nquay.io/acme/tool@"+f.quay.DigestStr()+"\n"), "images.txt")
	if err != nil {
		t.Fatal(err)
	}

	sel := Selection{
		Images:        list,
		TalosDefaults: []release.Version{release.MustParseVersion(testVersion)},
		KubernetesImages: func(release.Version) ([]string, error) {
			return []string{"registry.k8s.io/etcd:3.5.21-0", "ghcr.io/siderolabs/flannel:v0.26.7"}, nil
		},
	}

	plan, err := NewPlan(ctx, f.src, sel)
	if err != nil {
		t.Fatal(err)
	}

	byRepo := map[string]*Item{}
	for _, it := range plan.Items {
		if it.Kind != KindSignature {
			byRepo[it.Repo] = it
		}
	}

	for repo, kind := range map[string]Kind{
		"docker.io/library/nginx": KindImage, "quay.io/acme/tool": KindImage,
		"registry.k8s.io/etcd": KindKubernetes, "siderolabs/flannel": KindKubernetes,
	} {
		if it := byRepo[repo]; it == nil || it.Kind != kind {
			t.Errorf("plan item %s = %v, want kind %s", repo, it, kind)
		}
	}

	if it := byRepo["quay.io/acme/tool"]; it != nil && len(it.Tags) != 0 {
		t.Errorf("an image listed by digest got tags %q", it.Tags)
	}

	if kinds := countKinds(plan); kinds[KindSignature] != 1 {
		t.Errorf("plan has %d signatures, want nginx's one .sig", kinds[KindSignature])
	}

	// The Kubernetes images are governed by no rule either, and are not
	// excused: a release's images must be verified.
	var events []Event
	if _, err := Copy(ctx, plan, Registry{Mirror: release.Mirror{Registry: newRegistry(t, true)}}, f.options(t, &events)); !errors.Is(err, signing.ErrUntrusted) {
		t.Fatalf("Copy with unruled Kubernetes images: %v, want a refusal", err)
	}

	sel.TalosDefaults = nil
	if plan, err = NewPlan(ctx, f.src, sel); err != nil {
		t.Fatal(err)
	}

	dst := Registry{Mirror: release.Mirror{Registry: newRegistry(t, true)}}

	events = nil

	st, err := Copy(ctx, plan, dst, f.options(t, &events))
	if err != nil {
		t.Fatal(err)
	}

	if st.Verified != 1 || st.Unverified != 1 || st.BlobsCopied == 0 || !strings.Contains(st.String(), "1 not verified (no trust-policy rule)") {
		t.Errorf("stats = %+v (%s), want nginx verified and quay.io/acme/tool not", st, st)
	}

	var unverified []string

	for _, e := range events {
		if e.Kind == EventUnverified {
			unverified = append(unverified, e.Item.Repo)
		}
	}

	if strings.Join(unverified, ",") != "quay.io/acme/tool" {
		t.Errorf("unverified events for %q", unverified)
	}

	sameContent(t, plan, dst)

	// Again: nothing to copy.
	st, err = Copy(ctx, plan, dst, f.options(t, &events))
	if err != nil {
		t.Fatal(err)
	}

	if st.BlobsCopied != 0 || st.ManifestsWritten != 0 || st.TagsWritten != 0 {
		t.Errorf("second copy wrote something: %s", st)
	}

	// Through an archive: the same images and signatures arrive.
	archive := Archive{Path: filepath.Join(t.TempDir(), "images.tar")}
	if _, err := Copy(ctx, plan, archive, f.options(t, &events)); err != nil {
		t.Fatal(err)
	}

	fromArchive, err := NewPlan(ctx, archive, sel)
	if err != nil {
		t.Fatal(err)
	}

	inside := Registry{Mirror: release.Mirror{Registry: newRegistry(t, false)}}
	if st, err = Copy(ctx, fromArchive, inside, f.options(t, &events)); err != nil || st.Verified != 1 || st.Unverified != 1 {
		t.Fatalf("from the archive: %s, %v", st, err)
	}

	sameContent(t, plan, inside)
}

func TestCopyImagesRuleRefuses(t *testing.T) {
	ctx := context.Background()
	f := newImagesFixture(t)

	plan, err := NewPlan(ctx, f.src, Selection{Images: []string{"docker.io/library/nginx:1.27", "docker.io/library/redis:7"}})
	if err != nil {
		t.Fatal(err)
	}

	dst := Registry{Mirror: release.Mirror{Registry: newRegistry(t, true)}}

	var events []Event

	_, err = Copy(ctx, plan, dst, f.options(t, &events))

	var ve *VerifyError
	if !errors.As(err, &ve) || ve.Item.Repo != "docker.io/library/redis" || !strings.Contains(err.Error(), "no signatures found") {
		t.Fatalf("Copy of an unsigned image a rule names: %v", err)
	}

	// Nothing was written, not even the image that passed.
	if _, err := remote.Head(dst.Registry.Repo("docker.io/library/nginx").Tag("1.27")); err == nil {
		t.Error("nginx was written although the copy was refused")
	}
}

func TestPlanImageNotFound(t *testing.T) {
	f := newImagesFixture(t)

	_, err := NewPlan(t.Context(), f.src, Selection{Images: []string{"docker.io/library/nginx:9.9"}})
	if !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "docker.io/library/nginx:9.9") {
		t.Fatalf("plan of a missing image: %v", err)
	}
}

// TestPlanExtensionNames: extensions are found as a schematic names them,
// by the public factory's old names too, or by the last element.
func TestPlanExtensionNames(t *testing.T) {
	f := pushRelease(t, false)

	sel := Selection{Versions: []release.Version{release.MustParseVersion(testVersion)}, Extensions: []string{"siderolabs/i915-ucode", "gvisor", "siderolabs/i915"}}

	plan, err := NewPlan(t.Context(), f.src, sel)
	if err != nil {
		t.Fatal(err)
	}

	var got []string

	for _, it := range plan.Items {
		if it.Kind == KindExtension {
			got = append(got, it.Repo)
		}
	}

	if strings.Join(got, ",") != "siderolabs/i915,siderolabs/gvisor" {
		t.Errorf("extensions planned: %q", got)
	}

	sel.Extensions = []string{"siderolabs/no-such"}
	if _, err := NewPlan(t.Context(), f.src, sel); err == nil || !strings.Contains(err.Error(), `extension "siderolabs/no-such": not in the catalog`) {
		t.Errorf("an unknown extension: %v", err)
	}
}

// TestCopyImagesRuleByUpstreamName: a rule naming an image by its upstream
// name (ghcr.io/acme/app) when the source is a mirror, which holds it as
// acme/app, does not let it through unverified.
func TestCopyImagesRuleByUpstreamName(t *testing.T) {
	ctx := context.Background()
	f := newImagesFixture(t)

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "k.pub"), signingtest.MustGenerateKey(t, signingtest.ECDSAP256).PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	p, err := signing.ParsePolicy([]byte("rules:\n  - name: ghcr\n    repositories: [ghcr.io/siderolabs/*]\n    keys: [{path: k.pub}]\n"), dir)
	if err != nil {
		t.Fatal(err)
	}

	f.policy = p

	plan, err := NewPlan(ctx, f.src, Selection{Images: []string{"ghcr.io/siderolabs/flannel:v0.26.7"}})
	if err != nil {
		t.Fatal(err)
	}

	var events []Event

	st, err := Copy(ctx, plan, Registry{Mirror: release.Mirror{Registry: newRegistry(t, true)}}, f.options(t, &events))
	if !errors.Is(err, signing.ErrUntrusted) || !strings.Contains(err.Error(), "no trust policy matches repository") || st.Unverified != 0 {
		t.Fatalf("Copy = %s, %v; want a refusal", st, err)
	}
}

// TestRendererUnverified: the unverified line is printed whole, also over
// a progress bar (which it clears first), and the summary counts it.
func TestRendererUnverified(t *testing.T) {
	it := &Item{Kind: KindImage, Repo: "docker.io/library/busybox", Tags: []string{"latest"}, Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("a", 64)}}
	want := "NOT verified docker.io/library/busybox:latest@sha256:" + strings.Repeat("a", 64) + ": no trust-policy rule names docker.io/library/busybox; copied unverified\n"

	for _, tty := range []bool{false, true} {
		var b strings.Builder

		r := NewRenderer(&b)
		r.tty = tty

		r.Event(Event{Kind: EventBytes, Done: 1, Total: 2})
		r.Event(Event{Kind: EventUnverified, Item: it})
		r.Event(Event{Kind: EventDone, Stats: Stats{Items: 2, Verified: 1, Unverified: 1}})

		out := b.String()
		if !strings.Contains(out, want) || (tty && !strings.Contains(out, "\r\033[K"+want)) {
			t.Errorf("tty=%t: output %q lacks %q", tty, out, want)
		}

		if !strings.Contains(out, "2 items, 1 verified, 1 not verified (no trust-policy rule): 0 blobs copied") {
			t.Errorf("tty=%t: summary in %q", tty, out)
		}
	}
}
