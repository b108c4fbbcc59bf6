package cmdline_test

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/cmdline"
)

const emptySchematic = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"

// Expected scripts as the public factory's integration test
// (internal/integration/pxe_test.go) computes them for v1.5.0 and v1.11.0.
var pxeRef = map[string]string{
	"v1.5.0/metal-amd64":             "#!ipxe\n\nimgfree\nkernel http://pxe.example:8080/image/" + emptySchematic + "/v1.5.0/kernel-amd64 talos.platform=metal console=ttyS0 console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512\ninitrd http://pxe.example:8080/image/" + emptySchematic + "/v1.5.0/initramfs-amd64.xz\nboot\n",
	"v1.11.0/metal-amd64":            "#!ipxe\n\nimgfree\nkernel http://pxe.example:8080/image/" + emptySchematic + "/v1.11.0/kernel-amd64 talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1\ninitrd http://pxe.example:8080/image/" + emptySchematic + "/v1.11.0/initramfs-amd64.xz\nboot\n",
	"v1.5.0/metal-amd64-secureboot":  "#!ipxe\n\nimgfree\nkernel http://pxe.example:8080/image/" + emptySchematic + "/v1.5.0/metal-amd64-secureboot-uki.efi talos.platform=metal console=ttyS0 console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512 lockdown=confidentiality\nboot\n",
	"v1.11.0/metal-amd64-secureboot": "#!ipxe\n\nimgfree\nkernel http://pxe.example:8080/image/" + emptySchematic + "/v1.11.0/metal-amd64-secureboot-uki.efi talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1 lockdown=confidentiality\nboot\n",
}

// archAlias is what a caller (the PXE route) does before calling Build and
// PXEScript: iPXE's ${buildarch} values map to Talos architectures.
func archAlias(arch string) string {
	switch arch {
	case "x86_64", "i386":
		return "amd64"
	case "arm64", "aarch64":
		return "arm64"
	default:
		return arch
	}
}

func TestPXEScript(t *testing.T) {
	for _, tc := range []struct {
		name, version, path string
		secureBoot          bool
	}{
		{"pxe-metal-amd64-1.5", "v1.5.0", "metal-amd64", false},
		{"pxe-metal-amd64-1.11", "v1.11.0", "metal-amd64", false},
		{"pxe-metal-x86_64-1.11", "v1.11.0", "metal-x86_64", false},
		{"pxe-metal-amd64-secureboot-1.5", "v1.5.0", "metal-amd64-secureboot", true},
		{"pxe-metal-amd64-secureboot-1.11", "v1.11.0", "metal-amd64-secureboot", true},
		{"pxe-metal-amd64-1.13", "1.13.0", "metal-amd64", false},
		{"pxe-metal-arm64-1.14", "v1.14.0", "metal-arm64", false},
		{"pxe-metal-amd64-secureboot-1.13", "v1.13.0", "metal-amd64-secureboot", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			parts := strings.Split(strings.TrimSuffix(tc.path, "-secureboot"), "-")
			platform, arch := parts[0], archAlias(parts[1])

			line, err := cmdline.Build(cmdline.Options{Platform: platform, Arch: arch, TalosVersion: tc.version, SecureBoot: tc.secureBoot})
			if err != nil {
				t.Fatal(err)
			}

			got, err := cmdline.PXEScript(cmdline.PXEOptions{
				BaseURL:     "http://pxe.example:8080",
				SchematicID: emptySchematic,
				Version:     tc.version,
				Platform:    platform,
				Arch:        arch,
				Cmdline:     line,
				SecureBoot:  tc.secureBoot,
			})
			if err != nil {
				t.Fatal(err)
			}

			if want, ok := pxeRef[tc.version+"/"+strings.Replace(tc.path, "x86_64", "amd64", 1)]; ok && got != want {
				t.Errorf("PXEScript:\ngot  %q\nwant %q", got, want)
			}

			golden(t, tc.name, got)
		})
	}
}

func TestPXEScriptURL(t *testing.T) {
	got, err := cmdline.PXEScript(cmdline.PXEOptions{
		BaseURL: "https://user:pass@factory.example/prefix/", SchematicID: "abc", Version: "v1.13.0",
		Platform: "metal", Arch: "arm64", Cmdline: "talos.platform=metal",
	})
	if err != nil {
		t.Fatal(err)
	}

	want := "#!ipxe\n\nimgfree\nkernel https://user:pass@factory.example/prefix/image/abc/v1.13.0/kernel-arm64 talos.platform=metal\n" +
		"initrd https://user:pass@factory.example/prefix/image/abc/v1.13.0/initramfs-arm64.xz\nboot\n"
	if got != want {
		t.Errorf("PXEScript:\ngot  %q\nwant %q", got, want)
	}

	if _, err := cmdline.PXEScript(cmdline.PXEOptions{BaseURL: "http://x", Version: "v1.13.0", Platform: "metal", Arch: "amd64"}); err == nil {
		t.Error("PXEScript(no schematic) = nil error")
	}
}
