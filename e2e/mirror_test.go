//go:build e2e

package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
	"github.com/kiln-dev/kiln/signing/signingtest/localsigstore"
)

// trustEverythingSignedBy writes a policy trusting key for every repository.
func trustEverythingSignedBy(t *testing.T, key *signingtest.Key) string {
	t.Helper()

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "release.pub"), key.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	policy := filepath.Join(dir, "policy.yaml")
	body := "rules:\n  - name: release-key\n    repositories: ['*', '*/*', '*/*/*', '*/*/*/*', '*/*/*/*/*']\n    keys:\n      - name: release\n        path: release.pub\n"

	if err := os.WriteFile(policy, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}

	return policy
}

func kilnRun(t *testing.T, args ...string) (string, error) {
	t.Helper()

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	cmd := exec.CommandContext(ctx, binary(t, "KILN_BIN"), args...)

	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr

	err := cmd.Run()
	if err != nil {
		return stdout.String() + stderr.String(), err
	}

	return stdout.String(), nil
}

var copiedRE = regexp.MustCompile(`(\d+) blobs copied \(([^)]*)\)`)

func TestMirror(t *testing.T) {
	ctx := context.Background()
	upstream := startRegistry(t)

	// A signed release in a real registry process, as on a connected machine.
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	reg, _ := name.NewRegistry(upstream, name.Insecure)

	rel, err := demo.Push(ctx, demo.Options{
		Version:  "v1.13.0",
		Registry: reg,
		Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
			return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key)
		},
	})
	if err != nil {
		t.Fatal(err)
	}

	policy := trustEverythingSignedBy(t, key)
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy)

	// Twice into a running kiln: the second run copies nothing.
	var copied []string

	for i := range 2 {
		out, err := kilnRun(t, "mirror", "--from", upstream, "--to", k.addr, "--to-password-file", k.passwordFile(), "--version", "v1.13.0", "--trust-policy", policy)
		if err != nil {
			t.Fatalf("kiln mirror run %d: %v\n%s", i+1, err, out)
		}

		m := copiedRE.FindStringSubmatch(out)
		if m == nil {
			t.Fatalf("kiln mirror run %d printed no summary:\n%s", i+1, out)
		}

		if !strings.Contains(out, "release lock of v1.13.0 recorded on "+k.addr+": imager "+rel.Imager.DigestStr()) {
			t.Fatalf("kiln mirror run %d recorded no release lock in kiln:\n%s", i+1, out)
		}

		copied = append(copied, m[1])
		t.Logf("run %d: %s", i+1, strings.TrimSpace(out))
	}

	if copied[0] == "0" || copied[1] != "0" {
		t.Fatalf("blobs copied per run = %v, want some then none", copied)
	}

	client := &http.Client{Timeout: 30 * time.Second}

	if code, _, body := httpDo(t, client, "GET", "http://"+k.addr+"/versions", ""); code != 200 || body != `["v1.13.0"]`+"\n" {
		t.Fatalf("kiln /versions after mirror = %d %q", code, body)
	}

	if code, _, body := httpDo(t, client, "GET", "http://"+k.addr+"/version/v1.13.0/extensions/official", ""); code != 200 || !strings.Contains(body, k.addr+"/siderolabs/gvisor:") {
		t.Fatalf("kiln extensions after mirror = %d %s", code, body)
	}

	// The real tools read what kiln mirror wrote, digests equal to the source.
	crane := binary(t, "CRANE")

	for _, d := range append([]name.Digest{rel.Imager, rel.Extensions}, rel.KubernetesImages...) {
		path := d.Context().RepositoryStr()

		if got := strings.TrimSpace(run(t, crane, "digest", k.addr+"/"+path+"@"+d.DigestStr())); got != d.DigestStr() {
			t.Errorf("crane digest of %s in kiln = %s, want %s", path, got, d.DigestStr())
		}
	}

	cosign := exec.Command(binary(t, "COSIGN"), "verify", "--key", filepath.Join(filepath.Dir(policy), "release.pub"), "--insecure-ignore-tlog", k.addr+"/siderolabs/imager:v1.13.0")
	cosign.Env = append(os.Environ(), "HOME="+t.TempDir())

	if out, err := cosign.CombinedOutput(); err != nil {
		t.Fatalf("cosign verify on kiln's copy: %v\n%s", err, out)
	}

	t.Run("archive across the air gap", func(t *testing.T) {
		archive := filepath.Join(t.TempDir(), "talos-v1.13.0.tar")

		if out, err := kilnRun(t, "mirror", "--from", upstream, "--to", archive, "--version", "v1.13.0", "--trust-policy", policy, "--dry-run"); err != nil || !strings.Contains(out, "siderolabs/imager") {
			t.Fatalf("dry run: %v\n%s", err, out)
		}

		if _, err := os.Stat(archive); !os.IsNotExist(err) {
			t.Fatalf("dry run wrote %s (%v)", archive, err)
		}

		if out, err := kilnRun(t, "mirror", "--from", upstream, "--to", archive, "--version", "v1.13.0", "--trust-policy", policy); err != nil {
			t.Fatalf("mirror to archive: %v\n%s", err, out)
		}

		inside := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy)
		if out, err := kilnRun(t, "mirror", "--from", archive, "--to", inside.addr, "--to-password-file", inside.passwordFile(), "--version", "v1.13.0", "--trust-policy", policy); err != nil {
			t.Fatalf("mirror from archive: %v\n%s", err, out)
		}

		if code, _, body := httpDo(t, client, "GET", "http://"+inside.addr+"/version/v1.13.0/overlays/official", ""); code != 200 || !strings.Contains(body, "rpi_generic") {
			t.Fatalf("kiln fed from the archive: overlays = %d %s", code, body)
		}
	})

	t.Run("kiln reads an external registry", func(t *testing.T) {
		ext := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy, "--registry", upstream)

		if code, _, body := httpDo(t, client, "GET", "http://"+ext.addr+"/version/v1.13.0/extensions/official", ""); code != 200 || !strings.Contains(body, upstream+"/siderolabs/gvisor:") {
			t.Fatalf("extensions from an external registry = %d %s", code, body)
		}

		code, _, id := httpDo(t, client, "POST", "http://"+ext.addr+"/schematics", "{}")
		if code != 201 {
			t.Fatal(id)
		}

		if code, _, body := httpDo(t, client, "GET", "http://"+ext.addr+"/image/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba/v1.13.0/kernel-amd64", ""); code != 200 || len(body) == 0 {
			t.Fatalf("kernel from an external registry = %d", code)
		}
	})

	t.Run("kiln reads an OCI layout", func(t *testing.T) {
		layoutDir := filepath.Join(t.TempDir(), "layout")

		if out, err := kilnRun(t, "mirror", "--from", upstream, "--to", "oci:"+layoutDir, "--version", "v1.13.0", "--trust-policy", policy); err != nil {
			t.Fatalf("mirror to a layout: %v\n%s", err, out)
		}

		data := t.TempDir()

		for round := range 2 {
			lk := startKiln(t, nil, "--data-dir", data, "--trust-policy", policy, "--oci-layout", layoutDir)

			if code, _, body := httpDo(t, client, "GET", "http://"+lk.addr+"/version/v1.13.0/overlays/official", ""); code != 200 || !strings.Contains(body, "rpi_generic") {
				t.Fatalf("round %d: overlays from a layout = %d %s", round, code, body)
			}

			// The import recorded the release lock of what it imported.
			if code, _, body := httpDo(t, client, "GET", "http://"+lk.addr+"/v1/versions/v1.13.0/lock", ""); code != 200 ||
				!strings.Contains(body, `"recordedBy":"kiln serve --oci-layout `+layoutDir+`"`) || !strings.Contains(body, rel.Imager.DigestStr()) {
				t.Fatalf("round %d: release lock after the import = %d %s", round, code, body)
			}

			lk.stop(t)

			// Restarting imports nothing new.
			if round == 1 && !strings.Contains(lk.logs.String(), " 0 blobs copied") {
				t.Errorf("second start copied blobs again:\n%s", lk.logs.String())
			}
		}
	})

	t.Run("one architecture", func(t *testing.T) {
		amd64 := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy)

		out, err := kilnRun(t, "mirror", "--from", upstream, "--to", amd64.addr, "--to-password-file", amd64.passwordFile(), "--version", "v1.13.0", "--arch", "amd64", "--trust-policy", policy)
		if err != nil {
			t.Fatalf("mirror --arch amd64: %v\n%s", err, out)
		}

		run(t, crane, "manifest", "--platform", "linux/amd64", amd64.addr+"/siderolabs/imager:v1.13.0")

		if _, err := exec.Command(crane, "manifest", "--platform", "linux/arm64", amd64.addr+"/siderolabs/imager:v1.13.0").CombinedOutput(); err == nil {
			t.Error("arm64 child was copied although only amd64 was selected")
		}
	})

	t.Run("image cache from the mirror", func(t *testing.T) {
		out := filepath.Join(t.TempDir(), "cache")

		res, err := kilnRun(t, "cache", "create", "--mirror", k.addr, "--kubernetes", "v1.13.0", "--layout", "flat",
			"--platform", "linux/amd64", "--output", out, "--trust-policy", policy)
		if err != nil || !strings.Contains(res, "image cache ") {
			t.Fatalf("kiln cache create: %v\n%s", err, res)
		}

		for _, f := range []string{"manifests/registry.k8s.io/kube-apiserver/reference/v1.36.0", "manifests/ghcr.io/siderolabs/kubelet/reference/v1.36.0"} {
			if _, err := os.Stat(filepath.Join(out, f)); err != nil {
				t.Errorf("cache tree lacks %s: %v", f, err)
			}
		}

		// Served by the rules a node's registryd uses, crane pulls every
		// image back with the digest it has in the source registry.
		srv := httptest.NewServer(imagecache.Handler(out))
		defer srv.Close()

		host := strings.TrimPrefix(srv.URL, "http://")

		for _, d := range rel.KubernetesImages {
			path := d.Context().RepositoryStr()
			if got := strings.TrimSpace(run(t, crane, "digest", host+"/"+path+"@"+d.DigestStr())); got != d.DigestStr() {
				t.Errorf("crane digest of %s from the cache = %s, want %s", path, got, d.DigestStr())
			}
		}

		// A missing image fails before anything is written, naming it.
		missing := filepath.Join(t.TempDir(), "missing")
		images := filepath.Join(t.TempDir(), "images.txt")

		if err := os.WriteFile(images, []byte("registry.k8s.io/no-such-image:v1\n"), 0o644); err != nil {
			t.Fatal(err)
		}

		res, err = kilnRun(t, "cache", "create", "--mirror", k.addr, "--images", images, "--output", missing, "--trust-policy", policy)
		if err == nil || !strings.Contains(res, "registry.k8s.io/no-such-image:v1") {
			t.Fatalf("cache of a missing image: %v\n%s", err, res)
		}

		if _, err := os.Stat(missing); !os.IsNotExist(err) {
			t.Errorf("a failed cache create left %s behind (%v)", missing, err)
		}
	})

	t.Run("unsigned image refused", func(t *testing.T) {
		img, _ := random.Image(1024, 1)
		ref, _ := name.NewTag(upstream+"/docker.io/acme/unsigned:1.0", name.Insecure) // the mirror path of docker.io/acme/unsigned

		if err := remote.Write(ref, img); err != nil {
			t.Fatal(err)
		}

		images := filepath.Join(t.TempDir(), "images.txt")
		if err := os.WriteFile(images, []byte("docker.io/acme/unsigned:1.0\n"), 0o644); err != nil {
			t.Fatal(err)
		}

		out, err := kilnRun(t, "mirror", "--from", upstream, "--to", k.addr, "--to-password-file", k.passwordFile(), "--images", images, "--trust-policy", policy)
		if err == nil || !strings.Contains(out, "untrusted artifact") || !strings.Contains(out, "no signatures found") {
			t.Fatalf("mirror of an unsigned image: %v\n%s", err, out)
		}

		if _, err := exec.Command(crane, "digest", k.addr+"/docker.io/acme/unsigned:1.0").CombinedOutput(); err == nil {
			t.Fatal("the refused image was written to kiln")
		}
	})
}

// TestMirrorKeylessAcrossTheAirGap: a release signed like Sidero's (keyless;
// a legacy .sig and a bundle referrer, the imager only a Rekor v2 + RFC 3161
// bundle) by a local Sigstore whose trusted root a local TUF repository
// publishes. On the connected side kiln mirror fetches the trusted root
// through TUF and carries it in the archive; on the far side, in a network
// namespace with nothing but loopback, kiln mirror loads the archive into a
// running kiln and kiln serve verifies with the root that came with it,
// checked against the TUF root named by the policy.
func TestMirrorKeylessAcrossTheAirGap(t *testing.T) {
	ctx := context.Background()
	upstream := startRegistry(t)
	reg, _ := name.NewRegistry(upstream, name.Insecure)

	ss, err := localsigstore.New()
	if err != nil {
		t.Fatal(err)
	}

	trJSON, err := ss.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}

	tuf := localsigstore.NewTUFRepository(t, map[string][]byte{signing.TrustedRootTarget: trJSON})
	id := localsigstore.Identity{Subject: "releasemgr-svc@talos-production.iam.gserviceaccount.com", Issuer: "https://accounts.google.com"}

	if _, err := demo.Push(ctx, demo.Options{Version: "v1.13.0", Registry: reg, Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
		// kiln accepts a release image's bundle only if its statement names
		// the image (cosign's name none; see signing.WithSignedIdentity).
		if strings.HasSuffix(ref.Context().RepositoryStr(), "siderolabs/imager") {
			return ss.SignBundle(ctx, ref, localsigstore.Options{Identity: id, Log: localsigstore.RekorV2, TSA: true, As: upstream.Name()})
		}

		return ss.SignLikeSideroAs(ctx, ref, upstream.Name(), id)
	}}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tuf-root.json"), tuf.Root1(), 0o644); err != nil {
		t.Fatal(err)
	}

	policy := filepath.Join(dir, "policy.yaml")
	body := "tufRoot: tuf-root.json\nrules:\n  - name: sidero-keyless\n    repositories: ['*', '*/*', '*/*/*', '*/*/*/*', '*/*/*/*/*']\n" +
		"    keyless:\n      trustedRoot: mirror\n      identities:\n        - subject: " + id.Subject + "\n          issuer: " + id.Issuer + "\n"

	if err := os.WriteFile(policy, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}

	// Connected side.
	archive := filepath.Join(t.TempDir(), "talos-v1.13.0.tar")

	cmd := exec.Command(binary(t, "KILN_BIN"), "mirror", "--from", upstream, "--to", archive, "--version", "v1.13.0",
		"--trust-policy", policy, "--trusted-root", "tuf", "--tuf-url", tuf.URL)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())

	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kiln mirror on the connected side: %v\n%s", err, out)
	}

	sum := sha256.Sum256(trJSON)
	if !strings.Contains(string(out), "Sigstore trusted root: trusted_root.json sha256:"+hex.EncodeToString(sum[:])+" from TUF repository "+tuf.URL) {
		t.Fatalf("kiln mirror did not report the trusted root it fetched:\n%s", out)
	}

	if tuf.Requests() == 0 {
		t.Fatal("the TUF repository was not asked")
	}

	index, err := exec.Command("tar", "-xOf", archive, "index.json").Output()
	if err != nil || !strings.Contains(string(index), "kiln/sigstore-trusted-root:latest") {
		t.Fatalf("the archive's index.json does not list the trusted root: %v\n%s", err, index)
	}

	// Far side: no network at all.
	script := `set -e
ip link set lo up 2>/dev/null || true
"$KILN" serve --listen 127.0.0.1:18998 --data-dir "$DATA" --trust-policy "$POLICY" --log-format json 2>"$DATA/kiln.log" &
for i in $(seq 1 120); do curl -sf http://127.0.0.1:18998/readyz >/dev/null && break; sleep 0.25; done
"$KILN" mirror --from "$ARCHIVE" --to 127.0.0.1:18998 --to-password-file "$DATA/auth/admin-password" --version v1.13.0 --trust-policy "$POLICY"
echo "== extensions"
curl -sSf http://127.0.0.1:18998/version/v1.13.0/extensions/official
echo
curl -sSf -X POST --data-binary '{}' http://127.0.0.1:18998/schematics >/dev/null
echo "== kernel $(curl -sSf http://127.0.0.1:18998/image/` + emptyID + `/v1.13.0/kernel-amd64 | wc -c)"
kill %1; wait %1 || true
echo "== log"
grep -E '"(signature verified|using the trusted root that came with the mirror)"' "$DATA/kiln.log"
`
	far := exec.Command("unshare", "--net", "--", "bash", "-c", script)
	far.Env = append(os.Environ(), "KILN="+binary(t, "KILN_BIN"), "DATA="+t.TempDir(), "POLICY="+policy, "ARCHIVE="+archive, "HOME="+t.TempDir())

	out, err = far.CombinedOutput()
	if err != nil {
		t.Fatalf("far side in an empty network namespace: %v\n%s", err, out)
	}

	t.Logf("far side:\n%s", out)

	for _, want := range []string{
		"Sigstore trusted root: trusted_root.json sha256:" + hex.EncodeToString(sum[:]), // kiln mirror read it from the archive
		"siderolabs/gvisor:",
		`"msg":"using the trusted root that came with the mirror"`,
		`"evidence":"Rekor v2 hashedrekord/0.0.2 entry (inclusion proof), RFC 3161 timestamp"`, // the imager
		`"evidence":"Rekor v1 signed entry timestamp"`,                                         // the others' legacy .sig
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("far side output lacks %q", want)
		}
	}

	if m := regexp.MustCompile(`== kernel (\d+)`).FindStringSubmatch(string(out)); m == nil || m[1] == "0" {
		t.Errorf("no kernel served on the far side")
	}
}
