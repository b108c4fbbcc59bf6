package installer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/kiln-dev/kiln/builder/installer"
	"github.com/kiln-dev/kiln/release"
)

func TestTarballTag(t *testing.T) {
	for v, want := range map[string]string{
		"v1.13.0": "siderolabs/installer-base:v1.13.0",
		"v1.10.0": "siderolabs/installer-base:v1.10.0",
		"v1.9.4":  "siderolabs/installer:v1.9.4",
	} {
		tag, err := installer.TarballTag(release.MustParseVersion(v))
		if err != nil || tag.String() != want {
			t.Errorf("TarballTag(%s) = %v, %v; want %s", v, tag, err, want)
		}
	}

	if _, err := installer.TarballTag(release.Version{}); !errors.Is(err, installer.ErrInvalid) {
		t.Errorf("TarballTag(no version): %v", err)
	}
}

// TestWriteTarball: the docker-archive reads back (go-containerregistry's
// reader) as the same config and layers, under the factory's tag, and the
// same image always gives the same bytes.
func TestWriteTarball(t *testing.T) {
	dir := t.TempDir()
	idx := build(t, "v1.13.0", dir, 1, nil)

	img, err := idx.Arch("amd64")
	if err != nil {
		t.Fatal(err)
	}

	tag, err := installer.TarballTag(release.MustParseVersion("v1.13.0"))
	if err != nil {
		t.Fatal(err)
	}

	var a, b bytes.Buffer
	if err := installer.WriteTarball(context.Background(), &a, img, tag); err != nil {
		t.Fatal(err)
	}

	if err := installer.WriteTarball(context.Background(), &b, img, tag); err != nil {
		t.Fatal(err)
	}

	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("two writes of the same image differ")
	}

	path := filepath.Join(dir, "installer-amd64.tar")
	if err := os.WriteFile(path, a.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}

	back, err := tarball.ImageFromPath(path, &tag)
	if err != nil {
		t.Fatal(err)
	}

	if err := validate.Image(back); err != nil {
		t.Fatalf("validate.Image: %v", err)
	}

	wantCfg, _ := img.RawConfigFile()
	gotCfg, _ := back.RawConfigFile()

	if !bytes.Equal(gotCfg, wantCfg) {
		t.Errorf("config read back:\n%s\nwant\n%s", gotCfg, wantCfg)
	}

	wantLayers, _ := img.Layers()
	gotLayers, _ := back.Layers()

	if len(gotLayers) != len(wantLayers) {
		t.Fatalf("%d layers read back, want %d", len(gotLayers), len(wantLayers))
	}

	for i := range wantLayers {
		w, _ := wantLayers[i].Digest()
		g, _ := gotLayers[i].Digest()

		if g != w {
			t.Errorf("layer %d: %s, want %s", i, g, w)
		}
	}

	var manifest []struct{ RepoTags []string }

	tr := tar.NewReader(bytes.NewReader(a.Bytes()))

	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			t.Fatal(err)
		}

		if h.Name == "manifest.json" {
			if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
				t.Fatal(err)
			}
		}
	}

	if len(manifest) != 1 || !slices.Equal(manifest[0].RepoTags, []string{"siderolabs/installer-base:v1.13.0"}) {
		t.Errorf("manifest.json %+v, want one image tagged siderolabs/installer-base:v1.13.0", manifest)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()

	if err := installer.WriteTarball(ctx, io.Discard, img, tag); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled write: %v", err)
	}
}
