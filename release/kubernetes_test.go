package release

import (
	"errors"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

// importedMachinery is the machinery version kiln's go.mod requires.
func importedMachinery(t *testing.T) string {
	t.Helper()

	data, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}

	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "github.com/siderolabs/talos/pkg/machinery" {
			return f[1]
		}
	}

	t.Fatal("go.mod requires no github.com/siderolabs/talos/pkg/machinery")

	return ""
}

// TestKubernetesImagesOfImportedMachinery checks the row of the machinery
// kiln builds with against that machinery's own constants, with no proxy.
func TestKubernetesImagesOfImportedMachinery(t *testing.T) {
	v := importedMachinery(t)

	got, err := kubernetesImagesOf(v)
	if err != nil {
		t.Fatal(err)
	}

	k8s := "v" + constants.DefaultKubernetesVersion
	want := []string{
		"ghcr.io/siderolabs/flannel:" + constants.FlannelVersion,
		constants.CoreDNSImage + ":" + constants.DefaultCoreDNSVersion,
		constants.EtcdImage + ":" + constants.DefaultEtcdVersion,
		"", // pause: a constant of the talos module (pkg/images), not of machinery
		constants.KubernetesAPIServerImage + ":" + k8s,
		constants.KubernetesControllerManagerImage + ":" + k8s,
		constants.KubernetesSchedulerImage + ":" + k8s,
		constants.KubeProxyImage + ":" + k8s,
		constants.KubeletImage + ":" + k8s,
		"registry.k8s.io/networking/kube-network-policies:" + constants.KubeNetworkPoliciesVersion,
	}

	if len(got) != len(want) || !strings.HasPrefix(got[3], "registry.k8s.io/pause:") {
		t.Fatalf("KubernetesImages(%s) = %q, want %q with pause fourth", v, got, want)
	}

	want[3] = got[3]

	if !slices.Equal(got, want) {
		t.Errorf("KubernetesImages(%s)\n got %q\nwant %q", v, got, want)
	}

	// What issue 11 measured on v1.13.9, independent of the constants.
	if v == "v1.13.9" {
		for _, ref := range []string{
			"registry.k8s.io/kube-apiserver:v1.36.3", "ghcr.io/siderolabs/kubelet:v1.36.3", "registry.k8s.io/etcd:v3.6.12",
			"registry.k8s.io/coredns/coredns:v1.14.6", "registry.k8s.io/networking/kube-network-policies:v1.1.0",
			"registry.k8s.io/pause:3.10.1",
		} {
			if !slices.Contains(got, ref) {
				t.Errorf("v1.13.9 lacks %s: %q", ref, got)
			}
		}
	}
}

func TestKubernetesImagesLookup(t *testing.T) {
	for _, tc := range []struct {
		version string
		want    string   // an image the list must hold
		errHas  []string // the error must name these
		unknown bool     // the error wraps ErrNoKubernetesImages
		zero    bool     // the zero Version rather than version parsed
	}{
		{version: "v1.13.9", want: "ghcr.io/siderolabs/kubelet:v1.36.3"},
		{version: "1.13.9", want: "ghcr.io/siderolabs/kubelet:v1.36.3"},
		{version: "v1.13.9+dirty", want: "ghcr.io/siderolabs/kubelet:v1.36.3"},
		{version: "v1.13.0", want: "ghcr.io/siderolabs/kubelet:v1.36.0"},
		{version: "v1.12.0", want: "registry.k8s.io/pause:3.10"},
		{version: "v1.10.0", want: "gcr.io/etcd-development/etcd:v3.5.21"},
		{version: "v1.99.0", errHas: []string{"v1.99.0", "newer", "--images", "talosctl images default"}, unknown: true},
		{version: "v1.9.6", errHas: []string{"v1.9.6", "v1.10.0", "--images"}, unknown: true},
		{version: "v1.13.1", errHas: []string{"v1.13.1", "module proxy", "--images"}, unknown: true},
		{version: "v1.13", errHas: []string{"v1.13"}},
		{version: "v1.x.0", errHas: []string{"v1.x.0"}},
		{version: "", errHas: []string{`""`}},
		{zero: true, errHas: []string{"no Talos version"}, unknown: true},
	} {
		got, err := kubernetesImagesOf(tc.version)
		if tc.zero {
			got, err = KubernetesImages(Version{})
		}

		if tc.errHas == nil {
			if err != nil || !slices.Contains(got, tc.want) {
				t.Errorf("KubernetesImages(%q) = %q, %v; want it to hold %s", tc.version, got, err, tc.want)
			}

			continue
		}

		if err == nil {
			t.Errorf("KubernetesImages(%q) = %q, want an error", tc.version, got)
			continue
		}

		if errors.Is(err, ErrNoKubernetesImages) != tc.unknown {
			t.Errorf("KubernetesImages(%q): errors.Is(%v, ErrNoKubernetesImages) = %v", tc.version, err, !tc.unknown)
		}

		for _, s := range tc.errHas {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("KubernetesImages(%q) error %q does not name %q", tc.version, err, s)
			}
		}
	}
}

// TestKubernetesTable checks what every row must be, whatever the proxy
// gave: sorted versions (the lookup bisects), full tagged references, the
// components every Talos runs.
func TestKubernetesTable(t *testing.T) {
	if len(kubernetesTable) == 0 {
		t.Fatal("empty table")
	}

	var prev Version

	for i, r := range kubernetesTable {
		v := r.Version
		if v.IsZero() || len(v.Semver().Build) > 0 {
			t.Fatalf("row %d: version %q", i, r.Version)
		}

		if i > 0 && v.Compare(prev) <= 0 {
			t.Errorf("row %d: %s after %s: not ascending", i, r.Version, prev)
		}

		prev = v

		seen := map[string]bool{}

		for _, img := range r.Images {
			tag, err := name.NewTag(img, name.StrictValidation)
			if err != nil || tag.String() != img {
				t.Errorf("%s: %q is not a full tagged reference: %v", r.Version, img, err)
				continue
			}

			repo := tag.Context().Name()
			if seen[repo] {
				t.Errorf("%s: %s twice", r.Version, repo)
			}

			seen[repo] = true
		}

		for _, repo := range []string{
			"ghcr.io/siderolabs/flannel", "registry.k8s.io/coredns/coredns", "registry.k8s.io/pause",
			"registry.k8s.io/kube-apiserver", "registry.k8s.io/kube-controller-manager", "registry.k8s.io/kube-scheduler",
			"registry.k8s.io/kube-proxy", "ghcr.io/siderolabs/kubelet",
		} {
			if !seen[repo] {
				t.Errorf("%s: no %s", r.Version, repo)
			}
		}

		if v.AtLeast(1, 13) && !seen["registry.k8s.io/networking/kube-network-policies"] {
			t.Errorf("%s: no kube-network-policies", r.Version)
		}
	}

	// The caller owns what it gets.
	a, _ := KubernetesImages(kubernetesTable[0].Version)
	a[0] = "changed"

	if b, _ := KubernetesImages(kubernetesTable[0].Version); b[0] == "changed" {
		t.Error("KubernetesImages returns the table's own slice")
	}
}

// FuzzKubernetesImages: any version string gives a list or an error,
// never a panic, and a list only for a version the table has.
func FuzzKubernetesImages(f *testing.F) {
	for _, s := range []string{"v1.13.9", "1.10.0", "v1.14.1+x", "v1.13.0-beta.1", "v9.9.9", "v1.13", "", "v-1.0.0", "v1.13.9-"} {
		f.Add(s)
	}

	f.Fuzz(func(t *testing.T, s string) {
		got, err := kubernetesImagesOf(s)
		if err != nil {
			if got != nil {
				t.Errorf("KubernetesImages(%q) = %q with error %v", s, got, err)
			}

			return
		}

		if len(got) == 0 {
			t.Errorf("KubernetesImages(%q): empty list, no error", s)
		}
	})
}

// kubernetesImagesOf is KubernetesImages of a version as a caller gets it,
// parsed from a string.
func kubernetesImagesOf(s string) ([]string, error) {
	v, err := ParseVersion(s)
	if err != nil {
		return nil, err
	}

	return KubernetesImages(v)
}
