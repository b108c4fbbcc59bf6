//go:build e2e

package installer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/builder/installer"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

const schematicID = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"

// peer runs a peer CLI with an empty HOME and returns its output.
func peer(t *testing.T, home string, bin string, args ...string) (string, error) {
	t.Helper()

	cmd := exec.Command(bin, args...)
	cmd.Dir = home
	cmd.Env = []string{"HOME=" + home, "TUF_ROOT=" + filepath.Join(home, "tuf"), "PATH=/usr/bin:/bin", "TMPDIR=" + home}

	out, err := cmd.CombinedOutput()
	t.Logf("%s %s: %v\n%s", filepath.Base(bin), strings.Join(args, " "), err, tail(string(out), 2000))

	return string(out), err
}

// buildFrom builds the two-arch installer of the release at host from
// fresh copies of the same assets, into its own store, as a kiln would.
func buildFrom(t *testing.T, rel *demo.Release, created time.Time) *installer.Index {
	t.Helper()

	dir := t.TempDir()

	var platforms []installer.Platform

	for _, arch := range []string{"amd64", "arm64"} {
		base, err := remote.Image(rel.InstallerBase, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}))
		if err != nil {
			t.Fatal(err)
		}

		platforms = append(platforms, installer.Platform{Arch: arch, Base: base, Assets: assetFiles(t, dir, arch)})
	}

	idx, err := installer.Build(context.Background(), installer.Options{Version: release.MustParseVersion(rel.Version), Created: created, Dir: dir}, platforms...)
	if err != nil {
		t.Fatal(err)
	}

	return idx
}

// TestInstallerPeers: the installer index kiln builds and signs, pushed to
// Debian's registry, is read by crane and skopeo, its docker-archive by
// both, and its signature verified by cosign and kiln, and refused once a
// byte of the image changed.
func TestInstallerPeers(t *testing.T) {
	crane, cosign := testfixture.Crane(t), testfixture.Cosign(t)
	testfixture.RequireTool(t, "skopeo")

	ctx := context.Background()
	home := t.TempDir()
	host := testfixture.StartRegistry(t, testfixture.DockerRegistry(t))

	reg, err := name.NewRegistry(host)
	if err != nil {
		t.Fatal(err)
	}

	rel, err := demo.Push(ctx, demo.Options{Version: "v1.13.0", Registry: reg})
	if err != nil {
		t.Fatal(err)
	}

	idx := buildFrom(t, rel, epoch)

	digest, err := idx.Digest()
	if err != nil {
		t.Fatal(err)
	}

	repo, err := name.NewRepository(host + "/metal-installer/" + schematicID)
	if err != nil {
		t.Fatal(err)
	}

	tag := repo.Tag("v1.13.0")
	ref := tag.String()

	if err := remote.WriteIndex(tag, idx); err != nil {
		t.Fatal(err)
	}

	signer, _, err := signing.LoadOrCreateSigner(filepath.Join(home, "data", signing.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	if err := signer.Sign(ctx, repo.Digest(digest.String())); err != nil {
		t.Fatal(err)
	}

	pub := filepath.Join(home, "signing-key.pub")
	if err := os.WriteFile(pub, signer.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	raw, _ := idx.RawManifest()

	t.Run("second kiln", func(t *testing.T) {
		again := buildFrom(t, rel, epoch)
		if d, _ := again.Digest(); d != digest {
			t.Errorf("a second build gives %s, want %s", d, digest)
		}
	})

	t.Run("crane", func(t *testing.T) {
		if out, err := peer(t, home, crane, "digest", ref); err != nil || strings.TrimSpace(out) != digest.String() {
			t.Errorf("crane digest = %q, want %s", out, digest)
		}

		if out, err := peer(t, home, crane, "manifest", ref); err != nil || out != string(raw) {
			t.Errorf("crane manifest differs from the index:\n%s", out)
		}

		if _, err := peer(t, home, crane, "validate", "--remote", ref); err != nil {
			t.Errorf("crane validate: %v", err)
		}

		for _, arch := range []string{"amd64", "arm64"} {
			img, _ := idx.Arch(arch)
			cfg, _ := img.RawConfigFile()

			if out, err := peer(t, home, crane, "config", "--platform", "linux/"+arch, ref); err != nil || out != string(cfg) {
				t.Errorf("crane config linux/%s differs:\n%s", arch, out)
			}
		}

		// The file system a container runtime sees.
		out := filepath.Join(home, "fs.tar")
		if _, err := peer(t, home, crane, "export", "--platform", "linux/amd64", ref, out); err != nil {
			t.Fatal(err)
		}

		files := tarFiles(t, out)

		for _, p := range []string{"usr/bin/installer", "usr/install/amd64/systemd-boot.efi", "usr/install/amd64/vmlinuz.efi"} {
			if _, ok := files[p]; !ok {
				t.Errorf("crane export lacks %s: %v", p, sortedKeys(files))
			}
		}

		if !strings.HasPrefix(files["usr/install/amd64/vmlinuz.efi"], "MZ uki amd64") {
			t.Errorf("vmlinuz.efi is not the UKI given")
		}
	})

	t.Run("skopeo", func(t *testing.T) {
		if out, err := peer(t, home, "skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+ref); err != nil || out != string(raw) {
			t.Errorf("skopeo inspect --raw differs:\n%s", out)
		}

		// skopeo checks every digest as it copies; --preserve-digests
		// refuses to copy if anything would change.
		layout := filepath.Join(home, "layout")
		if _, err := peer(t, home, "skopeo", "copy", "--all", "--preserve-digests", "--src-tls-verify=false",
			"docker://"+ref, "oci:"+layout+":v1.13.0"); err != nil {
			t.Fatal(err)
		}

		b, err := os.ReadFile(filepath.Join(layout, "index.json"))
		if err != nil || !bytes.Contains(b, []byte(digest.String())) {
			t.Errorf("the OCI layout's index.json does not name %s: %s", digest, b)
		}

		if out, err := peer(t, home, "skopeo", "inspect", "--override-arch", "arm64", "oci:"+layout+":v1.13.0"); err != nil ||
			!strings.Contains(out, `"Architecture": "arm64"`) {
			t.Errorf("skopeo inspect of the layout: %v", err)
		}
	})

	t.Run("docker-archive", func(t *testing.T) {
		img, _ := idx.Arch("amd64")
		cfgDigest, _ := img.ConfigName()

		ttag, err := installer.TarballTag(release.MustParseVersion("v1.13.0"))
		if err != nil {
			t.Fatal(err)
		}

		path := filepath.Join(home, "metal-installer-amd64.tar")

		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}

		if err := installer.WriteTarball(ctx, f, img, ttag); err != nil {
			t.Fatal(err)
		}

		f.Close()

		out, err := peer(t, home, "skopeo", "inspect", "docker-archive:"+path)
		if err != nil {
			t.Fatal(err)
		}

		var info struct {
			Architecture string
			Layers       []string
			Env          []string
		}

		if err := json.Unmarshal([]byte(out), &info); err != nil {
			t.Fatal(err)
		}

		// A docker-archive names its layers by diff ID.
		cf, _ := img.ConfigFile()

		var diffs []string
		for _, d := range cf.RootFS.DiffIDs {
			diffs = append(diffs, d.String())
		}

		if info.Architecture != "amd64" || !slices.Equal(info.Layers, diffs) || !slices.Equal(info.Env, cf.Config.Env) {
			t.Errorf("skopeo reads the archive as %+v, want layers %v", info, diffs)
		}

		if _, err := peer(t, home, "skopeo", "copy", "docker-archive:"+path, "oci:"+filepath.Join(home, "from-archive")+":x"); err != nil {
			t.Errorf("skopeo copy from the archive: %v", err)
		}

		if _, err := peer(t, home, crane, "validate", "--tarball", path); err != nil {
			t.Errorf("crane validate --tarball: %v", err)
		}

		pushed := host + "/from-tarball/installer:v1.13.0"
		if _, err := peer(t, home, crane, "push", path, pushed); err != nil {
			t.Fatal(err)
		}

		if out, err := peer(t, home, crane, "config", pushed); err != nil || digestOfString(out) != cfgDigest.String() {
			t.Errorf("crane push of the archive changed the config")
		}
	})

	t.Run("cosign", func(t *testing.T) {
		// Both signatures are attached, so cosign v2 takes the bundle and
		// wants a trusted root; an empty one does for a key.
		if _, err := peer(t, home, cosign, "trusted-root", "create", "--out", "none.json"); err != nil {
			t.Fatal(err)
		}

		verify := []string{"verify", "--offline", "--key", pub, "--insecure-ignore-tlog", "--insecure-ignore-sct", "--trusted-root", "none.json"}

		if _, err := peer(t, home, cosign, append(verify, ref)...); err != nil {
			t.Errorf("cosign verify by tag: %v", err)
		}

		if _, err := peer(t, home, cosign, append(verify, repo.Digest(digest.String()).String())...); err != nil {
			t.Errorf("cosign verify by digest: %v", err)
		}

		if out, err := peer(t, home, cosign, "verify", "--offline", "--key", pub, "--insecure-ignore-tlog", ref); err == nil ||
			!strings.Contains(out, "trusted root is required") {
			t.Errorf("cosign v2 without a trusted root: %v (the README's advice is stale)", err)
		}

		p, err := signer.Policy("metal-installer/*")
		if err != nil {
			t.Fatal(err)
		}

		v, err := signing.NewVerifier(p)
		if err != nil {
			t.Fatal(err)
		}

		if got, err := v.Verify(ctx, repo.Digest(digest.String())); err != nil {
			t.Errorf("kiln refused its installer: %v", err)
		} else {
			t.Logf("kiln: %s, %s", got.Method(), got.Evidence())
		}

		// One byte of the image changed: the arm64 config's created time.
		changed := buildFrom(t, rel, epoch.Add(time.Second))

		d2, _ := changed.Digest()
		if d2 == digest {
			t.Fatal("a changed config did not change the index digest")
		}

		if err := remote.WriteIndex(tag, changed); err != nil {
			t.Fatal(err)
		}

		if _, err := peer(t, home, cosign, append(verify, ref)...); err == nil {
			t.Error("cosign verified the changed image by the old tag")
		}

		if _, err := v.Verify(ctx, repo.Digest(d2.String())); !errors.Is(err, signing.ErrUntrusted) {
			t.Errorf("kiln accepted the changed image: %v", err)
		}

		// The old signature copied onto the changed image claims the old
		// digest.
		oldSig := repo.Tag("sha256-" + digest.Hex + ".sig").String()
		newSig := repo.Tag("sha256-" + d2.Hex + ".sig").String()

		if _, err := peer(t, home, crane, "copy", oldSig, newSig); err != nil {
			t.Fatal(err)
		}

		if _, err := peer(t, home, cosign, append(verify, ref)...); err == nil {
			t.Error("cosign verified the changed image with the old image's signature")
		}

		fresh, err := signing.NewVerifier(p)
		if err != nil {
			t.Fatal(err)
		}

		if _, err := fresh.Verify(ctx, repo.Digest(d2.String())); !errors.Is(err, signing.ErrUntrusted) {
			t.Errorf("kiln accepted the changed image with the old signature: %v", err)
		}
	})

	t.Run("cosign legacy only", func(t *testing.T) {
		// What the public factory writes (a .sig alone) verifies with the
		// factory's documented command and no trusted root.
		other, _ := name.NewRepository(host + "/installer/" + schematicID)
		if err := remote.WriteIndex(other.Tag("v1.13.0"), idx); err != nil {
			t.Fatal(err)
		}

		if err := signer.SignLegacy(ctx, other.Digest(digest.String())); err != nil {
			t.Fatal(err)
		}

		if _, err := peer(t, home, cosign, "verify", "--offline", "--insecure-ignore-tlog", "--insecure-ignore-sct", "--key", pub,
			other.Tag("v1.13.0").String()); err != nil {
			t.Errorf("cosign verify of the .sig alone: %v", err)
		}
	})
}

// tarFiles reads a tar file's regular files.
func tarFiles(t *testing.T, path string) map[string]string {
	t.Helper()

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	files := map[string]string{}
	tr := tar.NewReader(f)

	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}

		if err != nil {
			t.Fatal(err)
		}

		if h.Typeflag == tar.TypeReg {
			b, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}

			files[strings.TrimPrefix(h.Name, "/")] = string(b)
		}
	}
}

func digestOfString(s string) string {
	sum := sha256.Sum256([]byte(s))

	return "sha256:" + hex.EncodeToString(sum[:])
}
