package server

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/demo"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

// TestSigningKeyPub: the key is made on first start, private (0600), served
// as the public factory serves its own, and kept across restarts.
func TestSigningKeyPub(t *testing.T) {
	dir := t.TempDir()

	get := func() string {
		ts := startServer(t, Config{DataDir: dir})
		defer ts.stop()

		resp, body := ts.do(t, "GET", "/oci/cosign/signing-key.pub", "")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-pem-file" {
			t.Fatalf("GET /oci/cosign/signing-key.pub = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}

		pub, err := cryptoutils.UnmarshalPEMToPublicKey([]byte(body))
		if err != nil {
			t.Fatalf("served key: %v\n%s", err, body)
		}

		if k, ok := pub.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Fatalf("served key is %T, want ECDSA P-256", pub)
		}

		return body
	}

	first := get()

	st, err := os.Stat(filepath.Join(dir, signing.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	if st.Mode().Perm() != 0o600 {
		t.Errorf("signing key mode %04o, want 0600", st.Mode().Perm())
	}

	s, err := signing.LoadSigner(filepath.Join(dir, signing.SigningKeyFile), nil)
	if err != nil {
		t.Fatal(err)
	}

	if string(s.PublicKeyPEM()) != first {
		t.Error("served key is not the public half of the key file")
	}

	if again := get(); again != first {
		t.Error("a restart served another key")
	}
}

// TestInstallerFrontend pulls metal-installer/<id>:v1.13.0 from a demo kiln
// as a registry client does: an index over the release's architectures,
// each image the demo installer-base's layers and one artifacts layer, its
// config the base's with the platform, signed with the served key; the
// second pull the same digest; what kiln does not build refused in the
// registry's error format.
func TestInstallerFrontend(t *testing.T) {
	ts := startServer(t, Config{Demo: true})
	createSchematic(t, ts, "{}")

	ref, err := name.NewTag(ts.addr+"/metal-installer/"+emptyID+":v1.13.0", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	idx, err := remote.Index(ref)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}

	digest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}

	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}

	if len(im.Manifests) != len(release.Arches) {
		t.Fatalf("index has %d manifests, want one per architecture %v", len(im.Manifests), release.Arches)
	}

	baseRef, err := name.NewTag(ts.addr+"/"+demo.Namespace+"/"+release.InstallerBaseRepo+":v1.13.0", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	for i, arch := range release.Arches {
		if p := im.Manifests[i].Platform; p == nil || p.OS != "linux" || p.Architecture != arch {
			t.Fatalf("manifest %d platform %v, want linux/%s", i, p, arch)
		}

		img, err := idx.Image(im.Manifests[i].Digest)
		if err != nil {
			t.Fatal(err)
		}

		base, err := remote.Image(baseRef, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}))
		if err != nil {
			t.Fatal(err)
		}

		checkInstallerImage(t, img, base, arch)
	}

	// The second pull is served from the registry: the same digest.
	if again, err := remote.Head(ref); err != nil || again.Digest != digest {
		t.Fatalf("second pull = %v, %v; want %s", again, err, digest)
	}

	checkSignature(t, ts, ref.Context().Digest(digest.String()))

	// installer and metal-installer are the same image.
	if d, err := remote.Head(ref.Context().Registry.Repo("installer", emptyID).Tag("v1.13.0")); err != nil || d.Digest != digest {
		t.Errorf("installer/%s:v1.13.0 = %v, %v; want %s", emptyID, d, err, digest)
	}

	for _, c := range []struct {
		path, code string
		status     int
	}{
		{"/v2/metal-installer/" + strings.Repeat("0", 64) + "/manifests/v1.13.0", "NAME_UNKNOWN", 404},
		{"/v2/metal-installer/" + emptyID + "/manifests/v1.99.0", "MANIFEST_UNKNOWN", 404},
		{"/v2/metal-installer/" + emptyID + "/manifests/vnope", "MANIFEST_UNKNOWN", 404},
		{"/v2/metal-installer-secureboot/" + emptyID + "/manifests/v1.13.0", "UNSUPPORTED", 501},
		{"/v2/aws-installer/" + emptyID + "/manifests/v1.13.0", "UNSUPPORTED", 501},
	} {
		resp, body := ts.do(t, "GET", c.path, "")

		var e struct {
			Errors []struct{ Code, Message string }
		}

		if err := json.Unmarshal([]byte(body), &e); err != nil || resp.StatusCode != c.status || len(e.Errors) != 1 || e.Errors[0].Code != c.code {
			t.Errorf("GET %s = %d %s, want %d %s", c.path, resp.StatusCode, body, c.status, c.code)
		}
	}

	// Clients write nothing there without the credential.
	if err := remote.Tag(ref.Context().Tag("evil"), idx); err == nil {
		t.Error("an anonymous client tagged an installer")
	}

	// An image an admin pushes over the tag is not signed by kiln: the next
	// pull gets kiln's installer again.
	password, err := access.ReadPassword(filepath.Join(ts.dir, "auth", "admin-password"))
	if err != nil {
		t.Fatal(err)
	}

	baseIdx, err := remote.Index(baseRef)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.WriteIndex(ref, baseIdx, remote.WithAuth(&authn.Basic{Username: access.AdminUser, Password: password})); err != nil {
		t.Fatalf("admin push over %s: %v", ref, err)
	}

	baseDigest, err := baseIdx.Digest()
	if err != nil {
		t.Fatal(err)
	}

	if _, err := remote.Head(ref.Context().Digest(baseDigest.String())); err != nil {
		t.Fatalf("the admin's push is not there: %v", err)
	}

	if again, err := remote.Head(ref); err != nil || again.Digest != digest {
		t.Fatalf("pull after an admin pushed over the tag = %v, %v; want kiln's %s again", again, err, digest)
	}

	checkSignature(t, ts, ref.Context().Digest(digest.String()))
}

// checkInstallerImage checks one platform image against its base.
func checkInstallerImage(t *testing.T, img, base v1.Image, arch string) {
	t.Helper()

	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}

	baseLayers, err := base.Layers()
	if err != nil {
		t.Fatal(err)
	}

	if len(layers) != len(baseLayers)+1 {
		t.Fatalf("linux/%s: %d layers, want the base's %d and the artifacts layer", arch, len(layers), len(baseLayers))
	}

	for i, bl := range baseLayers {
		want, _ := bl.Digest()
		if got, _ := layers[i].Digest(); got != want {
			t.Errorf("linux/%s layer %d is %s, want the base's %s", arch, i, got, want)
		}
	}

	rc, err := layers[len(layers)-1].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()

	var files []string

	tr := tar.NewReader(rc)

	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			t.Fatal(err)
		}

		files = append(files, h.Name)
	}

	want := []string{"usr/install/" + arch + "/systemd-boot.efi", "usr/install/" + arch + "/vmlinuz.efi"}
	if !slices.Equal(files, want) {
		t.Errorf("linux/%s artifacts layer holds %v, want %v", arch, files, want)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	bcf, err := base.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	if cf.OS != "linux" || cf.Architecture != arch || !slices.Equal(cf.Config.Entrypoint, bcf.Config.Entrypoint) || !slices.Equal(cf.Config.Env, bcf.Config.Env) {
		t.Errorf("linux/%s config %s/%s entrypoint %v env %v, want the base's %v %v", arch, cf.OS, cf.Architecture,
			cf.Config.Entrypoint, cf.Config.Env, bcf.Config.Entrypoint, bcf.Config.Env)
	}
}

// checkSignature checks the legacy cosign signature of ref against the
// served key, as cosign verify --key does.
func checkSignature(t *testing.T, ts *testServer, ref name.Digest) {
	t.Helper()

	_, pemKey := ts.do(t, "GET", "/oci/cosign/signing-key.pub", "")

	pub, err := cryptoutils.UnmarshalPEMToPublicKey([]byte(pemKey))
	if err != nil {
		t.Fatal(err)
	}

	verifier, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}

	sigImg, err := remote.Image(ref.Context().Tag("sha256-" + strings.TrimPrefix(ref.DigestStr(), "sha256:") + ".sig"))
	if err != nil {
		t.Fatalf("signature of %s: %v", ref, err)
	}

	m, err := sigImg.Manifest()
	if err != nil || len(m.Layers) != 1 {
		t.Fatalf("signature manifest %v, %v: want one layer", m, err)
	}

	l, err := sigImg.LayerByDigest(m.Layers[0].Digest)
	if err != nil {
		t.Fatal(err)
	}

	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()

	payload, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}

	sig, err := base64.StdEncoding.DecodeString(m.Layers[0].Annotations["dev.cosignproject.cosign/signature"])
	if err != nil {
		t.Fatal(err)
	}

	if err := verifier.VerifySignature(bytes.NewReader(sig), bytes.NewReader(payload)); err != nil {
		t.Fatalf("signature of %s does not verify with the served key: %v", ref, err)
	}

	var p struct {
		Critical struct {
			Identity struct {
				DockerReference string `json:"docker-reference"`
			}
			Image struct {
				DockerManifestDigest string `json:"docker-manifest-digest"`
			}
		}
	}

	if err := json.Unmarshal(payload, &p); err != nil {
		t.Fatal(err)
	}

	if p.Critical.Image.DockerManifestDigest != ref.DigestStr() || p.Critical.Identity.DockerReference != ts.addr+"/metal-installer/"+emptyID {
		t.Errorf("signed payload names %s@%s, want %s", p.Critical.Identity.DockerReference, p.Critical.Image.DockerManifestDigest, ref)
	}
}

// TestInstallerFrontendAuthReads: with --auth-reads a client without the
// credential is refused before anything is built; with it, the pull works.
func TestInstallerFrontendAuthReads(t *testing.T) {
	ts := startServer(t, Config{Demo: true, AuthReads: true})
	createSchematic(t, ts, "{}")

	path := "/v2/metal-installer/" + emptyID + "/manifests/v1.13.0"

	resp, body := ts.do(t, "GET", path, "")
	if resp.StatusCode != 401 {
		t.Fatalf("anonymous GET %s = %d %s", path, resp.StatusCode, body)
	}

	admin := http.Header{"Authorization": {ts.adminAuthorization(t)}}

	if resp, body := ts.doWith(t, "GET", "/v2/_catalog", "", admin); resp.StatusCode != 200 || strings.Contains(body, "metal-installer") {
		t.Fatalf("after an anonymous pull the catalog is %d %s: want no installer built", resp.StatusCode, body)
	}

	admin.Set("Accept", "application/vnd.oci.image.index.v1+json")

	if resp, body := ts.doWith(t, "GET", path, "", admin); resp.StatusCode != 200 || !strings.Contains(body, `"manifests"`) {
		t.Fatalf("admin GET %s = %d %s", path, resp.StatusCode, body)
	}
}

// TestInstallerFrontendConcurrent: pulls of one installer at the same time
// wait for one build per repository, and all get the same image; a pull of
// installer/<id> at the same time as metal-installer/<id> is published too.
func TestInstallerFrontendConcurrent(t *testing.T) {
	var logs syncLog

	ts := startServerLogged(t, Config{Demo: true}, slog.New(slog.NewJSONHandler(&logs, nil)))
	createSchematic(t, ts, "{}")

	// A connection the client dialled but did not use keeps the server's
	// shutdown waiting; closed before the server stops.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)

	const pulls = 6

	digests := make([]string, pulls)

	var wg sync.WaitGroup

	for i := range pulls {
		image := "metal-installer"
		if i%2 == 1 {
			image = "installer"
		}

		wg.Add(1)

		go func() {
			defer wg.Done()

			ref, err := name.NewTag(ts.addr+"/"+image+"/"+emptyID+":v1.12.0", name.Insecure)
			if err != nil {
				t.Error(err)

				return
			}

			idx, err := remote.Index(ref, remote.WithTransport(tr))
			if err != nil {
				t.Errorf("pull %s: %v", ref, err)

				return
			}

			d, err := idx.Digest()
			if err != nil {
				t.Error(err)

				return
			}

			digests[i] = d.String()
		}()
	}

	wg.Wait()

	for _, d := range digests {
		if d != digests[0] {
			t.Fatalf("concurrent pulls got %v, want one digest", digests)
		}
	}

	// A pull that missed the tag just before a build published it runs
	// one more build, which then finds the tag; publishing is once.
	if n := strings.Count(logs.String(), `"msg":"published installer"`); n != 2 {
		t.Errorf("%d installers published for %d pulls of two repositories, want 2:\n%s", n, pulls, logs.String())
	}

	if n := strings.Count(logs.String(), `"msg":"built installer"`); n < 2 || n > pulls {
		t.Errorf("%d installer builds for %d pulls", n, pulls)
	}
}

// TestGetInstallerImage: the gRPC call builds the installer with progress
// and names it as nodes pull it; the second call is a cache hit with the
// same digest, which a registry pull agrees with; the REST gateway answers
// the same; bad requests are refused naming what is wrong.
func TestGetInstallerImage(t *testing.T) {
	ts := startServer(t, Config{Demo: true})
	createSchematic(t, ts, "{}")

	client := kilnv1.NewImageServiceClient(ts.conn)

	call := func(req *kilnv1.GetInstallerImageRequest) (done *kilnv1.InstallerImage, progress int, hit bool, err error) {
		stream, err := client.GetInstallerImage(context.Background(), req)
		if err != nil {
			return nil, 0, false, err
		}

		for {
			ev, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				return done, progress, hit, nil
			}

			if err != nil {
				return nil, progress, hit, err
			}

			switch {
			case ev.GetProgress() != nil:
				progress++
			case ev.GetCacheHit():
				hit = true
			case ev.GetDone() != nil:
				done = ev.GetDone()
			}
		}
	}

	want := ts.addr + "/metal-installer/" + emptyID + ":v1.13.0"

	first, progress, hit, err := call(&kilnv1.GetInstallerImageRequest{SchematicId: emptyID, Version: "1.13.0"})
	if err != nil || first == nil || first.GetReference() != want || hit || progress == 0 {
		t.Fatalf("first call = %v (%d progress events, hit %v), %v; want %s built", first, progress, hit, err, want)
	}

	again, _, hit, err := call(&kilnv1.GetInstallerImageRequest{SchematicId: emptyID, Version: "v1.13.0", Image: "metal-installer"})
	if err != nil || again.GetDigest() != first.GetDigest() || !hit {
		t.Fatalf("second call = %v (hit %v), %v; want %s from the registry", again, hit, err, first.GetDigest())
	}

	ref, err := name.NewTag(want, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	if desc, err := remote.Head(ref); err != nil || desc.Digest.String() != first.GetDigest() {
		t.Fatalf("pull %s = %v, %v; want %s", ref, desc, err, first.GetDigest())
	}

	resp, body := ts.do(t, "POST", "/v1/installers", `{"schematic_id":"`+emptyID+`","version":"v1.13.0"}`)
	if resp.StatusCode != 200 || !strings.Contains(body, `"digest":"`+first.GetDigest()+`"`) || !strings.Contains(body, `"reference":"`+want+`"`) {
		t.Errorf("POST /v1/installers = %d %s", resp.StatusCode, body)
	}

	for _, c := range []struct {
		req  *kilnv1.GetInstallerImageRequest
		code codes.Code
	}{
		{&kilnv1.GetInstallerImageRequest{SchematicId: strings.Repeat("0", 64), Version: "v1.13.0"}, codes.NotFound},
		{&kilnv1.GetInstallerImageRequest{SchematicId: "nope", Version: "v1.13.0"}, codes.NotFound},
		{&kilnv1.GetInstallerImageRequest{SchematicId: emptyID, Version: "v1.99.0"}, codes.NotFound},
		{&kilnv1.GetInstallerImageRequest{SchematicId: emptyID, Version: "v1.13.0", Image: "kernel"}, codes.InvalidArgument},
		{&kilnv1.GetInstallerImageRequest{SchematicId: emptyID, Version: "v1.13.0", Image: "installer-secureboot"}, codes.Unimplemented},
	} {
		if _, _, _, err := call(c.req); status.Code(err) != c.code {
			t.Errorf("GetInstallerImage(%v) = %v, want %s", c.req, err, c.code)
		}
	}
}

// TestInstallerTarball: /image/<id>/<version>/installer-<arch>.tar is the
// linux/<arch> image of the installer pulled from /v2/ (the same config and
// layers), as a docker archive tagged as the factory's.
func TestInstallerTarball(t *testing.T) {
	ts := startServer(t, Config{Demo: true})
	createSchematic(t, ts, "{}")

	ref, err := name.NewTag(ts.addr+"/metal-installer/"+emptyID+":v1.13.0", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	pulled, err := remote.Image(ref, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: "arm64"}))
	if err != nil {
		t.Fatal(err)
	}

	// A docker archive carries the config and layers; its manifest is
	// made up by the reader.
	parts := func(img v1.Image) string {
		cfg, err := img.ConfigName()
		if err != nil {
			t.Fatal(err)
		}

		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}

		out := cfg.String()

		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				t.Fatal(err)
			}

			out += " " + d.String()
		}

		return out
	}

	want := parts(pulled)

	for _, path := range []string{"installer-arm64.tar", "metal-installer-arm64.tar"} {
		resp, body := ts.do(t, "GET", "/image/"+emptyID+"/v1.13.0/"+path, "")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-tar" {
			t.Fatalf("GET %s = %d %s", path, resp.StatusCode, resp.Header.Get("Content-Type"))
		}

		file := filepath.Join(t.TempDir(), path)
		if err := os.WriteFile(file, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}

		tag, err := name.NewTag("siderolabs/installer-base:v1.13.0")
		if err != nil {
			t.Fatal(err)
		}

		img, err := tarball.ImageFromPath(file, &tag)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}

		if got := parts(img); got != want {
			t.Errorf("%s holds config and layers %s; the registry's linux/arm64 image %s", path, got, want)
		}
	}

	if resp, _ := ts.do(t, "GET", "/image/"+emptyID+"/v1.13.0/installer-amd64-secureboot.tar", ""); resp.StatusCode != 501 {
		t.Errorf("SecureBoot installer tarball = %d, want 501", resp.StatusCode)
	}
}
