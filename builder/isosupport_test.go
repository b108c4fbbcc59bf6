package builder

import (
	"errors"
	"testing"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
)

// TestSupportedISO: kiln builds every ISO Talos's imager makes without
// SecureBoot: sd-boot, dual-boot and GRUB-only, whichever way it is chosen.
func TestSupportedISO(t *testing.T) {
	for _, tc := range []struct {
		arch, version, bootloader string
		ok                        bool
	}{
		{"amd64", "v1.13.0", "", true},          // dual-boot by default
		{"amd64", "v1.13.0", "dual-boot", true}, //
		{"amd64", "v1.13.0", "sd-boot", true},   //
		{"amd64", "v1.13.0", "grub", true},      // GRUB-only ISO
		{"arm64", "v1.13.0", "", true},          // sd-boot
		{"arm64", "v1.13.0", "dual-boot", true}, // as Talos: i386-pc GRUB beside the arm64 UKI
		{"amd64", "v1.11.0", "grub", true},      // 1.10 and 1.11: always dual-boot
		{"arm64", "v1.10.0", "", true},          //
		{"amd64", "v1.9.5", "", true},           // GRUB-only before 1.10
		{"amd64", "v1.9.5", "sd-boot", true},    //
		{"arm64", "v1.9.5", "", true},           //
		{"arm64", "v1.13.0", "grub", true},      //
	} {
		yaml := "customization: {}"
		if tc.bootloader != "" {
			yaml = "customization: {bootloader: " + tc.bootloader + "}"
		}

		sc, err := schematic.Parse([]byte(yaml))
		if err != nil {
			t.Fatal(err)
		}

		v, err := release.ParseVersion(tc.version)
		if err != nil {
			t.Fatal(err)
		}

		err = supportedSchematic(sc, Output{Kind: KindISO, Platform: "metal", Arch: tc.arch}, v)
		if (err == nil) != tc.ok || (err != nil && !errors.Is(err, ErrUnsupported)) {
			t.Errorf("%s %s bootloader %q: %v, want ok=%v (or a 501)", tc.arch, tc.version, tc.bootloader, err, tc.ok)
		}
	}
}
