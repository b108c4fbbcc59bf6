//go:build e2e

package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
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

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// TestInstallerBefore110: a release before Talos 1.10 has no installer-base,
// only the full siderolabs/installer, and its installers carry the kernel and
// the initramfs instead of a UKI. Mirrored into the real kiln with `kiln
// mirror`, installer/<schematic>:v1.9.4 pulled with crane is an index whose
// images are the release's installer layers plus one artifacts layer holding
// exactly usr/install/<arch>/vmlinuz (the release's kernel) and
// usr/install/<arch>/initramfs.xz (the schematic's initramfs, the bytes of
// /image/<schematic>/v1.9.4/initramfs-<arch>.xz), the layer Talos's own
// filemap.Layer (hack/installer-oracle) makes of those two files.
func TestInstallerBefore110(t *testing.T) {
	crane := binary(t, "CRANE")
	ctx := context.Background()

	const version = "v1.9.4"

	upstream := startRegistry(t)
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	reg, _ := name.NewRegistry(upstream, name.Insecure)

	kernel := bytes.Repeat([]byte("MZ-legacy-kernel-"), 50_000)

	if _, err := demo.Push(ctx, demo.Options{
		Version: version, Registry: reg, KubernetesImages: []string{},
		Assets: func(arch, file string) ([]byte, error) {
			if arch == "amd64" && file == "vmlinuz" {
				return kernel, nil
			}

			return nil, os.ErrNotExist
		},
		Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
			return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key)
		},
	}); err != nil {
		t.Fatal(err)
	}

	policy := trustEverythingSignedBy(t, key)
	k := startKiln(t, nil, "--data-dir", t.TempDir(), "--trust-policy", policy)

	if out, err := kilnRun(t, "mirror", "--from", upstream, "--to", k.addr, "--to-password-file", k.passwordFile(),
		"--version", version, "--kubernetes=false", "--trust-policy", policy); err != nil {
		t.Fatalf("kiln mirror: %v\n%s", err, out)
	}

	client := &http.Client{Timeout: 5 * time.Minute}

	if code, _, body := httpDo(t, client, "POST", "http://"+k.addr+"/schematics", "{}"); code != 201 || !strings.Contains(body, emptyID) {
		t.Fatalf("POST /schematics = %d %s", code, body)
	}

	ref := k.addr + "/installer/" + emptyID + ":" + version
	digest := strings.TrimSpace(runLong(t, crane, "digest", ref))
	t.Logf("crane digest %s = %s", ref, digest)

	var index struct {
		Manifests []struct {
			Platform struct{ OS, Architecture string }
		}
	}

	if err := json.Unmarshal([]byte(run(t, crane, "manifest", ref)), &index); err != nil {
		t.Fatal(err)
	}

	if len(index.Manifests) != 2 || index.Manifests[0].Platform.Architecture != "amd64" || index.Manifests[1].Platform.Architecture != "arm64" {
		t.Fatalf("crane manifest %s = %+v, want an index over linux/amd64 and linux/arm64", ref, index)
	}

	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	base, err := name.NewTag(k.addr+"/siderolabs/installer:"+version, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	for _, arch := range []string{"amd64", "arm64"} {
		platform := remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch})

		img, err := remote.Image(tag, platform)
		if err != nil {
			t.Fatal(err)
		}

		baseImg, err := remote.Image(base, platform)
		if err != nil {
			t.Fatal(err)
		}

		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}

		baseLayers, err := baseImg.Layers()
		if err != nil {
			t.Fatal(err)
		}

		// outInstaller drops the second of a two-layer base: the base's own
		// artifacts layer, which the new one replaces.
		if len(baseLayers) == 2 {
			baseLayers = baseLayers[:1]
		}

		if len(layers) != len(baseLayers)+1 {
			t.Fatalf("linux/%s: %d layers, want the installer's %d and one artifacts layer", arch, len(layers), len(baseLayers))
		}

		for i, l := range baseLayers {
			if a, b := layerDigest(t, layers[i]), layerDigest(t, l); a != b {
				t.Errorf("linux/%s layer %d is %s, the release installer's %s", arch, i, a, b)
			}
		}

		artifacts := layers[len(layers)-1]
		files := layerFiles(t, artifacts)

		names := make([]string, 0, len(files))
		for n := range files {
			names = append(names, n)
		}

		slices.Sort(names)

		want := []string{"usr/install/" + arch + "/initramfs.xz", "usr/install/" + arch + "/vmlinuz"}
		if !slices.Equal(names, want) {
			t.Fatalf("linux/%s artifacts layer holds %v, want %v", arch, names, want)
		}

		if arch == "amd64" && !bytes.Equal(files["usr/install/amd64/vmlinuz"], kernel) {
			t.Errorf("usr/install/amd64/vmlinuz (%d bytes) is not the release's kernel (%d bytes)", len(files["usr/install/amd64/vmlinuz"]), len(kernel))
		}

		code, _, initrd := httpDo(t, client, "GET", "http://"+k.addr+"/image/"+emptyID+"/"+version+"/initramfs-"+arch+".xz", "")
		if code != 200 || initrd != string(files["usr/install/"+arch+"/initramfs.xz"]) {
			t.Errorf("usr/install/%s/initramfs.xz (%d bytes) is not /image/.../initramfs-%s.xz (%d, %d bytes)",
				arch, len(files["usr/install/"+arch+"/initramfs.xz"]), arch, code, len(initrd))
		}

		// Talos's filemap.Layer over the same two files, in outInstaller's
		// order (v1.10.0 pkg/imager/out.go, for a version without
		// UseSDBootForUEFI: the kernel, then the initramfs).
		dir := t.TempDir()
		var req []map[string]any

		for _, n := range []string{want[1], want[0]} {
			p := filepath.Join(dir, filepath.Base(n))
			if err := os.WriteFile(p, files[n], 0o644); err != nil {
				t.Fatal(err)
			}

			req = append(req, map[string]any{"ImagePath": n, "SourcePath": p})
		}

		talos := installerOracle(t, req)
		diffID, err := artifacts.DiffID()
		if err != nil {
			t.Fatal(err)
		}

		if got := layerDigest(t, artifacts); got != talos.Digest || diffID.String() != talos.DiffID {
			t.Errorf("linux/%s artifacts layer %s (diffID %s), Talos's filemap.Layer %s (diffID %s)", arch, got, diffID, talos.Digest, talos.DiffID)
		}
	}
}

func layerDigest(t *testing.T, l v1.Layer) string {
	t.Helper()

	d, err := l.Digest()
	if err != nil {
		t.Fatal(err)
	}

	return d.String()
}

// layerFiles reads the regular files of a layer.
func layerFiles(t *testing.T, l v1.Layer) map[string][]byte {
	t.Helper()

	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()

	files := map[string][]byte{}
	tr := tar.NewReader(rc)

	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
		}

		if err != nil {
			t.Fatal(err)
		}

		if h.Typeflag != tar.TypeReg {
			continue
		}

		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}

		files[strings.TrimPrefix(h.Name, "./")] = b
	}
}

// installerOracle asks hack/installer-oracle (Talos's filemap.Layer) for
// the layer of files.
func installerOracle(t *testing.T, files []map[string]any) struct{ Digest, DiffID string } {
	t.Helper()

	req, err := json.Marshal(map[string]any{"files": files})
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(testfixture.InstallerOracle(t))
	cmd.Stdin = bytes.NewReader(req)

	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("installer-oracle: %v", err)
	}

	var l struct{ Digest, DiffID string }
	if err := json.Unmarshal(out, &l); err != nil {
		t.Fatalf("installer-oracle said %q: %v", out, err)
	}

	return l
}
