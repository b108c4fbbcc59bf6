package builder

import (
	"testing"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
)

func TestSelectBootloader(t *testing.T) {
	const (
		none = schematic.BootloaderNone
		sd   = schematic.BootloaderSDBoot
		grub = schematic.BootloaderGrub
		dual = schematic.BootloaderDualBoot
	)

	for _, tc := range []struct {
		kind    Kind
		arch    string
		version string
		want    schematic.Bootloader
		sb      bool
		out     schematic.Bootloader
	}{
		{KindISO, "amd64", "v1.13.0", none, false, dual},
		{KindISO, "arm64", "v1.13.0", none, false, sd},
		{KindISO, "amd64", "v1.12.0", grub, false, grub},
		{KindISO, "amd64", "v1.12.0", sd, false, sd},
		{KindISO, "amd64", "v1.11.3", sd, false, dual},
		{KindISO, "arm64", "v1.10.0", none, false, dual},
		{KindISO, "amd64", "v1.9.5", none, false, grub},
		{KindISO, "amd64", "v1.9.5", sd, false, grub},
		{KindISO, "amd64", "v1.13.0", grub, true, sd},
		{KindISO, "amd64", "v1.9.5", none, true, sd},
		{KindDisk, "amd64", "v1.13.0", none, false, dual},
		{KindDisk, "arm64", "v1.13.0", none, false, sd},
		{KindDisk, "amd64", "v1.10.0", none, false, dual},
		{KindDisk, "amd64", "v1.11.0", sd, false, sd},
		{KindDisk, "amd64", "v1.9.5", none, false, grub},
		{KindDisk, "amd64", "v1.9.5", sd, false, sd},
		{KindDisk, "arm64", "v1.9.5", none, false, grub},
		{KindDisk, "amd64", "v1.13.0", grub, false, grub},
		{KindDisk, "amd64", "v1.13.0", grub, true, sd},
	} {
		v, err := release.ParseVersion(tc.version)
		if err != nil {
			t.Fatal(err)
		}

		if got := selectBootloader(tc.kind, tc.arch, v, tc.want, tc.sb); got != tc.out {
			t.Errorf("%s %s %s want=%q secureboot=%v: %q, Talos gives %q", tc.kind, tc.arch, tc.version, tc.want, tc.sb, got, tc.out)
		}
	}
}
