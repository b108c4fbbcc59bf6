package builder

import (
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
)

// TestUKIContents: which command line and which profiles each output's UKI
// gets, per Talos version (pkg/imager buildUKI, quirks SupportsUKIProfiles;
// image-factory EnhanceFromSchematic for what reaches the command line).
func TestUKIContents(t *testing.T) {
	sc, err := schematic.Parse([]byte(`customization:
  extraKernelArgs: [nolapic, nomodeset]
  meta:
    - key: 12
      value: kiln
`))
	if err != nil {
		t.Fatal(err)
	}

	const (
		base113 = "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on selinux=1 module.sig_enforce=1 proc_mem.force_override=never"
		base19  = "talos.platform=metal console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512"
		meta    = " talos.environment=INSTALLER_META_BASE64=MHhjPWtpbG4="
		extra   = " nolapic nomodeset"
		halt    = " talos.halt_if_installed=1"
	)

	iso113 := strings.Replace(base113, "console=tty0", "console=tty0"+halt, 1) + meta + extra
	iso19 := strings.Replace(base19, "console=tty0", "console=tty0"+halt, 1) + meta + extra

	for _, tc := range []struct {
		kind     Kind
		version  string
		line     string
		profiles []string // .profile text, then its .cmdline ("" for none), in pairs
	}{
		{KindISO, "v1.13.0", iso113, []string{
			"ID=main", "",
			"ID=reset\nTITLE=Reset system disk", iso113 + " talos.experimental.wipe=system",
		}},
		{KindDisk, "v1.13.0", base113 + extra, []string{
			"ID=main", "",
			"ID=reset-maintenance\nTITLE=Reset to maintenance mode", base113 + extra + " talos.experimental.wipe=system:EPHEMERAL,STATE",
		}},
		// The installer's UKI: the installer's line (no META) and the
		// disk image's reset-maintenance profile.
		{KindInstaller, "v1.13.0", base113 + extra, []string{
			"ID=main", "",
			"ID=reset-maintenance\nTITLE=Reset to maintenance mode", base113 + extra + " talos.experimental.wipe=system:EPHEMERAL,STATE",
		}},
		// A UKI download: main profile only, the installer's line (no META).
		{KindUKI, "v1.13.0", base113 + extra, []string{"ID=main", ""}},
		{KindUKI, "v1.10.0", strings.Replace(base19, "ima_hash=sha512", "ima_hash=sha512 selinux=1", 1) + extra, []string{"ID=main", ""}},
		// Before 1.10: no profiles at all, and a UKI download gets no extra
		// args (only SecureBoot UKIs do, which kiln does not build).
		{KindISO, "v1.9.4", iso19, nil},
		{KindDisk, "v1.9.4", base19 + extra, nil},
		{KindUKI, "v1.9.4", base19, nil},
	} {
		t.Run(string(tc.kind)+"-"+tc.version, func(t *testing.T) {
			p := &Plan{Version: release.MustParseVersion(tc.version), Output: Output{Kind: tc.kind, Platform: "metal", Arch: "amd64"}, schematic: sc}

			line, profiles, err := ukiContents(p)
			if err != nil {
				t.Fatal(err)
			}

			if line != tc.line {
				t.Errorf("main cmdline:\ngot  %q\nwant %q", line, tc.line)
			}

			var got []string
			for _, pr := range profiles {
				got = append(got, pr.Profile, pr.Cmdline)
			}

			if strings.Join(got, "|") != strings.Join(tc.profiles, "|") {
				t.Errorf("profiles:\ngot  %q\nwant %q", got, tc.profiles)
			}
		})
	}
}
