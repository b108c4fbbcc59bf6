package release

import (
	"maps"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// factoryAliases is image-factory's extensionNameAlias (internal/profile),
// all eleven of its cases.
var factoryAliases = map[string]string{
	"siderolabs/v4l-uvc":                        "siderolabs/v4l-uvc-drivers",
	"siderolabs/usb-modem":                      "siderolabs/usb-modem-drivers",
	"siderolabs/gasket":                         "siderolabs/gasket-driver",
	"siderolabs/talos-vmtoolsd":                 "siderolabs/vmtoolsd-guest-agent",
	"siderolabs/xe-guest-utilities":             "siderolabs/xen-guest-agent",
	"siderolabs/nvidia-container-toolkit":       "siderolabs/nvidia-container-toolkit-lts",
	"siderolabs/nvidia-open-gpu-kernel-modules": "siderolabs/nvidia-open-gpu-kernel-modules-lts",
	"siderolabs/nonfree-kmod-nvidia":            "siderolabs/nonfree-kmod-nvidia-lts",
	"siderolabs/nvidia-fabricmanager":           "siderolabs/nvidia-fabric-manager-lts",
	"siderolabs/i915-ucode":                     "siderolabs/i915",
	"siderolabs/amdgpu-firmware":                "siderolabs/amdgpu",
}

func catalogOf(t *testing.T, names ...string) []Extension {
	t.Helper()

	var exts []Extension

	for _, n := range names {
		tag, err := name.NewTag("ghcr.io/" + n + ":1.0")
		if err != nil {
			t.Fatal(err)
		}

		exts = append(exts, Extension{Ref: tag, Digest: "sha256:" + n})
	}

	return exts
}

func TestExtensionAliases(t *testing.T) {
	if !maps.Equal(extensionAliases, factoryAliases) {
		t.Errorf("extensionAliases = %v\nwant the factory's %v", extensionAliases, factoryAliases)
	}

	var current []string
	for _, n := range factoryAliases {
		current = append(current, n)
	}

	catalog := catalogOf(t, append(current, "siderolabs/gvisor")...)

	for old, renamed := range factoryAliases {
		t.Run(old, func(t *testing.T) {
			e, ok := FindExtension(catalog, old)
			if !ok || e.Name() != renamed {
				t.Errorf("FindExtension(%s) = %s, %v; want %s", old, e.Name(), ok, renamed)
			}

			// The current name resolves to itself.
			if e, ok := FindExtension(catalog, renamed); !ok || e.Name() != renamed {
				t.Errorf("FindExtension(%s) = %s, %v", renamed, e.Name(), ok)
			}

			// A catalog that still has the old name gives the old image,
			// as the factory tries the name before its alias.
			both := catalogOf(t, renamed, old)
			if e, ok := FindExtension(both, old); !ok || e.Name() != old {
				t.Errorf("with both in the catalog, FindExtension(%s) = %s, %v", old, e.Name(), ok)
			}

			// An alias does not help when the catalog lacks the new name.
			if _, ok := FindExtension(catalogOf(t, "siderolabs/gvisor"), old); ok {
				t.Errorf("FindExtension(%s) found something in a catalog without %s", old, renamed)
			}
		})
	}

	for _, unknown := range []string{"i915-ucode", "siderolabs/i915-ucode-lts", "ghcr.io/siderolabs/i915-ucode", ""} {
		if e, ok := FindExtension(catalog, unknown); ok {
			t.Errorf("FindExtension(%q) = %s, want not found (the factory has no such alias)", unknown, e.Name())
		}
	}
}
