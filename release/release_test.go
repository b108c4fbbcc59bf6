package release

import (
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

const (
	d1 = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	d2 = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
)

func TestParseExtensions(t *testing.T) {
	digests := "ghcr.io/siderolabs/gvisor:20240826.0@" + d1 + "\n\nghcr.io/siderolabs/amd-ucode:20240909@" + d2 + "\nnot-a-line-with-digest\n"
	descs := "ghcr.io/siderolabs/gvisor:20240826.0@" + d1 + ":\n  author: Sidero Labs\n  description: gVisor runtime\n"

	exts, err := ParseExtensions([]byte(digests), []byte(descs))
	if err != nil {
		t.Fatal(err)
	}

	if len(exts) != 2 || exts[0].Name() != "siderolabs/gvisor" || exts[0].Ref.TagStr() != "20240826.0" || exts[0].Digest != d1 ||
		exts[0].Author != "Sidero Labs" || exts[0].Description != "gVisor runtime" || exts[1].Name() != "siderolabs/amd-ucode" || exts[1].Author != "" {
		t.Fatalf("ParseExtensions = %+v", exts)
	}

	for _, bad := range []string{"ghcr.io/Bad Name:x@" + d1, "ghcr.io/siderolabs/x:1@sha256:zz"} {
		if _, err := ParseExtensions([]byte(bad), nil); !errors.Is(err, ErrInvalidCatalog) {
			t.Errorf("ParseExtensions(%q) error = %v, want ErrInvalidCatalog", bad, err)
		}
	}
}

func TestParseOverlays(t *testing.T) {
	ovs, err := ParseOverlays([]byte("overlays:\n  - name: rpi_generic\n    image: ghcr.io/siderolabs/sbc-raspberrypi:v0.1.5\n    digest: " + d1 + "\n"))
	if err != nil {
		t.Fatal(err)
	}

	if len(ovs) != 1 || ovs[0].Name != "rpi_generic" || ovs[0].Image() != "siderolabs/sbc-raspberrypi" || ovs[0].Ref.TagStr() != "v0.1.5" {
		t.Fatalf("ParseOverlays = %+v", ovs)
	}

	if _, err := ParseOverlays([]byte("overlays: 5")); !errors.Is(err, ErrInvalidCatalog) {
		t.Errorf("bad overlays.yaml error = %v", err)
	}
}

func TestVersions(t *testing.T) {
	tags := []string{
		"v1.1.0", "v1.2.0", "v1.10.3", "v1.9.0", "latest", "v1.13.0", "v1.13.0-rc.1", "v1.14.0-beta.1",
		"v1.14.0-alpha.2-3-gabc", "v1.12.1", "sha256-abc.sig", "v1.12.0", "1.13.9", "v1.14.0-beta.1+dirty",
	}

	var got []string
	for _, v := range Versions(tags, []string{"1.12.1"}) {
		got = append(got, v.String())
	}

	want := []string{"v1.2.0", "v1.9.0", "v1.10.3", "v1.12.0", "v1.13.0", "v1.14.0-beta.1"}

	if !slices.Equal(got, want) {
		t.Fatalf("Versions = %v, want %v", got, want)
	}
}

func TestMirrorRef(t *testing.T) {
	reg, _ := name.NewRegistry("127.0.0.1:5000")

	for _, tc := range []struct{ in, ns, want string }{
		{"ghcr.io/siderolabs/imager:v1.13.0", "", "127.0.0.1:5000/siderolabs/imager:v1.13.0"},
		{"ghcr.io/siderolabs/gvisor:20240826.0@" + d1, "", "127.0.0.1:5000/siderolabs/gvisor@" + d1},
		{"registry.k8s.io/kube-apiserver:v1.36.0", "", "127.0.0.1:5000/registry.k8s.io/kube-apiserver:v1.36.0"},
		{"busybox:1", "", "127.0.0.1:5000/docker.io/library/busybox:1"},
		{"ghcr.io/siderolabs/imager:v1.13.0", "/proxy/ghcr/", "127.0.0.1:5000/proxy/ghcr/siderolabs/imager:v1.13.0"},
	} {
		ref, err := Mirror{Registry: reg, Namespace: tc.ns}.Ref(tc.in)
		if err != nil || ref.String() != tc.want {
			t.Errorf("Mirror{%q}.Ref(%q) = %v, %v; want %s", tc.ns, tc.in, ref, err, tc.want)
		}
	}
}

// The mirror's paths and repositories are each other's inverse, the
// namespace written with or without slashes, and an insecure registry
// stays insecure.
func TestMirrorRepoPath(t *testing.T) {
	reg, _ := name.NewRegistry("kiln.internal", name.Insecure)

	for _, ns := range []string{"", "proxy", "/proxy/ghcr/"} {
		m := Mirror{Registry: reg, Namespace: ns}

		repo, err := m.Repo("/siderolabs/imager")
		if err != nil {
			t.Fatal(err)
		}

		if want := strings.Trim("kiln.internal/"+strings.Trim(ns, "/")+"/siderolabs/imager", "/"); repo.Name() != strings.ReplaceAll(want, "//", "/") {
			t.Errorf("Mirror{%q}.Repo = %s", ns, repo.Name())
		}

		if repo.Scheme() != "http" {
			t.Errorf("Mirror{%q}.Repo scheme %s, want http", ns, repo.Scheme())
		}

		if p, err := m.Path(repo); err != nil || p != "siderolabs/imager" {
			t.Errorf("Mirror{%q}.Path(%s) = %q, %v", ns, repo, p, err)
		}

		if up, err := m.Upstream(repo); err != nil || up.Name() != "ghcr.io/siderolabs/imager" {
			t.Errorf("Mirror{%q}.Upstream(%s) = %v, %v", ns, repo, up, err)
		}
	}

	m := Mirror{Registry: reg, Namespace: "proxy"}
	other, _ := name.NewRepository("kiln.internal/elsewhere/siderolabs/imager")

	if p, err := m.Path(other); err == nil {
		t.Errorf("Path of a repository outside the namespace = %q", p)
	}

	if _, err := m.Repo("Not Valid"); err == nil {
		t.Error("Repo of an invalid path: no error")
	}
}

func TestParseVersion(t *testing.T) {
	if v, err := ParseVersion("1.13.0"); err != nil || v.String() != "v1.13.0" {
		t.Errorf("ParseVersion(1.13.0) = %q, %v", v, err)
	}

	if _, err := ParseVersion("v1.x"); err == nil || !strings.Contains(err.Error(), "v1.x") {
		t.Errorf("ParseVersion(v1.x) error = %v", err)
	}
}

func TestVersionPredicates(t *testing.T) {
	for _, tc := range []struct {
		v             string
		before1_10    bool
		talosctlAll   bool
		overlays      bool
		baseInstaller string
	}{
		{"v1.6.7", true, false, false, InstallerRepo},
		{"v1.7.0", true, false, true, InstallerRepo},
		{"v1.9.6", true, false, true, InstallerRepo},
		{"v1.10.0-alpha.1", false, false, true, InstallerBaseRepo},
		{"v1.10.0", false, false, true, InstallerBaseRepo},
		{"v1.11.0", false, true, true, InstallerBaseRepo},
		{"v2.0.0", false, true, true, InstallerBaseRepo},
	} {
		v := MustParseVersion(tc.v)
		if v.Before(1, 10) != tc.before1_10 || HasTalosctlAll(v) != tc.talosctlAll || HasOverlays(v) != tc.overlays || BaseInstallerRepo(v) != tc.baseInstaller {
			t.Errorf("%s: Before(1, 10) %v, HasTalosctlAll %v, HasOverlays %v, BaseInstallerRepo %s",
				tc.v, v.Before(1, 10), HasTalosctlAll(v), HasOverlays(v), BaseInstallerRepo(v))
		}
	}

	if MustParseVersion("v1.13.0-rc.1").Compare(MustParseVersion("v1.13.0")) >= 0 {
		t.Error("a pre-release does not order before its release")
	}

	var zero Version
	if !zero.IsZero() || zero.String() != "" {
		t.Errorf("zero Version: IsZero %v, String %q", zero.IsZero(), zero)
	}
}

// A Version is written as its string in JSON (plan keys and release locks
// keep their bytes) and read back as itself.
func TestVersionJSON(t *testing.T) {
	type doc struct {
		Version Version `json:"version"`
	}

	b, err := json.Marshal(doc{MustParseVersion("1.13.0")})
	if err != nil || string(b) != `{"version":"v1.13.0"}` {
		t.Fatalf("Marshal = %s, %v", b, err)
	}

	var d doc
	if err := json.Unmarshal(b, &d); err != nil || d.Version != MustParseVersion("v1.13.0") {
		t.Fatalf("Unmarshal = %v, %v", d.Version, err)
	}

	if err := json.Unmarshal([]byte(`{"version":"latest"}`), &d); err == nil {
		t.Error("Unmarshal of a malformed version: no error")
	}
}
