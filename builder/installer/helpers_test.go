package installer_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/builder/installer"
)

// epoch is builder.SourceDateEpoch, the build epoch kiln passes.
var epoch = time.Unix(1559424892, 0)

// entry is one tar entry of a test layer.
type entry struct {
	name     string
	mode     int64
	typeflag byte
	data     string
	link     string
}

// tarBytes writes entries in the order given.
func tarBytes(t testing.TB, entries []entry) []byte {
	t.Helper()

	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: e.mode, Typeflag: e.typeflag, Linkname: e.link, ModTime: time.Unix(1700000000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}

		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}

		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}

		if _, err := io.WriteString(tw, e.data); err != nil {
			t.Fatal(err)
		}
	}

	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}

	return buf.Bytes()
}

func layerOf(t testing.TB, entries []entry) v1.Layer {
	t.Helper()

	data := tarBytes(t, entries)

	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}

	return l
}

// baseConfig is what installer-base's Dockerfile sets (talos Dockerfile,
// stage installer-base).
func baseConfig(version string) v1.Config {
	return v1.Config{
		Entrypoint: []string{"/bin/installer"},
		Env:        []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "VERSION=" + version},
		Labels:     map[string]string{"alpha.talos.dev/version": version, "org.opencontainers.image.source": "https://github.com/siderolabs/talos"},
	}
}

// baseImage is a linux/<arch> base installer of n layers: the first holds
// usr/bin/installer and the bin symlink, the others one file each.
func baseImage(t testing.TB, version, arch string, n int) v1.Image {
	t.Helper()

	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)

	for i := range n {
		entries := []entry{{name: "usr/share/layer-" + string(rune('a'+i)), mode: 0o644, data: arch}}
		if i == 0 {
			entries = []entry{
				{name: "bin", typeflag: tar.TypeSymlink, link: "usr/bin", mode: 0o777},
				{name: "usr/", typeflag: tar.TypeDir, mode: 0o755},
				{name: "usr/bin/", typeflag: tar.TypeDir, mode: 0o755},
				{name: "usr/bin/installer", mode: 0o755, data: "installer " + version + " " + arch},
			}
		}

		var err error

		img, err = mutate.Append(img, mutate.Addendum{Layer: layerOf(t, entries), History: v1.History{CreatedBy: "base"}})
		if err != nil {
			t.Fatal(err)
		}
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}

	cf = cf.DeepCopy()
	cf.Architecture, cf.OS = arch, "linux"
	cf.Config = baseConfig(version)
	cf.Created = v1.Time{Time: time.Now()}

	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}

	return img
}

// assetFiles writes the boot assets of one arch into dir and returns them.
func assetFiles(t testing.TB, dir, arch string) installer.Assets {
	t.Helper()

	for name, content := range map[string]string{
		"sd-boot":   "MZ systemd-boot " + arch,
		"uki":       "MZ uki " + arch + string(bytes.Repeat([]byte{0xa5}, 100000)),
		"kernel":    "MZ vmlinuz " + arch,
		"initramfs": "\xfd7zXZ initramfs " + arch,
	} {
		if err := os.WriteFile(filepath.Join(dir, arch+"-"+name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	return assetBlobs(t, dir, arch)
}

// assetBlobs are the assets assetFiles wrote into dir.
func assetBlobs(t testing.TB, dir, arch string) installer.Assets {
	t.Helper()

	blob := func(name string) installer.Blob {
		b, err := installer.FileBlob(filepath.Join(dir, arch+"-"+name))
		if err != nil {
			t.Fatal(err)
		}

		return b
	}

	return installer.Assets{SDBoot: blob("sd-boot"), UKI: blob("uki"), Kernel: blob("kernel"), Initramfs: blob("initramfs")}
}

// tarEntry is what a test reads back from a layer.
type tarEntry struct {
	hdr  tar.Header
	data []byte
}

// readLayer gunzips and reads a layer's compressed stream as a client would.
func readLayer(t testing.TB, l v1.Layer) []tarEntry {
	t.Helper()

	rc, err := l.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()

	zr, err := gzip.NewReader(rc)
	if err != nil {
		t.Fatal(err)
	}

	var out []tarEntry

	tr := tar.NewReader(zr)

	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			t.Fatal(err)
		}

		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}

		out = append(out, tarEntry{hdr: *h, data: data})
	}

	return out
}

func names(entries []tarEntry) []string {
	out := make([]string, len(entries))
	for i, e := range entries {
		out[i] = e.hdr.Name
	}

	return out
}
