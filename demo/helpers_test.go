package demo

import (
	"archive/tar"
	"bytes"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// newRegistry starts an in-process registry on 127.0.0.1, which ggcr
// reaches over plain HTTP.
func newRegistry(t *testing.T) name.Registry {
	t.Helper()

	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	t.Cleanup(srv.Close)

	reg, err := name.NewRegistry(strings.TrimPrefix(srv.URL, "http://"))
	if err != nil {
		t.Fatalf("registry name: %v", err)
	}

	return reg
}

// fsEntry is one entry of a flattened image filesystem.
type fsEntry struct {
	typeflag byte
	mode     int64
	link     string
	data     []byte
}

// flatten returns the flattened filesystem of img keyed by path without a
// trailing slash, as crane export sees it.
func flatten(t *testing.T, img v1.Image) map[string]fsEntry {
	t.Helper()

	rc := mutate.Extract(img)
	defer rc.Close()

	out := map[string]fsEntry{}
	tr := tar.NewReader(rc)

	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}

		if err != nil {
			t.Fatalf("flatten: %v", err)
		}

		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("flatten %s: %v", hdr.Name, err)
		}

		out[strings.TrimSuffix(hdr.Name, "/")] = fsEntry{typeflag: hdr.Typeflag, mode: hdr.Mode, link: hdr.Linkname, data: data}
	}
}

// platforms fetches the index at ref, checks it holds exactly linux/amd64
// and linux/arm64 images, and returns them by arch.
func platforms(t *testing.T, ref name.Reference) map[string]v1.Image {
	t.Helper()

	idx, err := remote.Index(ref)
	if err != nil {
		t.Fatalf("index %s: %v", ref, err)
	}

	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatalf("index manifest %s: %v", ref, err)
	}

	out := map[string]v1.Image{}

	for _, m := range im.Manifests {
		if m.Platform == nil || m.Platform.OS != "linux" {
			t.Fatalf("%s: entry %s has platform %v, want linux/<arch>", ref, m.Digest, m.Platform)
		}

		img, err := idx.Image(m.Digest)
		if err != nil {
			t.Fatalf("%s: image %s: %v", ref, m.Digest, err)
		}

		cf, err := img.ConfigFile()
		if err != nil {
			t.Fatalf("%s: config %s: %v", ref, m.Digest, err)
		}

		if cf.Architecture != m.Platform.Architecture || cf.OS != "linux" {
			t.Errorf("%s: config says %s/%s, descriptor %s", ref, cf.OS, cf.Architecture, m.Platform)
		}

		out[m.Platform.Architecture] = img
	}

	if len(out) != 2 || out["amd64"] == nil || out["arm64"] == nil || len(im.Manifests) != 2 {
		t.Fatalf("%s: got %d entries %v, want linux/amd64 and linux/arm64", ref, len(im.Manifests), keys(out))
	}

	return out
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}

	return out
}

// cpioRecord is one newc record.
type cpioRecord struct {
	name string
	mode uint32
	data []byte
}

// parseNewc reads a complete "070701" archive, trailer included, and fails
// on anything after the trailer other than zero padding.
func parseNewc(b []byte) ([]cpioRecord, error) {
	var out []cpioRecord

	off := 0
	align := func(n int) int { return (n + 3) &^ 3 }

	for {
		if len(b)-off < 110 {
			return nil, fmt.Errorf("offset %d: truncated header", off)
		}

		h := b[off : off+110]
		if string(h[:6]) != "070701" {
			return nil, fmt.Errorf("offset %d: magic %q", off, h[:6])
		}

		field := func(i int) (uint32, error) {
			v, err := strconv.ParseUint(string(h[6+8*i:14+8*i]), 16, 32)

			return uint32(v), err
		}

		mode, err := field(1)
		if err != nil {
			return nil, fmt.Errorf("offset %d: mode: %w", off, err)
		}

		size, err := field(6)
		if err != nil {
			return nil, fmt.Errorf("offset %d: size: %w", off, err)
		}

		nameSize, err := field(11)
		if err != nil {
			return nil, fmt.Errorf("offset %d: namesize: %w", off, err)
		}

		nameEnd := off + 110 + int(nameSize)
		if nameSize == 0 || nameEnd > len(b) || b[nameEnd-1] != 0 {
			return nil, fmt.Errorf("offset %d: bad name", off)
		}

		recName := string(b[off+110 : nameEnd-1])
		dataStart := align(nameEnd)
		dataEnd := dataStart + int(size)

		if dataEnd > len(b) {
			return nil, fmt.Errorf("%s: truncated data", recName)
		}

		off = align(dataEnd)

		if recName == "TRAILER!!!" {
			if len(bytes.Trim(b[min(off, len(b)):], "\x00")) != 0 {
				return nil, errors.New("data after trailer")
			}

			return out, nil
		}

		out = append(out, cpioRecord{name: recName, mode: mode, data: b[dataStart:dataEnd]})
	}
}
