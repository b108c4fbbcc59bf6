package release

import (
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

	got := Versions(tags, []string{"1.12.1"})
	want := []string{"v1.2.0", "v1.9.0", "v1.10.3", "v1.12.0", "v1.13.0", "v1.14.0-beta.1"}

	if !slices.Equal(got, want) {
		t.Fatalf("Versions = %v, want %v", got, want)
	}
}

func TestMirrorReference(t *testing.T) {
	reg, _ := name.NewRegistry("127.0.0.1:5000")

	for _, tc := range []struct{ in, ns, want string }{
		{"ghcr.io/siderolabs/imager:v1.13.0", "", "127.0.0.1:5000/siderolabs/imager:v1.13.0"},
		{"ghcr.io/siderolabs/gvisor:20240826.0@" + d1, "", "127.0.0.1:5000/siderolabs/gvisor@" + d1},
		{"registry.k8s.io/kube-apiserver:v1.36.0", "", "127.0.0.1:5000/registry.k8s.io/kube-apiserver:v1.36.0"},
		{"busybox:1", "", "127.0.0.1:5000/docker.io/library/busybox:1"},
		{"ghcr.io/siderolabs/imager:v1.13.0", "/proxy/ghcr/", "127.0.0.1:5000/proxy/ghcr/siderolabs/imager:v1.13.0"},
	} {
		ref, err := MirrorReference(tc.in, reg, tc.ns)
		if err != nil || ref.String() != tc.want {
			t.Errorf("MirrorReference(%q, %q) = %v, %v; want %s", tc.in, tc.ns, ref, err, tc.want)
		}
	}
}

func TestParseVersion(t *testing.T) {
	if v, err := ParseVersion("1.13.0"); err != nil || v != "v1.13.0" {
		t.Errorf("ParseVersion(1.13.0) = %q, %v", v, err)
	}

	if _, err := ParseVersion("v1.x"); err == nil || !strings.Contains(err.Error(), "v1.x") {
		t.Errorf("ParseVersion(v1.x) error = %v", err)
	}
}
