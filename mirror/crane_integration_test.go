//go:build integration

package mirror

import (
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

// craneCLI runs the real crane CLI (_tools/bin/crane, or $CRANE).
func craneCLI(t *testing.T, args ...string) string {
	t.Helper()

	out, err := exec.CommandContext(t.Context(), testfixture.Crane(t), append(args, "--insecure")...).CombinedOutput()
	if err != nil {
		t.Fatalf("crane %v: %v\n%s", args, err, out)
	}

	return string(out)
}

// TestCraneReadsMirror: what kiln mirror wrote through an archive into a
// registry reads back through crane exactly as the source.
func TestCraneReadsMirror(t *testing.T) {
	f := pushRelease(t, false)

	plan, err := NewPlan(t.Context(), f.src, fullSelection())
	if err != nil {
		t.Fatal(err)
	}

	archive := Archive{Path: filepath.Join(t.TempDir(), "release.tar")}
	if _, err := Copy(t.Context(), plan, archive, Options{}); err != nil {
		t.Fatal(err)
	}

	plan2, err := NewPlan(t.Context(), archive, fullSelection())
	if err != nil {
		t.Fatal(err)
	}

	dst := newRegistry(t, false)
	if _, err := Copy(t.Context(), plan2, Registry{Mirror: release.Mirror{Registry: dst}}, Options{}); err != nil {
		t.Fatal(err)
	}

	for _, repo := range []string{release.ImagerRepo, release.ExtensionsRepo, "registry.k8s.io/kube-apiserver"} {
		srcTags := strings.Fields(craneCLI(t, "ls", f.src.Registry.Repo(repo).String()))
		dstTags := strings.Fields(craneCLI(t, "ls", dst.Repo(repo).String()))
		slices.Sort(srcTags)
		slices.Sort(dstTags)

		if !slices.Equal(srcTags, dstTags) {
			t.Errorf("crane ls %s: got %v, want %v", repo, dstTags, srcTags)
		}

		for _, tag := range srcTags {
			s, d := f.src.Registry.Repo(repo).Tag(tag).String(), dst.Repo(repo).Tag(tag).String()
			if got, want := craneCLI(t, "digest", d), craneCLI(t, "digest", s); got != want {
				t.Errorf("crane digest %s: got %s, want %s", d, got, want)
			}

			if got, want := craneCLI(t, "manifest", d), craneCLI(t, "manifest", s); got != want {
				t.Errorf("crane manifest %s differs", d)
			}
		}
	}
}
