//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// craneAs runs the real crane with its own docker config directory (where
// `crane auth login` stores credentials), returning its output and error.
func craneAs(t *testing.T, dockerConfig string, args ...string) (string, error) {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	cmd := exec.CommandContext(ctx, binary(t, "CRANE"), args...)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dockerConfig, "HOME="+dockerConfig)

	out, err := cmd.CombinedOutput()

	return string(out), err
}

// refused wants a crane command refused for want of credentials.
func refused(t *testing.T, what, out string, err error) {
	t.Helper()

	if err == nil {
		t.Errorf("%s: crane succeeded anonymously:\n%s", what, out)

		return
	}

	if !strings.Contains(out, "UNAUTHORIZED") && !strings.Contains(out, "401") {
		t.Errorf("%s: crane failed, but not for want of credentials (401):\n%s", what, out)
	}
}

// layerTar is a one-file layer for crane append.
func layerTar(t *testing.T) string {
	t.Helper()

	var b bytes.Buffer

	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: "evil", Mode: 0o644, Size: 4}); err != nil {
		t.Fatal(err)
	}

	tw.Write([]byte("evil")) //nolint:errcheck // in memory
	tw.Close()

	path := filepath.Join(t.TempDir(), "layer.tar")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	return path
}

// TestAttack is issue 13's attacks against the real binary, driven by the
// real crane, curl-like HTTP and grpcurl, as someone on the same network:
// anonymous writes of every kind are refused 401 and change nothing; with
// the admin credential (crane auth login) writes go through, but a signed
// old release tagged over a version builds nothing new (412 naming both
// digests) while what was built before is still served, and an image copied
// with its .sig from another repository is refused; listing schematics needs
// the credential.
func TestAttack(t *testing.T) {
	dir := t.TempDir()
	k := startKiln(t, nil, "--data-dir", dir, "--demo")
	client := &http.Client{Timeout: time.Minute}
	base := "http://" + k.addr
	demo := k.addr + "/kiln-demo/siderolabs/"
	anon := t.TempDir()

	digest := func(ref string) string {
		t.Helper()

		out, err := craneAs(t, anon, "digest", ref)
		if err != nil {
			t.Fatalf("crane digest %s: %v\n%s", ref, err, out)
		}

		return strings.TrimSpace(out)
	}

	v12 := digest(demo + "imager:v1.12.0")
	v13 := digest(demo + "imager:v1.13.0")
	installer := digest(demo + "installer-base:v1.13.0")
	sigOf := func(d string) string { return "sha256-" + strings.TrimPrefix(d, "sha256:") + ".sig" }

	if code, _, body := httpDo(t, client, "POST", base+"/schematics", "{}"); code != 201 {
		t.Fatalf("POST /schematics = %d %s", code, body)
	}

	admin := t.TempDir()
	password, err := os.ReadFile(k.passwordFile())
	if err != nil {
		t.Fatal(err)
	}

	if out, err := craneAs(t, admin, "auth", "login", k.addr, "-u", "admin", "-p", strings.TrimSpace(string(password))); err != nil {
		t.Fatalf("crane auth login: %v\n%s", err, out)
	}

	// skopeo sends the credential it is given once /v2/ challenged it.
	if out, err := exec.Command("skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
		"--dest-creds", "admin:"+strings.TrimSpace(string(password)),
		"docker://"+demo+"imager@"+v12, "docker://"+k.addr+"/scratch/imager:copy").CombinedOutput(); err != nil {
		t.Fatalf("skopeo copy with the admin credential: %v\n%s", err, out)
	}

	t.Run(".sig copied from another repository", func(t *testing.T) {
		// As an admin: installer-base's image and its .sig, tagged as the
		// imager of a new version. The digest's signature verifies, but it
		// was made for ghcr.io/siderolabs/installer-base.
		for _, args := range [][]string{
			{"copy", demo + "installer-base@" + installer, demo + "imager:v1.14.0"},
			{"copy", demo + "installer-base:" + sigOf(installer), demo + "imager:" + sigOf(installer)},
		} {
			if out, err := craneAs(t, admin, args...); err != nil {
				t.Fatalf("crane %v with the admin credential: %v\n%s", args, err, out)
			}
		}

		code, _, body := httpDo(t, client, "GET", base+"/image/"+emptyID+"/v1.14.0/kernel-amd64", "")
		if code != 412 || !strings.Contains(body, "signed as ghcr.io/siderolabs/installer-base, not as ghcr.io/siderolabs/imager") {
			t.Fatalf("kernel of the copied imager = %d %q, want 412 naming both repositories", code, body)
		}

		req, _ := http.NewRequest("POST", base+"/v1/versions/v1.14.0/lock", strings.NewReader(`{"namespace":"kiln-demo"}`))
		req.Header.Set("Authorization", k.adminAuthorization(t))

		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}

		var st struct{ Message string }
		json.NewDecoder(resp.Body).Decode(&st) //nolint:errcheck // checked below
		resp.Body.Close()

		if resp.StatusCode != 412 || !strings.Contains(st.Message, "signed as ghcr.io/siderolabs/installer-base") {
			t.Fatalf("LockRelease of the copied imager = %d %q, want 412", resp.StatusCode, st.Message)
		}
	})

	kernelURL := base + "/image/" + emptyID + "/v1.13.0/kernel-amd64"

	code, _, kernel := httpDo(t, client, "GET", kernelURL, "")
	if code != 200 || len(kernel) == 0 {
		t.Fatalf("GET kernel = %d", code)
	}

	t.Run("anonymous writes", func(t *testing.T) {
		out, err := craneAs(t, anon, "append", "-f", layerTar(t), "-t", k.addr+"/evil/image:1")
		refused(t, "push of a new image", out, err)

		out, err = craneAs(t, anon, "copy", demo+"imager@"+v12, demo+"imager:v1.13.0")
		refused(t, "push over a tag", out, err)

		out, err = craneAs(t, anon, "tag", demo+"imager@"+v12, "v1.13.0")
		refused(t, "tag", out, err)

		out, err = craneAs(t, anon, "delete", demo+"imager@"+v13)
		refused(t, "delete of a manifest", out, err)

		out, err = craneAs(t, anon, "delete", demo+"imager:"+sigOf(v13))
		refused(t, "delete of a .sig", out, err)

		out, err = craneAs(t, anon, "copy", demo+"imager:"+sigOf(v13), demo+"extensions:"+sigOf(v13))
		refused(t, "push of a .sig", out, err)

		out, err = craneAs(t, anon, "copy", demo+"imager@"+v12, k.addr+"/kiln/sigstore-trusted-root:latest")
		refused(t, "push of a trusted root", out, err)

		// skopeo (containers/image) as well.
		sk, err := exec.Command("skopeo", "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
			"docker://"+demo+"imager@"+v12, "docker://"+demo+"imager:v1.13.0").CombinedOutput()
		if err == nil || !strings.Contains(string(sk), "unauthorized") {
			t.Errorf("skopeo copy over a tag, anonymous: %v\n%s", err, sk)
		}

		// The challenge a client needs to send credentials, on a raw upload.
		code, hdr, _ := httpDo(t, client, "POST", "http://"+k.addr+"/v2/kiln-demo/siderolabs/imager/blobs/uploads/", "")
		if code != 401 || hdr.Get("WWW-Authenticate") != `Basic realm="kiln"` {
			t.Errorf("anonymous upload = %d %q, want 401 with a basic challenge", code, hdr.Get("WWW-Authenticate"))
		}

		code, _, _ = httpDo(t, client, "DELETE", "http://"+k.addr+"/v2/kiln-demo/siderolabs/imager/manifests/"+v13, "")
		if code != 401 {
			t.Errorf("anonymous DELETE = %d, want 401", code)
		}

		// Nothing changed; reads stay anonymous, for skopeo too.
		if got := digest(demo + "imager:v1.13.0"); got != v13 {
			t.Fatalf("v1.13.0 is %s after the refused writes, was %s", got, v13)
		}

		if out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "--raw", "docker://"+demo+"imager:v1.13.0").CombinedOutput(); err != nil {
			t.Fatalf("anonymous skopeo inspect: %v\n%s", err, out)
		}

		if _, err := craneAs(t, anon, "manifest", demo+"imager:"+sigOf(v13)); err != nil {
			t.Fatal("the .sig is gone after a refused delete")
		}
	})

	t.Run("signed old release tagged over a version", func(t *testing.T) {
		if out, err := craneAs(t, admin, "tag", demo+"imager@"+v12, "v1.13.0"); err != nil {
			t.Fatalf("crane tag with the admin credential: %v\n%s", err, out)
		}

		if got := digest(demo + "imager:v1.13.0"); got != v12 {
			t.Fatalf("the admin's re-tag did not take: %s", got)
		}

		code, hdr, body := httpDo(t, client, "GET", kernelURL, "")
		if code != 200 || body != kernel {
			t.Fatalf("the kernel built before the re-tag = %d (cache %q), want it served unchanged", code, hdr.Get("X-Kiln-Cache"))
		}

		code, _, body = httpDo(t, client, "GET", base+"/image/"+emptyID+"/v1.13.0/cmdline-metal-amd64", "")
		if code != 412 || !strings.Contains(body, "kiln-demo/siderolabs/imager:v1.13.0") || !strings.Contains(body, v13) || !strings.Contains(body, v12) {
			t.Fatalf("a new asset of v1.13.0 = %d %q, want 412 naming the repository, the locked and the new digest", code, body)
		}

		t.Logf("refusal: %s", body)

		out, err := exec.Command(binary(t, "GRPCURL"), "-plaintext", "-d",
			`{"schematic_id":"`+emptyID+`","version":"v1.13.0","path":"initramfs-amd64.xz"}`, k.addr, "kiln.v1.ImageService/Build").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "FailedPrecondition") || !strings.Contains(string(out), v12) {
			t.Fatalf("gRPC Build of the re-tagged version: %v\n%s", err, out)
		}

	})

	// A restart does not undo the re-tag (the demo seeds once) and the lock
	// still holds it off.
	k.stop(t)
	k = startKiln(t, nil, "--data-dir", dir, "--demo")
	base = "http://" + k.addr
	demo = k.addr + "/kiln-demo/siderolabs/"

	if got := digest(demo + "imager:v1.13.0"); got != v12 {
		t.Fatalf("a restart undid the re-tag: v1.13.0 is %s", got)
	}

	if code, _, body := httpDo(t, client, "GET", base+"/image/"+emptyID+"/v1.13.0/cmdline-metal-amd64", ""); code != 412 {
		t.Fatalf("after a restart, a new asset of v1.13.0 = %d %q, want 412", code, body)
	}

	t.Run("listing schematics", func(t *testing.T) {
		code, hdr, body := httpDo(t, client, "GET", base+"/v1/schematics", "")
		if code != 401 || hdr.Get("WWW-Authenticate") == "" || strings.Contains(body, emptyID) {
			t.Fatalf("anonymous GET /v1/schematics = %d %s", code, body)
		}

		out, err := exec.Command(binary(t, "GRPCURL"), "-plaintext", "-d", `{}`, k.addr, "kiln.v1.SchematicService/ListSchematics").CombinedOutput()
		if err == nil || !strings.Contains(string(out), "Unauthenticated") {
			t.Fatalf("anonymous ListSchematics: %v %s", err, out)
		}

		out, err = exec.Command("curl", "-sS", "--fail-with-body", "-u", "admin:"+strings.TrimSpace(string(password)), base+"/v1/schematics").CombinedOutput()
		if err != nil || !strings.Contains(string(out), emptyID) {
			t.Fatalf("curl -u admin GET /v1/schematics: %v %s", err, out)
		}

		// Reading a schematic by its ID stays public, as on the factory.
		if code, _, _ := httpDo(t, client, "GET", base+"/schematics/"+emptyID, ""); code != 200 {
			t.Fatalf("GET /schematics/id = %d", code)
		}
	})

	k.stop(t)
}

// TestAttackMirrorNeedsCredential: kiln mirror into a kiln without its
// admin credential is refused before anything is written; with it
// (--to-password-file) the copy goes through and records the release
// lock; a re-tag behind kiln's back afterwards is caught. --auth-reads
// closes anonymous pulls too.
func TestAttackMirrorNeedsCredential(t *testing.T) {
	ctx := context.Background()
	upstream := startRegistry(t)
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	reg, _ := name.NewRegistry(upstream, name.Insecure)

	for _, v := range []string{"v1.12.0", "v1.13.0"} {
		if _, err := demo.Push(ctx, demo.Options{Version: v, Registry: reg,
			Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
				return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key)
			}}); err != nil {
			t.Fatal(err)
		}
	}

	policy := trustEverythingSignedBy(t, key)
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy, "--auth-reads")
	sel := []string{"--version", "v1.13.0", "--extensions", "siderolabs/gvisor", "--overlays", "none", "--kubernetes=false", "--trust-policy", policy}

	out, err := kilnRun(t, append([]string{"mirror", "--from", upstream, "--to", k.addr}, sel...)...)
	if err == nil || !strings.Contains(out, "401") {
		t.Fatalf("kiln mirror without the credential: %v\n%s", err, out)
	}

	out, err = kilnRun(t, append([]string{"mirror", "--from", upstream, "--to", k.addr, "--to-username", "admin", "--to-password", "guess"}, sel...)...)
	if err == nil || !strings.Contains(out, "401") {
		t.Fatalf("kiln mirror with a wrong password: %v\n%s", err, out)
	}

	out, err = kilnRun(t, append(append([]string{"mirror", "--from", upstream}, k.to()...), sel...)...)
	if err != nil || !regexp.MustCompile(`release lock of v1\.13\.0 recorded on \S+: imager sha256:[0-9a-f]{64}`).MatchString(out) {
		t.Fatalf("kiln mirror with the admin credential: %v\n%s", err, out)
	}

	// --auth-reads: anonymous pulls and catalog listing are refused, the
	// admin's are not.
	anon := t.TempDir()

	out, err = craneAs(t, anon, "digest", k.addr+"/siderolabs/imager:v1.13.0")
	refused(t, "anonymous pull with --auth-reads", out, err)

	out, err = craneAs(t, anon, "catalog", k.addr)
	refused(t, "anonymous catalog with --auth-reads", out, err)

	admin := t.TempDir()
	password, _ := os.ReadFile(k.passwordFile())

	if out, err := craneAs(t, admin, "auth", "login", k.addr, "-u", "admin", "-p", strings.TrimSpace(string(password))); err != nil {
		t.Fatalf("crane auth login: %v\n%s", err, out)
	}

	if out, err := craneAs(t, admin, "digest", k.addr+"/siderolabs/imager:v1.13.0"); err != nil {
		t.Fatalf("admin pull with --auth-reads: %v\n%s", err, out)
	}

	// v1.12.0's imager (signed, the same repository) tagged v1.13.0 upstream
	// and mirrored again by hand with crane, not kiln mirror: builds refuse.
	v12, err := craneAs(t, admin, "digest", upstream+"/siderolabs/imager:v1.12.0")
	if err != nil {
		t.Fatal(v12)
	}

	if out, err := craneAs(t, admin, "copy", upstream+"/siderolabs/imager:v1.12.0", k.addr+"/siderolabs/imager:v1.13.0"); err != nil {
		t.Fatalf("crane copy as admin: %v\n%s", err, out)
	}

	client := &http.Client{Timeout: time.Minute}
	if code, _, body := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", "{}"); code != 201 {
		t.Fatal(body)
	}

	code, _, body := httpDo(t, client, "GET", "http://"+k.addr+"/image/"+emptyID+"/v1.13.0/kernel-amd64", "")
	if code != 412 || !strings.Contains(body, strings.TrimSpace(v12)) || !strings.Contains(body, "kiln mirror (admin)") {
		t.Fatalf("kernel after a re-tag behind kiln mirror's back = %d %q, want 412", code, body)
	}

	// kiln mirror again puts back upstream's tag and records the lock of
	// what it copied: the version builds again.
	if out, err := kilnRun(t, append(append([]string{"mirror", "--from", upstream}, k.to()...), sel...)...); err != nil ||
		!strings.Contains(out, "release lock of v1.13.0 recorded") {
		t.Fatalf("kiln mirror again: %v\n%s", err, out)
	}

	if code, _, body := httpDo(t, client, "GET", "http://"+k.addr+"/image/"+emptyID+"/v1.13.0/kernel-amd64", ""); code != 200 {
		t.Fatalf("kernel after kiln mirror recorded a new lock = %d %q", code, body)
	}
}
