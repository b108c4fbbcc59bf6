//go:build talos

package uki_test

import (
	"bytes"
	"debug/pe"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/builder/cmdline"
	"github.com/kiln-dev/kiln/builder/uki"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

// TestTalosUKIBuilder assembles the same UKIs with kiln and with Talos's own
// UKI builder (hack/talos-uki, built from the Talos module by `make
// compare-talos-uki`) from Debian 13's systemd-stub 257 and Debian's kernel,
// for each output kind and for Talos versions with and without profiles, and
// compares them section by section: names, order, virtual addresses and
// sizes, raw sizes, characteristics and contents, and SizeOfImage. kiln's
// builder leaves out .uname and .splash; here they are taken from Talos's
// image so that the addresses after them can be compared too. File offsets
// are not compared: Talos rewrites the headers (a shorter DOS stub, the
// timestamp) and packs the stub's sections anew, kiln keeps the stub's.
func TestTalosUKIBuilder(t *testing.T) {
	oracle := os.Getenv("TALOS_UKI")
	sdboot := testfixture.SDBootTrixieDir()
	stubPath, loader := filepath.Join(sdboot, "linuxx64.efi.stub"), filepath.Join(sdboot, "systemd-bootx64.efi")
	need(t, oracle, stubPath, loader, debianKernel)

	dir := t.TempDir()
	initrd := randomBytes(3<<20+11, 9)
	initrdPath := filepath.Join(dir, "initrd")

	if err := os.WriteFile(initrdPath, initrd, 0o644); err != nil {
		t.Fatal(err)
	}

	kernel, err := os.ReadFile(debianKernel)
	if err != nil {
		t.Fatal(err)
	}

	stubFile, err := pe.Open(stubPath)
	if err != nil {
		t.Fatal(err)
	}

	nStub := len(stubFile.Sections)
	stubFile.Close()

	kinds := []struct {
		kind  string
		reset uki.Reset
	}{{"uki", uki.NoReset}, {"iso", uki.ResetSystemDisk}, {"image", uki.ResetToMaintenance}, {"installer", uki.ResetToMaintenance}}

	for _, version := range []string{"v1.9.4", "v1.10.0", "v1.13.0", "v1.14.0"} {
		for _, k := range kinds {
			t.Run(version+"-"+k.kind, func(t *testing.T) {
				line, err := cmdline.Build(cmdline.Options{
					Platform: "metal", Arch: "amd64", TalosVersion: release.MustParseVersion(version), ISO: k.kind == "iso",
					ExtraArgs: []string{"console=ttyS0"},
				})
				if err != nil {
					t.Fatal(err)
				}

				talosPath := filepath.Join(t.TempDir(), "talos.efi")

				cmd := exec.CommandContext(t.Context(), oracle, "-version", version, "-kind", k.kind,
					"-stub", stubPath, "-sdboot", loader, "-kernel", debianKernel, "-initrd", initrdPath,
					"-cmdline", line, "-out", talosPath)
				cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1559424892")

				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("talos-uki: %v\n%s", err, out)
				}

				tf, err := pe.Open(talosPath)
				if err != nil {
					t.Fatal(err)
				}
				defer tf.Close()

				sectionData := func(f *pe.File, name string) []byte {
					if s := f.Section(name); s != nil {
						b := make([]byte, s.VirtualSize)
						if _, err := s.ReadAt(b, 0); err != nil {
							t.Fatal(err)
						}

						return b
					}

					return nil
				}

				osrel, err := uki.OSRelease("Talos", version)
				if err != nil {
					t.Fatal(err)
				}

				profiles, err := uki.TalosProfiles(release.MustParseVersion(version), line, k.reset)
				if err != nil {
					t.Fatal(err)
				}

				stub, err := os.Open(stubPath)
				if err != nil {
					t.Fatal(err)
				}
				defer stub.Close()

				kilnPath, _ := assembleFile(t, stub, uki.Sections{
					OSRel: osrel, Cmdline: line,
					Uname:    string(sectionData(tf, ".uname")),
					Splash:   sectionData(tf, ".splash"),
					Linux:    uki.Blob{R: bytes.NewReader(kernel), Size: int64(len(kernel))},
					Initrd:   uki.Blob{R: bytes.NewReader(initrd), Size: int64(len(initrd))},
					Profiles: profiles,
				}, uki.Options{})

				kf, err := pe.Open(kilnPath)
				if err != nil {
					t.Fatal(err)
				}
				defer kf.Close()

				compareUKIs(t, tf, kf, nStub)

				if t.Failed() {
					return
				}

				var names []string
				for _, s := range kf.Sections[nStub:] {
					names = append(names, s.Name)
				}

				t.Logf("%d sections as Talos lays them out; added: %v", len(kf.Sections), names)
			})
		}
	}
}

func compareUKIs(t *testing.T, talos, kiln *pe.File, nStub int) {
	t.Helper()

	if len(talos.Sections) != len(kiln.Sections) {
		var a, b []string
		for _, s := range talos.Sections {
			a = append(a, s.Name)
		}

		for _, s := range kiln.Sections {
			b = append(b, s.Name)
		}

		t.Fatalf("Talos has sections %v, kiln %v", a, b)
	}

	for i, ts := range talos.Sections {
		ks := kiln.Sections[i]

		th, kh := ts.SectionHeader, ks.SectionHeader
		th.Offset, kh.Offset = 0, 0 // file offsets: see the test's comment

		if th != kh {
			t.Errorf("section %d: Talos %+v, kiln %+v", i, th, kh)

			continue
		}

		a, errA := ts.Data()
		b, errB := ks.Data()

		if errA != nil || errB != nil || !bytes.Equal(a, b) {
			t.Errorf("section %d %s: contents differ (%d and %d bytes; %v, %v)", i, ts.Name, len(a), len(b), errA, errB)
		}

		if i >= nStub && ts.Name == ".profile" {
			t.Logf(".profile %q", a[:ts.VirtualSize])
		}
	}

	to, ko := talos.OptionalHeader.(*pe.OptionalHeader64), kiln.OptionalHeader.(*pe.OptionalHeader64)
	if to.SizeOfImage != ko.SizeOfImage || to.SectionAlignment != ko.SectionAlignment || to.FileAlignment != ko.FileAlignment {
		t.Errorf("SizeOfImage/alignments: Talos %s, kiln %s", layout(to), layout(ko))
	}
}

func layout(o *pe.OptionalHeader64) string {
	return fmt.Sprintf("%#x/%#x/%#x", o.SizeOfImage, o.SectionAlignment, o.FileAlignment)
}
