//go:build e2e

package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestInstallerPull: crane pulls metal-installer/<id>:v1.13.0 from a demo
// kiln, which builds it on that first pull: an index over amd64 and arm64,
// each image the demo installer-base's layers and an artifacts layer with
// usr/install/<arch>/, the base's config with the platform. A second pull,
// and the same pull from a second kiln, give the same digest; the real
// cosign CLI verifies it offline with the key kiln serves, and refuses
// another kiln's key and an image an admin pushed under the same tag (which
// kiln then replaces with its own on the next pull).
func TestInstallerPull(t *testing.T) {
	crane := binary(t, "CRANE")
	// The schematic's extension names the factory (as Talos expects):
	// kilns that agree on the URL nodes reach them by build the same bytes.
	const url = "http://kiln.example:8080"

	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo", "--external-url", url)
	client := &http.Client{Timeout: 5 * time.Minute}

	if code, _, body := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", "{}"); code != 201 || !strings.Contains(body, emptyID) {
		t.Fatalf("POST /schematics = %d %s", code, body)
	}

	ref := k.addr + "/metal-installer/" + emptyID + ":v1.13.0"
	base := k.addr + "/kiln-demo/siderolabs/installer-base:v1.13.0"

	var index struct {
		MediaType string
		Manifests []struct {
			Digest   string
			Platform struct{ OS, Architecture string }
		}
	}

	if err := json.Unmarshal([]byte(runLong(t, crane, "manifest", ref)), &index); err != nil {
		t.Fatal(err)
	}

	if index.MediaType != "application/vnd.oci.image.index.v1+json" || len(index.Manifests) != 2 ||
		index.Manifests[0].Platform.Architecture != "amd64" || index.Manifests[1].Platform.Architecture != "arm64" {
		t.Fatalf("crane manifest %s = %+v, want an OCI index over linux/amd64 and linux/arm64", ref, index)
	}

	digest := strings.TrimSpace(run(t, crane, "digest", ref))
	t.Logf("crane digest %s = %s", ref, digest)

	for _, arch := range []string{"amd64", "arm64"} {
		platform := "linux/" + arch
		checkInstallerLayers(t, crane, ref, base, platform)

		var cfg, baseCfg struct {
			Architecture, OS string
			Config           struct{ Entrypoint, Env []string }
		}

		if err := json.Unmarshal([]byte(run(t, crane, "config", "--platform", platform, ref)), &cfg); err != nil {
			t.Fatal(err)
		}

		if err := json.Unmarshal([]byte(run(t, crane, "config", "--platform", platform, base)), &baseCfg); err != nil {
			t.Fatal(err)
		}

		if cfg.OS != "linux" || cfg.Architecture != arch || len(cfg.Config.Entrypoint) == 0 ||
			!slices.Equal(cfg.Config.Entrypoint, baseCfg.Config.Entrypoint) || !slices.Equal(cfg.Config.Env, baseCfg.Config.Env) {
			t.Errorf("%s config %+v, want the base's entrypoint and env %+v", platform, cfg, baseCfg)
		}

		files := run(t, crane, "export", "--platform", platform, ref, "-")
		for _, f := range []string{"usr/install/" + arch + "/systemd-boot.efi", "usr/install/" + arch + "/vmlinuz.efi"} {
			if !strings.Contains(files, f) {
				t.Errorf("crane export %s (%s) lacks %s", ref, platform, f)
			}
		}
	}

	// A full pull, as a node's would, and again: the same digest.
	runLong(t, crane, "pull", "--format", "oci", ref, filepath.Join(t.TempDir(), "layout"))

	if again := strings.TrimSpace(run(t, crane, "digest", ref)); again != digest {
		t.Errorf("second pull: %s, first %s", again, digest)
	}

	// skopeo (containers/image, as podman and CRI-O pull): the whole
	// index, and the raw index hashes to the same digest.
	if _, err := exec.LookPath("skopeo"); err == nil {
		runLong(t, "skopeo", "--insecure-policy", "copy", "--all", "--src-tls-verify=false", "docker://"+ref, "oci:"+filepath.Join(t.TempDir(), "skopeo"))

		raw := run(t, "skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+ref)
		if sum := sha256.Sum256([]byte(raw)); "sha256:"+hex.EncodeToString(sum[:]) != digest {
			t.Errorf("skopeo inspect --raw %s hashes to sha256:%x, crane says %s", ref, sum, digest)
		}
	} else if os.Getenv("KILN_REQUIRE_FIXTURES") != "" {
		t.Error("skopeo is not installed (make e2e-tools)")
	}

	// Reproducible: another kiln, its own data directory, key and port,
	// builds the same bytes.
	k2 := startKiln(t, nil, "--data-dir", t.TempDir(), "--demo", "--external-url", url)
	if code, _, body := httpDo(t, client, "POST", "http://"+k2.addr+"/schematics", "{}"); code != 201 {
		t.Fatalf("POST /schematics on the second kiln = %d %s", code, body)
	}

	ref2 := k2.addr + "/metal-installer/" + emptyID + ":v1.13.0"
	if d2 := strings.TrimSpace(runLong(t, crane, "digest", ref2)); d2 != digest {
		t.Errorf("the second kiln built %s, the first %s", d2, digest)
	}

	key := servedKey(t, client, k)
	if out, err := cosignVerify(t, key, ref); err != nil || !strings.Contains(out, "The signatures were verified against the specified public key") {
		t.Fatalf("cosign verify %s with kiln's served key: %v\n%s", ref, err, out)
	}

	if out, err := cosignVerify(t, servedKey(t, client, k2), ref); err == nil {
		t.Errorf("cosign verify with another kiln's key passed:\n%s", out)
	}

	// An admin pushes another image under the tag: its digest was never
	// signed, and cosign says so.
	docker := t.TempDir()
	password, err := os.ReadFile(k.passwordFile())
	if err != nil {
		t.Fatal(err)
	}

	login := exec.Command(crane, "auth", "login", k.addr, "-u", "admin", "--password-stdin")
	login.Env = append(os.Environ(), "DOCKER_CONFIG="+docker)
	login.Stdin = strings.NewReader(strings.TrimSpace(string(password)))

	if out, err := login.CombinedOutput(); err != nil {
		t.Fatalf("crane auth login: %v\n%s", err, out)
	}

	cp := exec.Command(crane, "copy", base, ref)
	cp.Env = append(os.Environ(), "DOCKER_CONFIG="+docker)

	if out, err := cp.CombinedOutput(); err != nil {
		t.Fatalf("crane copy %s %s: %v\n%s", base, ref, err, out)
	}

	// The pushed image is in the repository, unsigned: cosign refuses it.
	// The tag is kiln's again on the next pull, which finds no signature of
	// kiln's over what it names and builds the installer again.
	repo, _, _ := strings.Cut(ref, ":v")
	pushed := repo + "@" + strings.TrimSpace(run(t, crane, "digest", base))

	if out, err := cosignVerify(t, key, pushed); err == nil || !strings.Contains(out, "no signatures found") {
		t.Errorf("cosign verify of the image pushed over the installer: %v\n%s", err, out)
	}

	if again := strings.TrimSpace(run(t, crane, "digest", ref)); again != digest {
		t.Errorf("after an admin pushed over the tag, a pull gets %s, want kiln's %s", again, digest)
	}

	if out, err := cosignVerify(t, key, ref); err != nil {
		t.Errorf("cosign verify %s after the tag was restored: %v\n%s", ref, err, out)
	}

	// Anonymous clients write nothing there.
	if out, err := exec.Command(crane, "tag", ref2, "mine").CombinedOutput(); err == nil {
		t.Errorf("an anonymous crane tag on the installer repository passed:\n%s", out)
	}
}

// checkInstallerLayers: the platform image of ref is the base's layers,
// then one more.
func checkInstallerLayers(t *testing.T, crane, ref, base, platform string) {
	t.Helper()

	var m, bm struct {
		Layers []struct{ Digest, MediaType string }
	}

	if err := json.Unmarshal([]byte(run(t, crane, "manifest", "--platform", platform, ref)), &m); err != nil {
		t.Fatal(err)
	}

	if err := json.Unmarshal([]byte(run(t, crane, "manifest", "--platform", platform, base)), &bm); err != nil {
		t.Fatal(err)
	}

	if len(m.Layers) != len(bm.Layers)+1 {
		t.Fatalf("%s: %d layers, want the base's %d and the artifacts layer", platform, len(m.Layers), len(bm.Layers))
	}

	for i, l := range bm.Layers {
		if m.Layers[i].Digest != l.Digest {
			t.Errorf("%s layer %d is %s, want the base's %s", platform, i, m.Layers[i].Digest, l.Digest)
		}
	}

	if mt := m.Layers[len(m.Layers)-1].MediaType; mt != "application/vnd.oci.image.layer.v1.tar+gzip" {
		t.Errorf("%s artifacts layer media type %s", platform, mt)
	}
}

// servedKey saves kiln's /oci/cosign/signing-key.pub to a file.
func servedKey(t *testing.T, client *http.Client, k *kiln) string {
	t.Helper()

	code, hdr, body := httpDo(t, client, "GET", "http://"+k.addr+"/oci/cosign/signing-key.pub", "")
	if code != 200 || hdr.Get("Content-Type") != "application/x-pem-file" || !strings.HasPrefix(body, "-----BEGIN PUBLIC KEY-----") {
		t.Fatalf("GET /oci/cosign/signing-key.pub = %d %q %q", code, hdr.Get("Content-Type"), body)
	}

	path := filepath.Join(t.TempDir(), "kiln.pub")
	if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}

	return path
}

// cosignVerify runs `cosign verify` offline as the public factory tells its
// users to.
func cosignVerify(t *testing.T, key, ref string) (string, error) {
	t.Helper()

	cmd := exec.Command(binary(t, "COSIGN"), "verify", "--offline", "--key", key, "--insecure-ignore-tlog", ref)
	cmd.Env = append(os.Environ(), "HOME="+t.TempDir())
	out, err := cmd.CombinedOutput()

	return string(out), err
}

// runLong is run for a command that may wait for a build.
func runLong(t *testing.T, name string, args ...string) string {
	t.Helper()

	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}

	return string(out)
}
