//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// cosignCLI runs the real cosign in a private home, with key-pair
// passwords empty and no way to the public Sigstore.
type cosignCLI struct{ bin, dir string }

func newCosignCLI(t *testing.T) *cosignCLI {
	t.Helper()

	c := &cosignCLI{bin: binary(t, "COSIGN"), dir: t.TempDir()}
	if out, err := c.run("generate-key-pair", "--output-key-prefix", "cosign"); err != nil {
		t.Fatalf("cosign generate-key-pair: %v\n%s", err, out)
	}

	return c
}

func (c *cosignCLI) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	cmd := exec.CommandContext(ctx, c.bin, args...)
	cmd.Dir = c.dir
	cmd.Env = []string{"HOME=" + c.dir, "TUF_ROOT=" + filepath.Join(c.dir, "tuf"), "COSIGN_PASSWORD=", "PATH=/usr/bin:/bin"}

	out, err := cmd.CombinedOutput()

	return string(out), err
}

func (c *cosignCLI) pub() string { return filepath.Join(c.dir, "cosign.pub") }

// imageSource is an image pushed to the stand-in upstream registry: the
// reference written in images.txt, the name a node pulls, its digest.
type imageSource struct {
	listed, pull, digest string
}

// pushPlatformIndex pushes an index of a linux/amd64 and a linux/arm64
// image, as Docker Hub's official images are.
func pushPlatformIndex(t *testing.T, ref name.Reference) v1.Hash {
	t.Helper()

	idx := v1.ImageIndex(empty.Index)

	for _, arch := range []string{"amd64", "arm64"} {
		img, err := random.Image(2048, 2)
		if err != nil {
			t.Fatal(err)
		}

		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: arch}}})
	}

	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}

	d, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}

	return d
}

func pushImage(t *testing.T, ref name.Reference) v1.Hash {
	t.Helper()

	img, err := random.Image(3000, 2)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}

	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}

	return d
}

// imagesUpstream is a real registry process standing in for the internet:
// a signed Talos release (demo.Push, signed with releaseKey) and images
// of Docker Hub, quay.io, registry.k8s.io and ghcr.io under their mirror
// paths (release.MirrorPath: docker.io/library/nginx, acme/app for
// ghcr.io/acme/app), as `kiln mirror --from <registry>` reads a mirror.
// nginx is signed by the real cosign CLI (legacy .sig), etcd by it in the
// new bundle format (an OCI referrer); redis is unsigned but named by the
// policy; busybox, quay.io/acme/tool and ghcr.io/acme/app are named by no
// rule.
type imagesUpstream struct {
	addr    string
	rel     *demo.Release
	cosign  *cosignCLI
	policy  string
	images  []imageSource
	nginx   imageSource
	etcd    imageSource
	imgList string // images.txt
}

func newImagesUpstream(t *testing.T) *imagesUpstream {
	t.Helper()

	ctx := context.Background()
	u := &imagesUpstream{addr: startRegistry(t), cosign: newCosignCLI(t)}
	reg, _ := name.NewRegistry(u.addr, name.Insecure)

	releaseKey := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)

	rel, err := demo.Push(ctx, demo.Options{
		Version:  "v1.13.0",
		Registry: reg,
		Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
			return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), releaseKey)
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	u.rel = rel

	tag := func(path, tag string) name.Tag { return reg.Repo(path).Tag(tag) }

	nginx := pushPlatformIndex(t, tag("docker.io/library/nginx", "1.27"))
	busybox := pushImage(t, tag("docker.io/library/busybox", "latest"))
	tool := pushImage(t, tag("quay.io/acme/tool", "build-17"))
	etcd := pushPlatformIndex(t, tag("registry.k8s.io/etcd", "3.5.21-0"))
	app := pushImage(t, tag("acme/app", "v1"))
	pushImage(t, tag("docker.io/library/redis", "7"))

	u.nginx = imageSource{"nginx:1.27", "docker.io/library/nginx:1.27", nginx.String()}
	u.etcd = imageSource{"registry.k8s.io/etcd:3.5.21-0", "registry.k8s.io/etcd:3.5.21-0", etcd.String()}
	u.images = []imageSource{
		u.nginx,
		{"busybox", "docker.io/library/busybox:latest", busybox.String()},
		{"quay.io/acme/tool@" + tool.String(), "quay.io/acme/tool@" + tool.String(), tool.String()},
		u.etcd,
		{"ghcr.io/acme/app:v1", "ghcr.io/acme/app:v1", app.String()},
	}

	for _, s := range []struct {
		ref   string
		extra []string
	}{
		{u.addr + "/docker.io/library/nginx@" + nginx.String(), nil},
		{u.addr + "/registry.k8s.io/etcd@" + etcd.String(), []string{"--new-bundle-format"}},
	} {
		args := append([]string{"sign", "--key", "cosign.key", "--tlog-upload=false", "-y", "--allow-http-registry"}, s.extra...)
		if out, err := u.cosign.run(append(args, s.ref)...); err != nil {
			t.Fatalf("cosign sign %s: %v\n%s", s.ref, err, out)
		}
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "release.pub"), releaseKey.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	u.policy = filepath.Join(dir, "policy.yaml")
	policy := fmt.Sprintf(`rules:
  - name: talos-and-site
    repositories: ["siderolabs/*", "registry.k8s.io/*", "registry.k8s.io/*/*", "docker.io/library/nginx", "docker.io/library/redis"]
    keys:
      - path: release.pub
      - path: %s
`, u.cosign.pub())

	if err := os.WriteFile(u.policy, []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}

	var list strings.Builder

	list.WriteString("# cluster add-ons\n\n")

	for _, img := range u.images {
		list.WriteString(img.listed + "   # " + img.pull + "\n")
	}

	u.imgList = filepath.Join(dir, "images.txt")
	if err := os.WriteFile(u.imgList, []byte(list.String()), 0o644); err != nil {
		t.Fatal(err)
	}

	return u
}

// kilnMirror runs kiln mirror, returning stdout and stderr together.
func kilnMirror(t *testing.T, args ...string) (string, error) {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	out, err := exec.CommandContext(ctx, binary(t, "KILN_BIN"), append([]string{"mirror"}, args...)...).CombinedOutput()

	return string(out), err
}

var (
	blobsCopiedRE  = regexp.MustCompile(`(\d+) blobs copied \(([^)]*)\)`)
	notVerifiedRE  = regexp.MustCompile(`(?m)^NOT verified (\S+)@sha256:[0-9a-f]{64}: no trust-policy rule names (\S+); copied unverified$`)
	verifiedLineRE = regexp.MustCompile(`(?m)^verified (\S+)@sha256:[0-9a-f]{64}$`)
)

// checkMirrorOutput checks what one kiln mirror of u's images said: which
// images were verified, which were copied unverified and why.
func checkMirrorOutput(t *testing.T, out string) {
	t.Helper()

	unverified := map[string]bool{}
	for _, m := range notVerifiedRE.FindAllStringSubmatch(out, -1) {
		unverified[m[2]] = true
	}

	for _, repo := range []string{"docker.io/library/busybox", "quay.io/acme/tool", "acme/app"} {
		if !unverified[repo] {
			t.Errorf("kiln mirror did not say %s was copied unverified:\n%s", repo, out)
		}
	}

	if len(unverified) != 3 {
		t.Errorf("unverified: %v, want 3", unverified)
	}

	verified := map[string]bool{}
	for _, m := range verifiedLineRE.FindAllStringSubmatch(out, -1) {
		verified[m[1]] = true
	}

	for _, ref := range []string{"docker.io/library/nginx:1.27", "registry.k8s.io/etcd:3.5.21-0"} {
		if !verified[ref] {
			t.Errorf("kiln mirror did not verify %s:\n%s", ref, out)
		}
	}

	if !strings.Contains(out, ", 3 not verified (no trust-policy rule): ") {
		t.Errorf("the summary does not count the unverified images:\n%s", out)
	}
}

// checkKilnHolds checks, with crane, that kiln holds each image under its
// mirror path with the upstream digest, and the Kubernetes images of the
// demo release when k8s is set.
func checkKilnHolds(t *testing.T, addr string, u *imagesUpstream, k8s bool) {
	t.Helper()

	crane := binary(t, "CRANE")

	for _, img := range u.images {
		path := strings.TrimPrefix(img.pull, "ghcr.io/")

		if got := strings.TrimSpace(run(t, crane, "digest", addr+"/"+path)); got != img.digest {
			t.Errorf("crane digest %s/%s = %s, want %s", addr, path, got, img.digest)
		}
	}

	// Whole indexes: every platform's image is there, not only this machine's.
	for _, platform := range []string{"linux/amd64", "linux/arm64"} {
		run(t, crane, "manifest", "--platform", platform, addr+"/docker.io/library/nginx:1.27")
	}

	if k8s {
		for _, d := range u.rel.KubernetesImages {
			path := d.Context().RepositoryStr()
			if got := strings.TrimSpace(run(t, crane, "digest", addr+"/"+path+"@"+d.DigestStr())); got != d.DigestStr() {
				t.Errorf("crane digest of %s = %s, want %s", path, got, d.DigestStr())
			}
		}
	}
}

// TestMirrorImages: kiln mirror --images copies images of any registry,
// with their cosign signatures, from a real registry process into a real
// kiln; a registry client configured only from the air-gap patch pulls each
// by its upstream name, and cosign verifies the copies in kiln.
func TestMirrorImages(t *testing.T) {
	u := newImagesUpstream(t)
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", u.policy)

	var copied []string

	for i := range 2 {
		out, err := kilnMirror(t, "--from", u.addr, "--to", k.addr, "--to-password-file", k.passwordFile(),
			"--version", "v1.13.0", "--images", u.imgList, "--trust-policy", u.policy)
		if err != nil {
			t.Fatalf("kiln mirror run %d: %v\n%s", i+1, err, out)
		}

		t.Logf("run %d:\n%s", i+1, out)
		checkMirrorOutput(t, out)

		m := blobsCopiedRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("run %d printed no summary", i+1)
		}

		copied = append(copied, m[1])

		if nothing := strings.Contains(out, "nothing copied: "+k.addr+" already holds all "); nothing != (i == 1) {
			t.Errorf("run %d: said nothing was copied: %t", i+1, nothing)
		}
	}

	if copied[0] == "0" || copied[1] != "0" {
		t.Fatalf("blobs copied per run = %v, want some then none", copied)
	}

	checkKilnHolds(t, k.addr, u, true)

	// The copies' signatures, checked by cosign itself against kiln. A
	// bundle needs a trusted root even for a key: an empty one (no Fulcio,
	// no log), as the signature was made without a log.
	if out, err := u.cosign.run("trusted-root", "create", "--out", "empty-root.json"); err != nil {
		t.Fatalf("cosign trusted-root create: %v\n%s", err, out)
	}

	for _, tc := range []struct {
		ref   string
		extra []string
	}{
		{k.addr + "/docker.io/library/nginx:1.27", nil},
		{k.addr + "/registry.k8s.io/etcd:3.5.21-0", []string{"--new-bundle-format", "--trusted-root", "empty-root.json"}},
	} {
		args := append([]string{"verify", "--key", u.cosign.pub(), "--insecure-ignore-tlog", "--allow-http-registry"}, tc.extra...)
		if out, err := u.cosign.run(append(args, tc.ref)...); err != nil {
			t.Errorf("cosign verify %s: %v\n%s", tc.ref, err, out)
		}
	}

	t.Run("pulled through the air-gap patch", func(t *testing.T) {
		client := &http.Client{Timeout: time.Minute}
		if code, _, body := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", "{}"); code != 201 {
			t.Fatalf("POST /schematics = %d %s", code, body)
		}

		patch, err := exec.Command(binary(t, "KILN_BIN"), "config", "airgap", "--kiln", "http://"+k.addr, "--schematic", emptyID, "--talos-version", "v1.13.0").Output()
		if err != nil {
			t.Fatalf("kiln config airgap: %v", err)
		}

		airgapPullImages(t, k.addr, string(patch), u)
	})

	t.Run("a rule that names an unsigned image stops it", func(t *testing.T) {
		list := filepath.Join(t.TempDir(), "redis.txt")
		if err := os.WriteFile(list, []byte("nginx:1.27\nredis:7\n"), 0o644); err != nil {
			t.Fatal(err)
		}

		out, err := kilnMirror(t, "--from", u.addr, "--to", k.addr, "--to-password-file", k.passwordFile(), "--images", list, "--trust-policy", u.policy)
		if err == nil || !strings.Contains(out, "docker.io/library/redis") || !strings.Contains(out, "no signatures found") {
			t.Fatalf("mirror of an unsigned image a rule names: %v\n%s", err, out)
		}

		if out, err := exec.Command(binary(t, "CRANE"), "digest", k.addr+"/docker.io/library/redis:7").CombinedOutput(); err == nil {
			t.Fatalf("the refused image is in kiln: %s", out)
		}
	})

	t.Run("a bad line is refused before copying", func(t *testing.T) {
		list := filepath.Join(t.TempDir(), "bad.txt")
		if err := os.WriteFile(list, []byte("# ok\nbusybox\nquay.io/acme/Tool:1\n"), 0o644); err != nil {
			t.Fatal(err)
		}

		archive := filepath.Join(t.TempDir(), "never.tar")

		out, err := kilnMirror(t, "--from", u.addr, "--to", archive, "--images", list, "--trust-policy", u.policy)
		if err == nil || !strings.Contains(out, list+":3: ") || !strings.Contains(out, `"quay.io/acme/Tool:1"`) {
			t.Fatalf("a bad line: %v\n%s", err, out)
		}

		if _, err := os.Stat(archive + ".partial"); !os.IsNotExist(err) {
			t.Errorf("a refused list started an archive: %v", err)
		}
	})
}

// TestMirrorImagesArchive: --images and --talos-defaults, without
// --version, into an archive and from it into a kiln on the far side.
func TestMirrorImagesArchive(t *testing.T) {
	u := newImagesUpstream(t)
	archive := filepath.Join(t.TempDir(), "images.tar")

	args := []string{"--images", u.imgList, "--talos-defaults", "v1.13.0", "--trust-policy", u.policy}

	out, err := kilnMirror(t, append([]string{"--from", u.addr, "--to", archive}, args...)...)
	if err != nil {
		t.Fatalf("mirror into the archive: %v\n%s", err, out)
	}

	t.Logf("connected side:\n%s", out)
	checkMirrorOutput(t, out)

	st, err := os.Stat(archive)
	if err != nil {
		t.Fatal(err)
	}

	// Again: nothing to add, and the archive is left alone.
	out, err = kilnMirror(t, append([]string{"--from", u.addr, "--to", archive}, args...)...)
	if err != nil || !strings.Contains(out, "nothing copied: archive:"+archive) {
		t.Fatalf("second run into the archive: %v\n%s", err, out)
	}

	if st2, err := os.Stat(archive); err != nil || !st2.ModTime().Equal(st.ModTime()) || st2.Size() != st.Size() {
		t.Errorf("the second run touched the archive: %v", err)
	}

	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", u.policy)

	out, err = kilnMirror(t, append([]string{"--from", archive, "--to", k.addr, "--to-password-file", k.passwordFile()}, args...)...)
	if err != nil {
		t.Fatalf("mirror from the archive: %v\n%s", err, out)
	}

	t.Logf("far side:\n%s", out)
	checkMirrorOutput(t, out)
	checkKilnHolds(t, k.addr, u, true)

	// --talos-defaults copied the cluster images, not the release.
	if out, err := exec.Command(binary(t, "CRANE"), "digest", k.addr+"/siderolabs/imager:v1.13.0").CombinedOutput(); err == nil {
		t.Errorf("--talos-defaults copied the imager: %s", out)
	}

	if out, err := u.cosign.run("verify", "--key", u.cosign.pub(), "--insecure-ignore-tlog", "--allow-http-registry", k.addr+"/docker.io/library/nginx:1.27"); err != nil {
		t.Errorf("cosign verify of the copy that crossed the gap: %v\n%s", err, out)
	}
}

// airgapPullImages pulls u's images (and nginx's signature) by their
// upstream names through the mirrors of patch, as TestAirgapPatchPulls
// does, each with its upstream digest.
func airgapPullImages(t *testing.T, kilnAddr, patch string, u *imagesUpstream) {
	t.Helper()

	certDir := t.TempDir()
	conf := registriesConf(t, patch, certDir)

	confFile := filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}

	images := make([]mirroredImage, 0, len(u.images)+1)
	for _, img := range u.images {
		images = append(images, mirroredImage{upstream: img.pull, kiln: kilnAddr + "/" + strings.TrimPrefix(img.pull, "ghcr.io/"), digest: img.digest})
	}

	sig := "sha256-" + strings.TrimPrefix(u.nginx.digest, "sha256:") + ".sig"
	images = append(images, mirroredImage{
		upstream: "docker.io/library/nginx:" + sig,
		kiln:     kilnAddr + "/docker.io/library/nginx:" + sig,
		digest:   strings.TrimSpace(run(t, binary(t, "CRANE"), "digest", u.addr+"/docker.io/library/nginx:"+sig)),
	})

	start := time.Now()

	for i, img := range images {
		if err := pullThroughMirror(confFile, certDir, filepath.Join(t.TempDir(), strconv.Itoa(i)), img); err != nil {
			t.Error(err)
		}
	}

	t.Logf("pulled %d images (%s) through the patch's mirrors in %s", len(images), upstreamHosts(images), time.Since(start).Round(time.Millisecond))

	// The control: with the mirrors gone, the same pull fails.
	bare := filepath.Join(t.TempDir(), "bare.conf")
	if err := os.WriteFile(bare, []byte("unqualified-search-registries = []\n[[registry]]\nprefix = \"docker.io\"\nlocation = \"127.0.0.1:1/docker.io\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := pullThroughMirror(bare, certDir, filepath.Join(t.TempDir(), "bare"), images[0]); err == nil {
		t.Error("a pull without the patch's mirrors succeeded")
	}
}
