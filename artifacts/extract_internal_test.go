package artifacts

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// tarLayer is a gzip layer of the given entries ("name" -> content; a name
// ending in "/" is a directory).
func tarLayer(t *testing.T, entries ...[2]string) v1.Layer {
	t.Helper()

	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		hdr := &tar.Header{Name: e[0], Mode: 0o644, Size: int64(len(e[1])), Typeflag: tar.TypeReg}
		if e[0][len(e[0])-1] == '/' {
			hdr = &tar.Header{Name: e[0], Mode: 0o755, Typeflag: tar.TypeDir}
		}

		if err := tw.WriteHeader(hdr); err != nil {
			t.Fatal(err)
		}

		if _, err := tw.Write([]byte(e[1])); err != nil {
			t.Fatal(err)
		}
	}

	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}

	data := buf.Bytes()

	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
	if err != nil {
		t.Fatal(err)
	}

	return l
}

// unreadable is a layer whose bytes cannot be read: a walk that opens it
// fails.
type unreadable struct{ v1.Layer }

func (unreadable) Compressed() (io.ReadCloser, error) { return nil, errors.New("this layer was read") }

// TestWalkLayers: the walk shows the image's filesystem, upper layers
// first (an upper file, whiteout or opaque directory hides the lower ones),
// and stops at the layer where the visitor found everything: the layers
// below are never opened.
func TestWalkLayers(t *testing.T) {
	bottom := unreadable{tarLayer(t, [2]string{"usr/install/amd64/vmlinuz", "bottom"})}
	lower := tarLayer(t,
		[2]string{"usr/install/amd64/vmlinuz", "lower kernel"},
		[2]string{"usr/lib/grub/i386-pc/a.mod", "lower a"},
		[2]string{"usr/lib/grub/i386-pc/b.mod", "lower b"},
		[2]string{"etc/old", "hidden by the opaque dir"},
		[2]string{"usr/install/amd64/initramfs.xz", "lower initramfs"},
	)
	upper := tarLayer(t,
		[2]string{"usr/install/amd64/", ""},
		[2]string{"./usr/install/amd64/vmlinuz", "upper kernel"},
		[2]string{"usr/lib/grub/i386-pc/.wh.a.mod", ""},
		[2]string{"etc/.wh..wh..opq", ""},
		[2]string{"usr/install/amd64/vmlinuz", "a second entry of the same name: the first counts"},
	)

	img, err := mutate.AppendLayers(empty.Image, bottom, lower, upper)
	if err != nil {
		t.Fatal(err)
	}

	m := &Manager{src: &Source{}}

	seen := map[string]string{}
	visit := func(hdr *tar.Header, name string, r io.Reader) error {
		data, err := io.ReadAll(r)
		seen[name] = string(data)

		if _, ok := seen["usr/install/amd64/initramfs.xz"]; ok {
			return errWalkDone
		}

		return err
	}

	if err := m.walkLayers(t.Context(), img, visit); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{
		"usr/install/amd64/vmlinuz":      "upper kernel",
		"usr/install/amd64/initramfs.xz": "lower initramfs",
		"usr/lib/grub/i386-pc/b.mod":     "lower b",
	}

	for name, content := range want {
		if seen[name] != content {
			t.Errorf("%s = %q, want %q", name, seen[name], content)
		}
	}

	for _, name := range []string{"usr/lib/grub/i386-pc/a.mod", "etc/old"} {
		if _, ok := seen[name]; ok {
			t.Errorf("%s shown, though an upper layer hides it", name)
		}
	}

	// A walk that needs the bottom layer opens it.
	err = m.walkLayers(t.Context(), img, func(*tar.Header, string, io.Reader) error { return nil })
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("this layer was read")) {
		t.Fatalf("a full walk = %v, want the bottom layer's error", err)
	}
}
