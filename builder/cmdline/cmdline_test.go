package cmdline_test

import (
	"errors"
	"flag"
	"strings"
	"testing"

	talosmeta "github.com/siderolabs/talos/pkg/machinery/meta"

	"github.com/kiln-dev/kiln/builder/cmdline"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func golden(t *testing.T, name, got string) {
	t.Helper()
	testfixture.Golden(t, name, got, *update)
}

// Exact strings from the Talos imager tests and the reference (§7.1); these
// do not come from golden files, so -update cannot hide a regression.
const (
	ref113amd64 = "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1 module.sig_enforce=1 proc_mem.force_override=never"
	ref114amd64 = "talos.platform=metal console=tty0 slab_nomerge pti=on consoleblank=0 printk.devkmsg=on selinux=1 module.sig_enforce=1 proc_mem.force_override=never"
	// Talos pkg/imager/imager_test.go vectors for older releases.
	ref17amd64  = "talos.platform=metal console=ttyS0 console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512"
	ref110arm64 = "talos.platform=metal console=ttyAMA0 console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512 selinux=1"
)

var (
	ref113arm64 = strings.Replace(ref113amd64, "console=tty0", "console=ttyAMA0 console=tty0", 1)
	ref114arm64 = strings.Replace(ref114amd64, "console=tty0", "console=ttyAMA0 console=tty0", 1)
	ref112amd64 = strings.TrimSuffix(ref113amd64, " proc_mem.force_override=never")
	ref112arm64 = strings.TrimSuffix(ref113arm64, " proc_mem.force_override=never")
)

func iso(s string) string {
	return strings.Replace(s, "console=tty0", "console=tty0 talos.halt_if_installed=1", 1)
}

var metaValues = []cmdline.MetaValue{
	{Key: talosmeta.UserReserved1, Value: "hello"},
	{Key: talosmeta.MetalNetworkPlatformConfig, Value: "addresses: []"},
}

func TestBuild(t *testing.T) {
	metal := func(arch, version string) cmdline.Options {
		return cmdline.Options{Platform: "metal", Arch: arch, TalosVersion: release.MustParseVersion(version)}
	}

	with := func(o cmdline.Options, f func(*cmdline.Options)) cmdline.Options {
		f(&o)

		return o
	}

	for _, tc := range []struct {
		name string
		opts cmdline.Options
		ref  string // exact expected string from the reference, if any
	}{
		{"metal-amd64-1.12", metal("amd64", "v1.12.0"), ref112amd64},
		{"metal-arm64-1.12", metal("arm64", "v1.12.0"), ref112arm64},
		{"metal-amd64-1.13", metal("amd64", "v1.13.0"), ref113amd64},
		{"metal-arm64-1.13", metal("arm64", "v1.13.0"), ref113arm64},
		{"metal-amd64-1.14", metal("amd64", "v1.14.0"), ref114amd64},
		{"metal-arm64-1.14", metal("arm64", "v1.14.0"), ref114arm64},
		{"metal-amd64-1.14-beta", metal("amd64", "1.14.0-beta.1"), ref114amd64},
		{"metal-amd64-1.7", metal("amd64", "v1.7.0"), ref17amd64},
		{"metal-arm64-1.10", metal("arm64", "v1.10.0"), ref110arm64},
		{"iso-metal-amd64-1.12", with(metal("amd64", "v1.12.0"), func(o *cmdline.Options) { o.ISO = true }), iso(ref112amd64)},
		{"iso-metal-amd64-1.13", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) { o.ISO = true }), iso(ref113amd64)},
		{"iso-metal-arm64-1.13", with(metal("arm64", "v1.13.0"), func(o *cmdline.Options) { o.ISO = true }), iso(ref113arm64)},
		{"iso-metal-amd64-1.14", with(metal("amd64", "v1.14.0"), func(o *cmdline.Options) { o.ISO = true }), iso(ref114amd64)},
		{"iso-metal-arm64-1.14", with(metal("arm64", "v1.14.0"), func(o *cmdline.Options) { o.ISO = true }), iso(ref114arm64)},
		{"iso-metal-amd64-1.7", with(metal("amd64", "v1.7.0"), func(o *cmdline.Options) { o.ISO = true }), ref17amd64},
		{"secureboot-metal-amd64-1.13", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) { o.SecureBoot = true }),
			ref113amd64 + " lockdown=confidentiality"},
		{"secureboot-metal-amd64-1.14", with(metal("amd64", "v1.14.0"), func(o *cmdline.Options) { o.SecureBoot = true }), ref114amd64},
		{"extra-override-console", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) {
			o.ExtraArgs = []string{"console=ttyS0,115200", "console=tty1"}
		}), strings.Replace(ref113amd64, "console=tty0", "console=ttyS0,115200 console=tty1", 1)},
		{"extra-override-platform", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) {
			o.ExtraArgs = []string{"talos.platform=nocloud"}
		}), strings.Replace(ref113amd64, "talos.platform=metal", "talos.platform=nocloud", 1)},
		{"extra-delete-key", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) {
			o.ExtraArgs = []string{"-selinux", "-slab_nomerge", "-console"}
		}), strings.NewReplacer(" selinux=1", "", " slab_nomerge", "", " console=tty0", "").Replace(ref113amd64)},
		{"extra-delete-value", with(metal("arm64", "v1.13.0"), func(o *cmdline.Options) {
			o.ExtraArgs = []string{"-console=ttyAMA0", "-pti=off"}
		}), ref113amd64},
		{"extra-append-duplicates", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) {
			o.ExtraArgs = []string{"selinux=0", "net.ifnames=0", "ip=dhcp", "ip=eth1:dhcp", "quiet", "foo="}
		}), strings.Replace(ref113amd64, "selinux=1", "selinux=1 selinux=0", 1) + " net.ifnames=0 ip=dhcp ip=eth1:dhcp quiet foo"},
		{"extra-iso-delete-halt", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) {
			o.ISO = true
			o.ExtraArgs = []string{"-talos.halt_if_installed"}
		}), ref113amd64},
		{"meta-included", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) {
			o.ISO = true
			o.Meta = metaValues
			o.IncludeMeta = true
			o.ExtraArgs = []string{"talos.dashboard.disabled=1"}
		}), iso(ref113amd64) + " talos.environment=INSTALLER_META_BASE64=MHhjPWhlbGxvOzB4YT1hZGRyZXNzZXM6IFtd talos.dashboard.disabled=1"},
		{"meta-not-included", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) {
			o.Meta = metaValues
		}), ref113amd64},
		{"meta-extra-environment", with(metal("amd64", "v1.13.0"), func(o *cmdline.Options) {
			o.Meta = metaValues
			o.IncludeMeta = true
			o.ExtraArgs = []string{"talos.environment=http_proxy=http://proxy:3128"}
		}), ref113amd64 + " talos.environment=INSTALLER_META_BASE64=MHhjPWhlbGxvOzB4YT1hZGRyZXNzZXM6IFtd talos.environment=http_proxy=http://proxy:3128"},
		{"overlay-args", with(metal("arm64", "v1.13.0"), func(o *cmdline.Options) {
			o.OverlayArgs = []string{"console=tty0", "console=ttyS1,115200", "sysctl.kernel.kexec_load_disabled=1"}
		}), strings.Replace(ref113arm64, "console=ttyAMA0 console=tty0", "console=tty0 console=ttyS1,115200 sysctl.kernel.kexec_load_disabled=1", 1)},
		{"equinix-amd64-1.11", cmdline.Options{Platform: "equinixMetal", Arch: "amd64", TalosVersion: release.MustParseVersion("v1.11.0"), PlatformArgs: []string{"console=ttyS1,115200n8"}},
			"talos.platform=equinixMetal console=ttyS1,115200n8 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cmdline.Build(tc.opts)
			if err != nil {
				t.Fatalf("Build = %v", err)
			}

			if tc.ref != "" && got != tc.ref {
				t.Errorf("Build(%s):\ngot  %q\nwant %q", tc.name, got, tc.ref)
			}

			golden(t, tc.name, got)
		})
	}
}

func TestBuildErrors(t *testing.T) {
	for name, o := range map[string]cmdline.Options{
		"unknown platform": {Platform: "aws", Arch: "amd64", TalosVersion: release.MustParseVersion("1.13.0")},
		"unknown arch":     {Platform: "metal", Arch: "riscv64", TalosVersion: release.MustParseVersion("1.13.0")},
		"empty platform":   {Arch: "amd64", TalosVersion: release.MustParseVersion("1.13.0")},
	} {
		if _, err := cmdline.Build(o); !errors.Is(err, cmdline.ErrUnsupported) {
			t.Errorf("%s: Build = %v, want ErrUnsupported", name, err)
		}
	}

	if _, err := cmdline.Build(cmdline.Options{Platform: "metal", Arch: "amd64", TalosVersion: release.Version{}}); err == nil {
		t.Error("Build(version latest) = nil error")
	}

	_, err := cmdline.Build(cmdline.Options{
		Platform: "metal", Arch: "amd64", TalosVersion: release.MustParseVersion("1.13.0"),
		IncludeMeta: true, Meta: []cmdline.MetaValue{{Key: 0, Value: "x"}},
	})
	if err == nil {
		t.Error("Build(META key 0) = nil error")
	}
}
