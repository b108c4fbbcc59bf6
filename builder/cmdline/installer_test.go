package cmdline_test

import (
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"

	"github.com/kiln-dev/kiln/builder/cmdline"
	"github.com/kiln-dev/kiln/release"
)

// factoryInstallerUKI is the command line image-factory's integration tests
// (internal/integration/download_test.go, "installer image" and "installer
// extra args") expect in the UKI of installer-<arch>.tar and
// metal-installer-<arch>.tar, derived from the version as those tests do.
// They run only for versions with the unified installer (>= 1.10).
func factoryInstallerUKI(version, arch string, extra bool) string {
	q := quirks.New(version)

	var want string

	switch arch {
	case "amd64":
		if extra {
			// The extra-args test starts from "console=tty0 console=ttyS0"
			// and drops ttyS0 where the metal platform has none.
			want = "talos.platform=metal console=tty0 console=ttyS0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512"
			if !q.SupportsMetalPlatformConsoleTTYS0() {
				want = strings.ReplaceAll(want, " console=ttyS0", "")
			}

			if q.SupportsSELinux() {
				want += " selinux=1"
			}
		} else {
			want = "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512 selinux=1"
		}
	case "arm64":
		want = "talos.platform=metal console=ttyAMA0 console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512 selinux=1"
	}

	if !q.SupportsIMA() {
		want = strings.ReplaceAll(want, " ima_template=ima-ng ima_appraise=fix ima_hash=sha512", "")
	}

	if q.SupportsDisablingModuleSignatureVerification() {
		want += " module.sig_enforce=1"
	}

	if q.ProcMemOverrideNever() {
		want += " proc_mem.force_override=never"
	}

	if extra {
		want += " nolapic nomodeset"
	}

	return want
}

func TestForInstallerFactoryVectors(t *testing.T) {
	// The factory's own test versions with a unified installer, and the
	// latest of each minor kiln serves.
	for _, version := range []string{"v1.10.2", "v1.11.0", "v1.12.0", "v1.13.0", "v1.13.9"} {
		for _, tc := range []struct {
			arch  string
			extra bool
		}{{"amd64", false}, {"arm64", false}, {"amd64", true}} {
			o := cmdline.Options{Platform: "metal", Arch: tc.arch, TalosVersion: release.MustParseVersion(version)}
			if tc.extra {
				o.ExtraArgs = []string{"nolapic", "nomodeset"}
			}

			got, err := cmdline.ForInstaller(o)
			if err != nil {
				t.Fatal(err)
			}

			if want := factoryInstallerUKI(version, tc.arch, tc.extra); got != want {
				t.Errorf("ForInstaller(%s %s extra=%v):\ngot  %q\nwant %q", version, tc.arch, tc.extra, got, want)
			}

			if strings.Contains(got, "ttyS0") {
				t.Errorf("ForInstaller(%s %s) carries console=ttyS0: %q", version, tc.arch, got)
			}
		}
	}
}

func TestForInstaller(t *testing.T) {
	metal := func(arch, version string, f func(*cmdline.Options)) cmdline.Options {
		o := cmdline.Options{Platform: "metal", Arch: arch, TalosVersion: release.MustParseVersion(version)}
		if f != nil {
			f(&o)
		}

		return o
	}

	withEverything := func(o *cmdline.Options) {
		o.ISO = true
		o.Meta = metaValues
		o.IncludeMeta = true
		o.ExtraArgs = []string{"nolapic", "nomodeset"}
	}

	for _, tc := range []struct {
		name string
		opts cmdline.Options
		ref  string // exact expected string, if it is known without the golden file
	}{
		// META, the ISO's halt argument and (from 1.10) extra args: only
		// the extra args stay.
		{"installer-metal-amd64-1.13", metal("amd64", "v1.13.0", withEverything), ref113amd64 + " nolapic nomodeset"},
		{"installer-metal-arm64-1.14", metal("arm64", "v1.14.0", withEverything), ref114arm64 + " nolapic nomodeset"},
		{"installer-metal-amd64-1.10", metal("amd64", "v1.10.0", withEverything),
			strings.Replace(ref110arm64, "console=ttyAMA0 console=tty0", "console=tty0", 1) + " nolapic nomodeset"},
		// Before 1.10 only a SecureBoot installer has a UKI; without
		// SecureBoot the factory hands no extra args to it.
		{"installer-metal-amd64-1.9", metal("amd64", "v1.9.4", withEverything),
			"talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512"},
		{"installer-secureboot-metal-amd64-1.9", metal("amd64", "v1.9.4", func(o *cmdline.Options) {
			withEverything(o)
			o.SecureBoot = true
		}), "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512 lockdown=confidentiality nolapic nomodeset"},
		// Before 1.8 the metal platform itself has console=ttyS0, on the
		// installer's UKI as on cmdline-metal-amd64-secureboot.
		{"installer-secureboot-metal-amd64-1.7", metal("amd64", "v1.7.0", func(o *cmdline.Options) { o.SecureBoot = true }),
			ref17amd64 + " lockdown=confidentiality"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cmdline.ForInstaller(tc.opts)
			if err != nil {
				t.Fatalf("ForInstaller = %v", err)
			}

			if tc.ref != "" && got != tc.ref {
				t.Errorf("ForInstaller(%s):\ngot  %q\nwant %q", tc.name, got, tc.ref)
			}

			if strings.Contains(got, "INSTALLER_META_BASE64") || strings.Contains(got, "halt_if_installed") {
				t.Errorf("ForInstaller(%s) = %q: META or the ISO's halt argument", tc.name, got)
			}

			golden(t, tc.name, got)
		})
	}

	// The same line as cmdline-metal-<arch> of the version when there is
	// nothing to drop.
	for _, v := range []string{"v1.7.0", "v1.10.0", "v1.13.0", "v1.14.0"} {
		o := cmdline.Options{Platform: "metal", Arch: "amd64", TalosVersion: release.MustParseVersion(v), SecureBoot: true}

		a, errA := cmdline.ForInstaller(o)
		b, errB := cmdline.Build(o)

		if errA != nil || errB != nil || a != b {
			t.Errorf("%s: ForInstaller %q (%v), Build %q (%v)", v, a, errA, b, errB)
		}
	}
}

func TestForInstallerErrors(t *testing.T) {
	if _, err := cmdline.ForInstaller(cmdline.Options{Platform: "metal", Arch: "amd64", TalosVersion: release.Version{}}); err == nil {
		t.Error("ForInstaller(version latest) = nil error")
	}

	if _, err := cmdline.ForInstaller(cmdline.Options{Platform: "metal", Arch: "riscv64", TalosVersion: release.MustParseVersion("v1.13.0")}); err == nil {
		t.Error("ForInstaller(riscv64) = nil error")
	}
}
