package machineconfig

import (
	"errors"
	"strings"
	"testing"

	"github.com/siderolabs/talos/pkg/machinery/config/configloader"
)

// FuzzGenerate: whatever a client sends (the route passes its path and
// query through), Generate refuses it with ErrInvalid or writes a patch that
// Talos's loader reads strictly (up to 1.13, the pinned machinery's); never
// a panic, never another error.
func FuzzGenerate(f *testing.F) {
	f.Add("v1.13.0", "http://kiln.lan:8080", "", "", "", "", "", "", false)
	f.Add("1.12.0", "https://10.0.0.5", "legacy", "nocloud", "/dev/nvme0n1", "4GB", "kiln-demo", "quay.io,localhost:5000", true)
	f.Add("v1.14.1", "https://kiln.lan:8443", "documents", "metal", "/dev/disk/by-id/x", "2GiB", "talos/mirror", "factory.talos.dev", true)
	f.Add("v1.12.0-beta.0", "http://[::1]:80", "documents", "a-b", "/dev/sda", "none", "a__b", "Docker.IO", false)

	f.Fuzz(func(t *testing.T, version, kiln, form, platform, disk, volume, namespace, held string, cache bool) {
		v, err := ParseVersion(version)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseVersion(%q): %v is not ErrInvalid", version, err)
			}

			return
		}

		fm, err := ParseForm(form)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("ParseForm(%q): %v is not ErrInvalid", form, err)
			}

			return
		}

		opts := Options{
			Version:     v,
			Schematic:   "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba",
			Kiln:        Registry{URL: kiln},
			Namespace:   namespace,
			Platform:    platform,
			Form:        fm,
			InstallDisk: disk,
			ImageCache:  cache,
			CacheVolume: volume,
		}

		if held != "" {
			opts.Held = strings.Split(held, ",")
		}

		p, err := Generate(opts)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Generate: %v is not ErrInvalid", err)
			}

			return
		}

		if v.Has(ImageCacheDocument) {
			// Documents kiln's machinery (v1.13.9) does not know: each
			// version's own reads them (TestMachineryVersions).
			return
		}

		if _, err := configloader.NewFromBytes(p.YAML, configloader.WithAllowPatchDelete()); err != nil {
			t.Fatalf("Talos's loader refuses the patch: %v\n%s", err, p.YAML)
		}
	})
}
