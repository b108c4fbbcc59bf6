package uki_test

import (
	"bytes"
	"debug/pe"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/cmdline"
	"github.com/kiln-dev/kiln/builder/uki"
	"github.com/kiln-dev/kiln/release"
)

func TestTalosProfiles(t *testing.T) {
	const line = "talos.platform=metal console=tty0"

	for _, tc := range []struct {
		version string
		reset   uki.Reset
		want    []uki.Profile
	}{
		// Talos pkg/imager buildUKI and internal/pkg/uki generateProfiles,
		// unchanged from v1.10.0 to v1.14.1.
		{"v1.13.0", uki.NoReset, []uki.Profile{{Profile: "ID=main"}}},
		{"v1.13.0", uki.ResetSystemDisk, []uki.Profile{
			{Profile: "ID=main"},
			{Profile: "ID=reset\nTITLE=Reset system disk", Cmdline: line + " talos.experimental.wipe=system"},
		}},
		{"1.10.0", uki.ResetToMaintenance, []uki.Profile{
			{Profile: "ID=main"},
			{Profile: "ID=reset-maintenance\nTITLE=Reset to maintenance mode", Cmdline: line + " talos.experimental.wipe=system:EPHEMERAL,STATE"},
		}},
		{"v1.14.0-beta.1", uki.ResetToMaintenance, []uki.Profile{
			{Profile: "ID=main"},
			{Profile: "ID=reset-maintenance\nTITLE=Reset to maintenance mode", Cmdline: line + " talos.experimental.wipe=system:EPHEMERAL,STATE"},
		}},
		// quirks ignores pre-release parts: 1.10.0-alpha.0 counts as 1.10.0.
		{"v1.10.0-alpha.0", uki.NoReset, []uki.Profile{{Profile: "ID=main"}}},
		{"v1.9.6", uki.ResetSystemDisk, nil},
		{"v1.5.0", uki.ResetToMaintenance, nil},
	} {
		got, err := uki.TalosProfiles(release.MustParseVersion(tc.version), line, tc.reset)
		if err != nil {
			t.Fatalf("TalosProfiles(%s, %d) = %v", tc.version, tc.reset, err)
		}

		if len(got) != len(tc.want) {
			t.Fatalf("TalosProfiles(%s, %d) = %q, want %q", tc.version, tc.reset, got, tc.want)
		}

		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("TalosProfiles(%s, %d)[%d] = %q, want %q", tc.version, tc.reset, i, got[i], tc.want[i])
			}
		}
	}

	for _, bad := range []struct {
		version release.Version
		reset   uki.Reset
	}{{release.Version{}, uki.NoReset}, {release.MustParseVersion("v1.13.0"), uki.Reset(7)}} {
		if _, err := uki.TalosProfiles(bad.version, line, bad.reset); !errors.Is(err, uki.ErrInput) {
			t.Errorf("TalosProfiles(%q, %d) = %v, want ErrInput", bad.version, bad.reset, err)
		}
	}
}

// stubProfile is what systemd-stub (>= 257, src/boot/pe.c
// pe_locate_profile_sections) makes of profile n of a UKI: the sections
// before the first .profile are the base, and those after the n-th .profile
// up to the next one replace base sections of the same name.
func stubProfile(t *testing.T, f *pe.File, n int) map[string]string {
	t.Helper()

	read := func(s *pe.Section) string {
		b := make([]byte, s.VirtualSize)
		if _, err := s.ReadAt(b, 0); err != nil {
			t.Fatal(err)
		}

		return string(b)
	}

	base, prof := map[string]string{}, map[string]string{}
	seen := -1

	for _, s := range f.Sections {
		if s.Name == ".profile" {
			seen++
		}

		switch {
		case seen < 0:
			base[s.Name] = read(s)
		case seen == n:
			prof[s.Name] = read(s)
		}
	}

	if seen < n {
		return nil
	}

	for k, v := range prof {
		base[k] = v
	}

	return base
}

// TestAssembleTalosProfiles assembles the Debian stub with Talos's
// profiles for an ISO and reads the result as systemd-stub and objdump do:
// sections in Talos's order, each profile's command line where the stub
// looks for it.
func TestAssembleTalosProfiles(t *testing.T) {
	need(t, debianStub)

	stub, err := os.Open(debianStub)
	if err != nil {
		t.Fatal(err)
	}
	defer stub.Close()

	line, err := cmdline.Build(cmdline.Options{Platform: "metal", Arch: "amd64", TalosVersion: release.MustParseVersion("v1.13.0"), ISO: true})
	if err != nil {
		t.Fatal(err)
	}

	profiles, err := uki.TalosProfiles(release.MustParseVersion("v1.13.0"), line, uki.ResetSystemDisk)
	if err != nil {
		t.Fatal(err)
	}

	osrel, err := uki.OSRelease("Talos", "v1.13.0")
	if err != nil {
		t.Fatal(err)
	}

	linux, initrd := randomBytes(2<<20+3, 7), randomBytes(1<<20+5, 8)

	path, _ := assembleFile(t, stub, uki.Sections{
		OSRel: osrel, Cmdline: line,
		Linux:    uki.Blob{R: bytes.NewReader(linux), Size: int64(len(linux))},
		Initrd:   uki.Blob{R: bytes.NewReader(initrd), Size: int64(len(initrd))},
		Profiles: profiles,
	}, uki.Options{StripSymbols: true})

	reset := line + " talos.experimental.wipe=system"
	want := map[string][]byte{
		".osrel": osrel, ".cmdline": []byte(line), ".linux": linux, ".initrd": initrd,
		".profile": []byte("ID=main"), ".profile#1": []byte("ID=reset\nTITLE=Reset system disk"), ".cmdline#1": []byte(reset),
	}
	order := []string{".text", ".reloc", ".data", ".dynamic", ".rela", ".dynsym", ".sbat", ".sdmagic",
		".osrel", ".cmdline", ".linux", ".initrd", ".profile", ".profile", ".cmdline"}

	f := checkPE(t, path, debianStub, want, order)
	defer f.Close()

	if got := stubProfile(t, f, 0); got[".cmdline"] != line || got[".profile"] != "ID=main" || got[".linux"] == "" {
		t.Errorf("profile 0: cmdline %q, profile %q", got[".cmdline"], got[".profile"])
	}

	if got := stubProfile(t, f, 1); got[".cmdline"] != reset || !strings.HasPrefix(got[".profile"], "ID=reset\n") || got[".osrel"] != string(osrel) {
		t.Errorf("profile 1: cmdline %q, profile %q", got[".cmdline"], got[".profile"])
	}

	if stubProfile(t, f, 2) != nil {
		t.Error("a third profile")
	}

	// objdump lists the same sections in the same order.
	var names []string
	for _, s := range objdumpSections(t, path) {
		names = append(names, s.name)
	}

	if !slicesEqual(names, order) {
		t.Errorf("objdump sections %v, want %v", names, order)
	}
}
