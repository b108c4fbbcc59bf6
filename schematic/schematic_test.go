package schematic_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/schematic"
)

// The public factory's IDs for these schematics. Users carry IDs between
// factory.talos.dev and kiln, so these are the contract.
var vectors = []struct {
	name, in, canonical, id string
}{
	{
		name:      "empty",
		in:        "{}",
		canonical: "customization: {}\n",
		id:        "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba",
	},
	{
		name:      "kernel args",
		in:        "customization:\n  extraKernelArgs: [noapic, nolapic]\n",
		canonical: "customization:\n    extraKernelArgs:\n        - noapic\n        - nolapic\n",
		id:        "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c",
	},
	{
		name:      "meta hex key",
		in:        "customization:\n  meta:\n    - {key: 0xa, value: foo}\n",
		canonical: "customization:\n    meta:\n        - key: 10\n          value: foo\n",
		id:        "d308a2a5ee2277bed5fbaa104fcbc8d59122abfa737df987a95b4ca763459a7f",
	},
	{
		name:      "secureboot well-known",
		in:        "customization:\n  secureboot: {includeWellKnownCertificates: true}\n",
		canonical: "customization:\n    secureboot:\n        includeWellKnownCertificates: true\n",
		id:        "fa8e05f142a851d3ee568eb0a8e5841eaf6b0ebc8df9a63df16ac5ed2c04f3e6",
	},
	{
		name:      "4k sectors",
		in:        "customization:\n  diskImage: {sectorSize: 4096}\n",
		canonical: "customization:\n    diskImage:\n        sectorSize: 4096\n",
		id:        "92833e9ddd9bb9e11b2464fa5525429f01866306d52ebd882ee08d7918f6d1ea",
	},
}

func TestVectors(t *testing.T) {
	for _, v := range vectors {
		t.Run(v.name, func(t *testing.T) {
			for _, in := range []string{v.in, v.canonical} {
				s, err := schematic.Parse([]byte(in))
				if err != nil {
					t.Fatalf("Parse(%q): %v", in, err)
				}

				got, err := s.Marshal()
				if err != nil {
					t.Fatal(err)
				}

				if string(got) != v.canonical {
					t.Errorf("Marshal(Parse(%q)) = %q, want %q", in, got, v.canonical)
				}

				id, err := s.ID()
				if err != nil || id != v.id {
					t.Errorf("ID(Parse(%q)) = %s, %v, want %s", in, id, err, v.id)
				}
			}
		})
	}
}

// The canonical form's rules, each on an input that spells it differently.
func TestCanonicalForm(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{
			name: "json input",
			in:   `{"customization":{"systemExtensions":{"officialExtensions":["siderolabs/gvisor","siderolabs/amd-ucode"]}}}`,
			want: "customization:\n    systemExtensions:\n        officialExtensions:\n            - siderolabs/gvisor\n            - siderolabs/amd-ucode\n",
		},
		{
			name: "field order is the model's, not the input's",
			in:   "customization:\n  diskImage: {sectorSize: 512}\n  bootloader: sd-boot\n  meta: [{value: x, key: 1}]\n  extraKernelArgs: [a]\n  embeddedMachineConfiguration: 'v: 1'\n",
			want: "customization:\n    embeddedMachineConfiguration: 'v: 1'\n    extraKernelArgs:\n        - a\n    meta:\n        - key: 1\n          value: x\n    bootloader: sd-boot\n    diskImage:\n        sectorSize: 512\n",
		},
		{
			name: "empty sections are elided",
			in:   "customization:\n  extraKernelArgs: []\n  meta: []\n  systemExtensions: {officialExtensions: []}\n  secureboot: {includeWellKnownCertificates: false}\n  diskImage: {sectorSize: 0}\n  bootloader: none\n",
			want: "customization: {}\n",
		},
		{
			name: "overlay options are sorted, nested and typed",
			in:   "overlay:\n  name: rpi_generic\n  image: siderolabs/sbc-raspberrypi\n  options: {z: 1, a: [1, '2'], b10: x, b2: {y: 'yes', x: true}, f: 1.5}\ncustomization: {}\n",
			want: "overlay:\n    image: siderolabs/sbc-raspberrypi\n    name: rpi_generic\n    options:\n        a:\n            - 1\n            - \"2\"\n        b2:\n            x: true\n            'y': 'yes'\n        b10: x\n        f: 1.5\n        z: 1\ncustomization: {}\n",
		},
		{
			name: "multi-line machine config uses a literal block",
			in:   "customization:\n  embeddedMachineConfiguration: |\n    apiVersion: v1alpha1\n    kind: Foo\n",
			want: "customization:\n    embeddedMachineConfiguration: |\n        apiVersion: v1alpha1\n        kind: Foo\n",
		},
		{
			name: "strings that look like other types are quoted",
			in:   "customization:\n  extraKernelArgs: ['true', '1', 'null', 'a: b', '-x', '#c']\n",
			want: "customization:\n    extraKernelArgs:\n        - \"true\"\n        - \"1\"\n        - \"null\"\n        - 'a: b'\n        - -x\n        - '#c'\n",
		},
		{
			name: "bootloader names are case-insensitive",
			in:   "customization: {bootloader: GRUB}\n",
			want: "customization:\n    bootloader: grub\n",
		},
		{
			name: "secureboot keys",
			in:   "customization: {secureboot: {enrollKeys: force, includeWellKnownCertificates: true}}\n",
			want: "customization:\n    secureboot:\n        enrollKeys: force\n        includeWellKnownCertificates: true\n",
		},
		{
			name: "missing customization still appears",
			in:   "overlay: {image: img, name: n}\n",
			want: "overlay:\n    image: img\n    name: 'n'\ncustomization: {}\n", // YAML 1.1 would read a bare n as false
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := schematic.Parse([]byte(tc.in))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}

			got, err := s.Marshal()
			if err != nil {
				t.Fatal(err)
			}

			if string(got) != tc.want {
				t.Errorf("Marshal() =\n%s\nwant\n%s", got, tc.want)
			}

			// The canonical form is a fixed point.
			again, err := schematic.Parse(got)
			if err != nil {
				t.Fatalf("Parse(canonical): %v", err)
			}

			if b, _ := again.Marshal(); string(b) != string(got) {
				t.Errorf("canonical form is not stable: %q -> %q", got, b)
			}
		})
	}
}

func TestRejects(t *testing.T) {
	for _, tc := range []struct{ name, in, want string }{
		{"unknown field", "something: 1\n", "yaml: construct errors: line 1: field something not found in type schematic.Schematic"},
		{"unknown nested field", "customization: {extraKernelArg: [a]}\n", "field extraKernelArg not found in type schematic.Customization"},
		{"owner", "owner: alice\n", "owner is not supported"},
		{"kernel args not a list", "customization: {extraKernelArgs: quiet}\n", "cannot construct !!str `quiet` into []string"},
		{"meta key too large", "customization: {meta: [{key: 256, value: x}]}\n", "cannot construct !!int `256` into uint8"},
		{"meta key negative", "customization: {meta: [{key: -1, value: x}]}\n", "into uint8"},
		{"sector size not a number", "customization: {diskImage: {sectorSize: big}}\n", "into uint"},
		{"well-known not a bool", "customization: {secureboot: {includeWellKnownCertificates: maybe}}\n", "into bool"},
		{"unknown secureboot field", "customization: {secureboot: {enrolKeys: force}}\n", "field enrolKeys not found in type schematic.SecureBootCustomization"},
		{"bootloader unknown", "customization: {bootloader: lilo}\n", "yaml: construct errors: line 1: lilo does not belong to BootloaderKind values"},
		{"not a mapping", "- a\n- b\n", "cannot construct !!seq into schematic.Schematic"},
		{"syntax error", "customization: {\n", "go-yaml load error in parser (while parsing a flow node) at L2.C1: did not find expected node content"},
		{"empty document", "", "schematic is empty"},
		// The YAML library writes these as block scalars it cannot read
		// back (the factory accepts them, then cannot serve them).
		{"unreadable canonical form", `{"customization": {"extraKernelArgs": [" a\n"]}}`,
			"schematic cannot be stored: its canonical YAML does not read back (a limit of the YAML library, for multi-line strings that start with a space, a tab or an empty line): go-yaml load error in parser"},
		{"canonical form reads back different", `{"customization": {"embeddedMachineConfiguration": "\n a\n"}}`,
			"does not read back (a limit of the YAML library, for multi-line strings that start with a space, a tab or an empty line): it reads back as a different schematic"},
		{"tab-led block", `{"customization": {"meta": [{"key": 1, "value": "\ta\nb"}]}}`, "found a tab character where an indentation space is expected"},
		{"only a comment", "# nothing\n", "schematic is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := schematic.Parse([]byte(tc.in))
			if err == nil {
				t.Fatalf("Parse(%q) succeeded, want an error containing %q", tc.in, tc.want)
			}

			if !errors.Is(err, schematic.ErrInvalid) {
				t.Errorf("Parse(%q) error %v does not match ErrInvalid", tc.in, err)
			}

			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse(%q) error = %q, want it to contain %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestValidID(t *testing.T) {
	for id, want := range map[string]bool{
		vectors[0].id:                  true,
		strings.ToUpper(vectors[0].id): false,
		vectors[0].id[:63]:             false,
		vectors[0].id + "0":            false,
		"":                             false,
		"../../../../etc/passwd":       false,
		strings.Repeat("g", 64):        false,
	} {
		if got := schematic.ValidID(id); got != want {
			t.Errorf("ValidID(%q) = %v, want %v", id, got, want)
		}
	}
}

// The factory's boot loaders are Talos's imageropts.BootloaderKind: none
// (the zero value, omitted), dual-boot, sd-boot, grub, in any case; anything
// else is refused in Talos's words. kiln once invented "auto".
func TestBootloader(t *testing.T) {
	for in, want := range map[string]string{
		"none":      "customization: {}\n",
		"NONE":      "customization: {}\n",
		"null":      "customization: {}\n",
		"dual-boot": "customization:\n    bootloader: dual-boot\n",
		"sd-boot":   "customization:\n    bootloader: sd-boot\n",
		"Sd-Boot":   "customization:\n    bootloader: sd-boot\n",
		"grub":      "customization:\n    bootloader: grub\n",
		"GRUB":      "customization:\n    bootloader: grub\n",
	} {
		s, err := schematic.Parse([]byte("customization: {bootloader: " + in + "}"))
		if err != nil {
			t.Errorf("bootloader %s: %v", in, err)

			continue
		}

		if got, _ := s.Marshal(); string(got) != want {
			t.Errorf("bootloader %s: canonical %q, want %q", in, got, want)
		}
	}

	for in, want := range map[string]string{
		"auto": "yaml: construct errors: line 1: auto does not belong to BootloaderKind values",
		"''":   "yaml: construct errors: line 1:  does not belong to BootloaderKind values",
		"lilo": "yaml: construct errors: line 1: lilo does not belong to BootloaderKind values",
		"1":    "yaml: construct errors: line 1: 1 does not belong to BootloaderKind values",
	} {
		_, err := schematic.Parse([]byte("customization: {bootloader: " + in + "}"))
		if err == nil || err.Error() != want || !errors.Is(err, schematic.ErrInvalid) {
			t.Errorf("bootloader %s: error %v, want %q", in, err, want)
		}
	}

	if got := schematic.BootloaderNone.String(); got != "none" {
		t.Errorf("the zero boot loader is %q, want none", got)
	}
}

func TestImageCacheSection(t *testing.T) {
	// Absent, or present but empty, the section changes no public-factory ID.
	for _, v := range vectors {
		s, err := schematic.Parse([]byte(v.in))
		if err != nil {
			t.Fatal(err)
		}

		if s.Customization.ImageCache.Enabled() {
			t.Fatalf("%s: image cache enabled", v.name)
		}
	}

	empty, err := schematic.Parse([]byte("customization: {imageCache: {images: [], platforms: []}}"))
	if err != nil {
		t.Fatal(err)
	}

	if id, _ := empty.ID(); id != vectors[0].id {
		t.Errorf("an empty imageCache section changed the ID to %s", id)
	}

	s, err := schematic.Parse([]byte("customization:\n  extraKernelArgs: [noapic, nolapic]\n  imageCache:\n    kubernetes: true\n    images: [docker.io/library/nginx:1.27]\n    platforms: [linux/amd64]\n"))
	if err != nil {
		t.Fatal(err)
	}

	got, _ := s.Marshal()
	want := "customization:\n    extraKernelArgs:\n        - noapic\n        - nolapic\n    imageCache:\n        kubernetes: true\n        images:\n            - docker.io/library/nginx:1.27\n        platforms:\n            - linux/amd64\n"

	if string(got) != want {
		t.Fatalf("canonical form:\n%s\nwant\n%s", got, want)
	}

	if id, _ := s.ID(); id == vectors[1].id || id != schematic.IDOf([]byte(want)) {
		t.Errorf("ID with an image cache = %s; it must differ from the same schematic without one and be stable", id)
	}

	if _, err := schematic.Parse([]byte("customization: {imageCache: {kubernets: true}}")); err == nil || !strings.Contains(err.Error(), "kubernets") {
		t.Errorf("typo in imageCache accepted: %v", err)
	}
}

// A second document is refused rather than dropped; empty ones after the
// first are nothing to drop.
func TestParseOneDocument(t *testing.T) {
	for _, ok := range []string{"customization: {}\n", "customization: {}\n---\n", "---\ncustomization: {}\n...\n", "customization: {}\n--- ~\n---\n"} {
		if _, err := schematic.Parse([]byte(ok)); err != nil {
			t.Errorf("Parse(%q): %v", ok, err)
		}
	}

	for _, bad := range []string{"customization: {}\n---\ncustomization: {extraKernelArgs: [a]}\n", "{}\n---\n[\n", "customization: {}\n---\nfoo\n"} {
		_, err := schematic.Parse([]byte(bad))
		if !errors.Is(err, schematic.ErrInvalid) {
			t.Errorf("Parse(%q) = %v, want ErrInvalid", bad, err)
		}
	}

	_, err := schematic.Parse([]byte("customization: {}\n---\ncustomization: {extraKernelArgs: [a]}\n"))
	if err == nil || !strings.Contains(err.Error(), "more than one YAML document (line 2") {
		t.Errorf("error = %v, want it to say where the second document starts", err)
	}
}
