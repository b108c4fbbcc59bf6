package main

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestTableIsCurrent is the golden test: the committed table is exactly
// what the generator derives from the module proxy now. It downloads every
// served machinery and talos module from v1.10.0 on (about 40 and 30;
// seconds once they are in the module cache).
func TestTableIsCurrent(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: needs the Go module proxy")
	}

	want, err := generate(t.Context(), 8)
	if err != nil {
		t.Fatal(err)
	}

	const file = "../../release/kubernetes_table.go"

	got, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}

	if err := compare(file, got, want); err != nil {
		t.Fatal(err)
	}
}

// tree writes files (path → content) under a new directory.
func tree(t *testing.T, files map[string]string) string {
	t.Helper()

	dir := t.TempDir()

	for p, c := range files {
		full := filepath.Join(dir, filepath.FromSlash(p))
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			t.Fatal(err)
		}

		if err := os.WriteFile(full, []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	return dir
}

// machineryTree is a machinery module with the constants and v1alpha1
// Image methods the generator reads, written the ways Talos writes them.
func machineryTree(t *testing.T, extra string) string {
	t.Helper()

	return tree(t, map[string]string{
		"constants/constants.go": `package constants

import "time"

const (
	// expressions, not only literals
	k8sMajorMinor = "1.36"
	DefaultKubernetesVersion = k8sMajorMinor + ".3"
	registry = "registry.k8s.io"
	KubeletImage = "ghcr.io/siderolabs/kubelet"
	KubernetesAPIServerImage = registry + "/kube-apiserver"
	EtcdImage = (registry + "/etcd")
	DefaultEtcdVersion = "v3.6.12"
	FlannelVersion = "0.28.8"
	Timeout = 35 * time.Minute
` + extra + `
)
`,
		"constants/other_windows.go": `package constants

const FlannelVersion = "windows-only, never read"
`,
		"constants/constants_test.go": `package constants

const EtcdImage = "test-only, never read"
`,
		"config/types/v1alpha1/kubelet.go": `package v1alpha1

import (
	"fmt"

	"github.com/siderolabs/talos/pkg/machinery/constants"
)

type KubeletConfig struct{ KubeletImage string }

func (k *KubeletConfig) Image() string {
	image := k.KubeletImage
	if image == "" {
		image = fmt.Sprintf("%s:v%s", constants.KubeletImage, constants.DefaultKubernetesVersion)
	}

	return image
}
`,
		"config/types/v1alpha1/apiserver.go": `package v1alpha1

import (
	"fmt"

	c "github.com/siderolabs/talos/pkg/machinery/constants"
)

type APIServerConfig struct{ ContainerImage string }

func (a *APIServerConfig) Image() string {
	if a.ContainerImage != "" {
		return a.ContainerImage
	}

	return fmt.Sprintf("%s:v%s", c.KubernetesAPIServerImage, c.DefaultKubernetesVersion)
}
`,
		"config/types/v1alpha1/etcd.go": `package v1alpha1

import (
	"fmt"

	"github.com/siderolabs/talos/pkg/machinery/constants"
)

type EtcdConfig struct{ ContainerImage string }

func (e *EtcdConfig) Image() string {
	image := e.ContainerImage
	if image == "" {
		image = fmt.Sprintf("%s:%s", constants.EtcdImage, constants.DefaultEtcdVersion)
	}

	return image
}
`,
	})
}

// listGo is a pkg/images/list.go in the style of v1.10 (plain strings)
// or, with tags, v1.13 (name.Tag, mustParseTag, ListWithOptions).
const listGo110 = `package images

import (
	"fmt"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

type Versions struct{ Etcd, Flannel, Kubelet, KubeAPIServer, Installer, Pause string }

const DefaultSandboxImage = "registry.k8s.io/pause:" + pauseVersion

const pauseVersion = "3.10"

func List(config config.Config) Versions {
	var images Versions

	images.Etcd = config.Cluster().Etcd().Image()
	images.Flannel = fmt.Sprintf("ghcr.io/siderolabs/flannel:%s", constants.FlannelVersion)
	images.Kubelet = config.Machine().Kubelet().Image()
	images.KubeAPIServer = config.Cluster().APIServer().Image()
	images.Installer = DefaultInstallerImage
	images.Pause = DefaultSandboxImage

	return images
}
`

const imageGo110 = `package talos

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/siderolabs/talos/pkg/images"
)

var imageListCmd = &cobra.Command{Use: "list", RunE: func(cmd *cobra.Command, args []string) error {
	fmt.Println("not this one")
	return nil
}}

var imageDefaultCmd = &cobra.Command{
	Use:   "default",
	RunE: func(cmd *cobra.Command, args []string) error {
		images := images.List(nil)

		fmt.Printf("%s\n", images.Flannel)
		fmt.Printf("%s\n", images.Etcd)
		fmt.Printf("%s\n", images.KubeAPIServer)
		fmt.Printf("%s\n", images.Kubelet)
		fmt.Printf("%s\n", images.Installer)
		fmt.Printf("%s\n", images.Pause)

		return nil
	},
}
`

const listGo113 = `package images

import (
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/siderolabs/talos/pkg/machinery/config"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

type Versions struct{ Etcd, Flannel, Kubelet, KubeAPIServer, Pause name.Tag }

type VersionsListOptions struct{ KubernetesVersion, EtcdVersion, FlannelVersion string }

const DefaultSandboxImage = "registry.k8s.io/pause:3.10.1"

func Flannel() name.Tag {
	return mustParseTag(fmt.Sprintf("ghcr.io/siderolabs/flannel:%s", constants.FlannelVersion))
}

func List(config config.Config) Versions {
	var images Versions

	images.Etcd = mustParseTag(config.Cluster().Etcd().Image())
	images.Flannel = Flannel()
	images.Kubelet = mustParseTag(config.K8sKubeletConfig().Image())
	images.KubeAPIServer = mustParseTag(config.K8sAPIServerConfig().Image())
	images.Pause = mustParseTag(DefaultSandboxImage)

	return images
}

func ListWithOptions(config config.Config, opts VersionsListOptions) Versions {
	images := List(config)

	if opts.EtcdVersion != "" {
		images.Etcd = images.Etcd.Tag(opts.EtcdVersion)
	}

	if opts.KubernetesVersion != "" {
		images.Kubelet = images.Kubelet.Tag(opts.KubernetesVersion)
		images.KubeAPIServer = images.KubeAPIServer.Tag(opts.KubernetesVersion)
	}

	return images
}
`

const imageGo113 = `package talos

import (
	"github.com/spf13/cobra"

	"github.com/siderolabs/talos/cmd/talosctl/pkg/talos/safeout"
	"github.com/siderolabs/talos/pkg/flags"
	"github.com/siderolabs/talos/pkg/images"
	"github.com/siderolabs/talos/pkg/machinery/constants"
)

var imageK8sBundleCmdFlags = struct {
	k8sVersion  pflag.Value
	etcdVersion pflag.Value
}{
	k8sVersion:  flags.Semver(constants.DefaultKubernetesVersion),
	etcdVersion: flags.Semver(constants.DefaultEtcdVersion),
}

var imageK8sBundleCmd = &cobra.Command{
	Use:     "k8s-bundle",
	Aliases: []string{"default"},
	RunE: func(cmd *cobra.Command, args []string) error {
		images := images.ListWithOptions(nil, images.VersionsListOptions{
			KubernetesVersion: imageK8sBundleCmdFlags.k8sVersion.String(),
			EtcdVersion:       imageK8sBundleCmdFlags.etcdVersion.String(),
		})

		safeout.Printf("%s\n", images.Flannel)
		safeout.Printf("%s\n", images.Etcd)
		safeout.Printf("%s\n", images.Pause)
		safeout.Printf("%s\n", images.KubeAPIServer)
		safeout.Printf("%s\n", images.Kubelet)

		return nil
	},
}
`

func TestDerive(t *testing.T) {
	mach := machineryTree(t, "")

	t.Run("v1.10 shape", func(t *testing.T) {
		talos := tree(t, map[string]string{"pkg/images/list.go": listGo110, "cmd/talosctl/cmd/talos/image.go": imageGo110})

		r, err := derive(mach, talos)
		if err != nil {
			t.Fatal(err)
		}

		want := []string{
			"ghcr.io/siderolabs/flannel:0.28.8",
			"registry.k8s.io/etcd:v3.6.12",
			"registry.k8s.io/kube-apiserver:v1.36.3",
			"ghcr.io/siderolabs/kubelet:v1.36.3",
			"registry.k8s.io/pause:3.10",
		}

		if !slices.Equal(r.Images, want) || !slices.Equal(r.Printed, want) {
			t.Errorf("derive = %q / %q, want %q", r.Images, r.Printed, want)
		}
	})

	t.Run("v1.13 shape", func(t *testing.T) {
		talos := tree(t, map[string]string{"pkg/images/list.go": listGo113, "cmd/talosctl/cmd/talos/image.go": imageGo113})

		r, err := derive(mach, talos)
		if err != nil {
			t.Fatal(err)
		}

		want := []string{
			"ghcr.io/siderolabs/flannel:0.28.8",
			"registry.k8s.io/etcd:v3.6.12",
			"registry.k8s.io/pause:3.10.1",
			"registry.k8s.io/kube-apiserver:v1.36.3",
			"ghcr.io/siderolabs/kubelet:v1.36.3",
		}

		// flags.Semver without a "v" prints the Kubernetes tag without it.
		printed := slices.Clone(want)
		printed[3], printed[4] = "registry.k8s.io/kube-apiserver:1.36.3", "ghcr.io/siderolabs/kubelet:1.36.3"

		if !slices.Equal(r.Images, want) || !slices.Equal(r.Printed, printed) {
			t.Errorf("derive\n images  %q\n printed %q\nwant\n images  %q\n printed %q", r.Images, r.Printed, want, printed)
		}
	})

	for _, tc := range []struct {
		name    string
		list    string
		image   string
		mach    string
		errHas  string
		notCons bool
	}{
		{name: "no default command", list: listGo110, image: strings.ReplaceAll(imageGo110, `"default"`, `"other"`), errHas: "0 commands"},
		{name: "unknown accessor", list: strings.ReplaceAll(listGo110, "Cluster().Etcd()", "Cluster().EtcdV2()"), image: imageGo110, errHas: "EtcdV2"},
		{name: "field List does not set", list: strings.ReplaceAll(listGo110, "images.Pause = DefaultSandboxImage", ""), image: imageGo110, errHas: "images.Pause"},
		{name: "missing constant", list: strings.ReplaceAll(listGo110, "constants.FlannelVersion", "constants.FlannelVersionV2"), image: imageGo110, errHas: "FlannelVersionV2"},
		{name: "not a constant", list: strings.ReplaceAll(listGo110, `"registry.k8s.io/pause:" + pauseVersion`, `"registry.k8s.io/pause:" + strings.ToLower(pauseVersion)`), image: imageGo110, notCons: true},
		{name: "self reference", list: strings.ReplaceAll(listGo110, `pauseVersion = "3.10"`, `pauseVersion = DefaultSandboxImage`), image: imageGo110, errHas: "refers to itself"},
		{name: "not a reference", list: strings.ReplaceAll(listGo110, `"registry.k8s.io/pause:" + pauseVersion`, `"pause"`), image: imageGo110, errHas: "fully qualified"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			talos := tree(t, map[string]string{"pkg/images/list.go": tc.list, "cmd/talosctl/cmd/talos/image.go": tc.image})

			_, err := derive(mach, talos)
			if err == nil {
				t.Fatal("derive succeeded")
			}

			if tc.notCons && !errors.Is(err, errNotConstant) {
				t.Errorf("error %v, want errNotConstant", err)
			}

			if !strings.Contains(err.Error(), tc.errHas) {
				t.Errorf("error %q does not name %q", err, tc.errHas)
			}
		})
	}
}

func TestDeriveVersionInfersAFinalReleaseOnly(t *testing.T) {
	mach := machineryTree(t, "")
	t110 := tree(t, map[string]string{"pkg/images/list.go": listGo110, "cmd/talosctl/cmd/talos/image.go": imageGo110})
	t113 := tree(t, map[string]string{"pkg/images/list.go": listGo113, "cmd/talosctl/cmd/talos/image.go": imageGo113})

	missing := module{Error: "403 Forbidden"}
	versions := []string{"v1.10.0-beta.0", "v1.10.0", "v1.10.1", "v1.10.2", "v1.10.3"}
	machinery := map[string]module{}

	for _, v := range versions {
		machinery[v] = module{Dir: mach}
	}

	// v1.10.1's own talos module is missing: v1.10.0 and v1.10.3 must agree.
	talos := map[string]module{"v1.10.0-beta.0": missing, "v1.10.0": {Dir: t110}, "v1.10.1": missing, "v1.10.2": missing, "v1.10.3": {Dir: t110}}

	e, err := deriveVersion("v1.10.2", machinery, talos, versions)
	if err != nil || e.layoutFrom != "v1.10.0" || len(e.row.Images) != 5 {
		t.Fatalf("deriveVersion(v1.10.2) = %+v, %v; want the v1.10.0 layout", e, err)
	}

	if _, err := deriveVersion("v1.10.0-beta.0", machinery, talos, versions); !errors.Is(err, errLeftOut) {
		t.Errorf("pre-release without its own talos module: %v, want errLeftOut", err)
	}

	talos["v1.10.3"] = module{Dir: t113}

	if _, err := deriveVersion("v1.10.2", machinery, talos, versions); err == nil || !strings.Contains(err.Error(), "differently") {
		t.Errorf("disagreeing layouts: %v, want an error", err)
	}
}

func TestCommentList(t *testing.T) {
	got := commentList([]string{"v1.11.0-alpha.0", "v1.11.0-alpha.1", "v1.11.0-alpha.3", "v1.11.0-beta.2", "v1.11.0-rc.0", "v1.12.0-rc.0"})

	for _, l := range strings.Split(got, "\n") {
		if len(l) > 78 || !strings.HasPrefix(l, "//") {
			t.Errorf("line %q", l)
		}
	}

	if !strings.HasSuffix(got, "v1.12.0-rc.0.") || commentList(nil) != "// none." {
		t.Errorf("commentList = %q", got)
	}
}
