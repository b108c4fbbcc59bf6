package builder

import (
	"testing"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
)

// TestDiskSizes: the disk and partition sizes Talos's imager gives a metal
// image per version and boot loader (pkg/imager/profile testdata:
// metal-amd64 ≥ 1.11 4453302272, metal-amd64 1.10 2356150272,
// metal-arm64 ≥ 1.11 2355101696; quirks.PartitionSizes).
func TestDiskSizes(t *testing.T) {
	const mib = 1 << 20

	for _, tc := range []struct {
		version             string
		bl                  schematic.Bootloader
		size, efi, bootSize int64
	}{
		{"v1.13.0", schematic.BootloaderDualBoot, 4453302272, 2101 * mib, 2000 * mib},
		{"v1.11.0", schematic.BootloaderDualBoot, 4453302272, 2101 * mib, 2000 * mib},
		{"v1.10.0", schematic.BootloaderDualBoot, 2356150272, 1101 * mib, 1000 * mib},
		{"v1.13.0", schematic.BootloaderSDBoot, 2355101696, 2101 * mib, 2000 * mib},
		{"v1.10.0", schematic.BootloaderSDBoot, 1246 * mib, 1101 * mib, 1000 * mib},
		{"v1.13.0", schematic.BootloaderGrub, 2246 * mib, 100 * mib, 2000 * mib},
		{"v1.9.0", schematic.BootloaderGrub, 1246 * mib, 100 * mib, 1000 * mib},
	} {
		size, efi, boot := diskSizes(release.MustParseVersion(tc.version), tc.bl)
		if size != tc.size || efi != tc.efi || boot != tc.bootSize {
			t.Errorf("%s %s: disk %d, EFI %d, BOOT %d; want %d, %d, %d", tc.version, tc.bl, size, efi, boot, tc.size, tc.efi, tc.bootSize)
		}
	}
}
