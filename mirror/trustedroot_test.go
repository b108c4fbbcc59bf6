package mirror

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/crane"

	"github.com/kiln-dev/kiln/release"
)

// TestTrustedRootTravels: the trusted root given to Copy is in the archive,
// the layout and the registry it writes, is read back unchanged from each,
// and goes on from an archive to a registry; a second identical run does
// not touch the archive; a new root replaces the old.
func TestTrustedRootTravels(t *testing.T) {
	f := pushRelease(t, true)
	ctx := t.Context()

	plan, err := NewPlan(ctx, f.src, Selection{Versions: []release.Version{release.MustParseVersion(testVersion)}, Kubernetes: false})
	if err != nil {
		t.Fatal(err)
	}

	tr := &TrustedRoot{JSON: []byte(`{"mediaType":"application/vnd.dev.sigstore.trustedroot+json;version=0.1"}`), TUF: []byte(`{"mediaType":"tuf"}`)}

	if got, err := ReadTrustedRoot(ctx, f.src); err != nil || got != nil {
		t.Fatalf("ReadTrustedRoot of a registry without one = %v, %v", got, err)
	}

	archive := Archive{Path: filepath.Join(t.TempDir(), "talos.tar")}
	layout := Layout{Dir: filepath.Join(t.TempDir(), "layout")}

	for _, dst := range []Endpoint{archive, layout} {
		if _, err := Copy(ctx, plan, dst, Options{TrustedRoot: tr}); err != nil {
			t.Fatal(err)
		}

		got, err := ReadTrustedRoot(ctx, dst)
		if err != nil || got == nil || !bytes.Equal(got.JSON, tr.JSON) || !bytes.Equal(got.TUF, tr.TUF) {
			t.Fatalf("%s: ReadTrustedRoot = %+v, %v", dst, got, err)
		}
	}

	// A layout written by kiln lists it like any tagged artifact.
	index, err := os.ReadFile(filepath.Join(layout.Dir, "index.json"))
	if err != nil || !strings.Contains(string(index), TrustedRootRepository+":"+TrustedRootTag) {
		t.Fatalf("layout index.json does not name the trusted root: %v\n%s", err, index)
	}

	// Again with nothing new: the archive is not rewritten.
	before, err := os.Stat(archive.Path)
	if err != nil {
		t.Fatal(err)
	}

	if _, err := Copy(ctx, plan, archive, Options{TrustedRoot: tr}); err != nil {
		t.Fatal(err)
	}

	after, err := os.Stat(archive.Path)
	if err != nil {
		t.Fatal(err)
	}

	if !after.ModTime().Equal(before.ModTime()) || after.Size() != before.Size() {
		t.Error("a run with the same trusted root rewrote the archive")
	}

	// From the archive into another registry, as on the far side.
	inside := Registry{Mirror: release.Mirror{Registry: newRegistry(t, false), Namespace: "talos"}}

	carried, err := ReadTrustedRoot(ctx, archive)
	if err != nil {
		t.Fatal(err)
	}

	fromArchive, err := NewPlan(ctx, archive, Selection{Versions: []release.Version{release.MustParseVersion(testVersion)}})
	if err != nil {
		t.Fatal(err)
	}

	if _, err := Copy(ctx, fromArchive, inside, Options{TrustedRoot: carried}); err != nil {
		t.Fatal(err)
	}

	got, err := ReadTrustedRoot(ctx, inside)
	if err != nil || got == nil || !bytes.Equal(got.JSON, tr.JSON) {
		t.Fatalf("registry: ReadTrustedRoot = %+v, %v", got, err)
	}

	// A real client sees an ordinary artifact under the namespace.
	m, err := crane.Manifest(inside.Registry.Name() + "/talos/" + TrustedRootRepository + ":" + TrustedRootTag)
	if err != nil || !strings.Contains(string(m), TrustedRootArtifactType) || !strings.Contains(string(m), `"trusted_root.json"`) {
		t.Fatalf("crane manifest: %v\n%s", err, m)
	}

	// A newer root replaces the one there.
	newer := &TrustedRoot{JSON: []byte(`{"newer":true}`), TUF: tr.TUF}
	if _, err := Copy(ctx, fromArchive, inside, Options{TrustedRoot: newer}); err != nil {
		t.Fatal(err)
	}

	if got, err := ReadTrustedRoot(ctx, inside); err != nil || !bytes.Equal(got.JSON, newer.JSON) {
		t.Fatalf("after a newer root: %+v, %v", got, err)
	}
}

// TestTrustedRootTampered: a layout whose trusted root blob was altered on
// disk is refused, naming the blob.
func TestTrustedRootTampered(t *testing.T) {
	f := pushRelease(t, true)
	ctx := t.Context()

	plan, err := NewPlan(ctx, f.src, Selection{Versions: []release.Version{release.MustParseVersion(testVersion)}})
	if err != nil {
		t.Fatal(err)
	}

	layout := Layout{Dir: t.TempDir()}
	tr := &TrustedRoot{JSON: []byte(`{"a":1}`), TUF: []byte(`{"b":2}`)}

	if _, err := Copy(ctx, plan, layout, Options{TrustedRoot: tr}); err != nil {
		t.Fatal(err)
	}

	m, blobs, err := tr.artifact()
	if err != nil {
		t.Fatal(err)
	}

	var layer string

	for d, b := range blobs {
		if bytes.Equal(b, tr.JSON) {
			layer = filepath.Join(layout.Dir, "blobs", d.Algorithm, d.Hex)
		}
	}

	if err := os.WriteFile(layer, []byte(`{"a":2}`), 0o644); err != nil {
		t.Fatal(err)
	}

	if _, err := ReadTrustedRoot(ctx, layout); err == nil || !strings.Contains(err.Error(), "content has digest") {
		t.Fatalf("ReadTrustedRoot of a tampered layout = %v (manifest %s)", err, m.Digest)
	}
}
