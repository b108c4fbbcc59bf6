package cmdline_test

import (
	"path"
	"slices"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/builder/cmdline"
	"github.com/kiln-dev/kiln/release"
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

			line, err := cmdline.Build(cmdline.Options{Platform: platform, Arch: arch, TalosVersion: release.MustParseVersion(tc.version), SecureBoot: tc.secureBoot})
			if err != nil {
				t.Fatal(err)
			}

			got, err := cmdline.PXEScript(cmdline.PXEOptions{
				BaseURL:     "http://pxe.example:8080",
				SchematicID: emptySchematic,
				Version:     release.MustParseVersion(tc.version),
				Platform:    platform,
				Arch:        arch,
				Cmdline:     line,
				SecureBoot:  tc.secureBoot,
			})
			if err != nil {
				t.Fatal(err)
			}

			if want, ok := pxeRef[tc.version+"/"+strings.Replace(tc.path, "x86_64", "amd64", 1)]; ok {
				checkAgainstFactory(t, got, want, tc.secureBoot)
			}

			golden(t, tc.name, got)
		})
	}
}

func TestPXEScriptURL(t *testing.T) {
	got, err := cmdline.PXEScript(cmdline.PXEOptions{
		BaseURL: "https://user:pass@factory.example/prefix/", SchematicID: "abc", Version: release.MustParseVersion("v1.13.0"),
		Platform: "metal", Arch: "arm64", Cmdline: "talos.platform=metal",
	})
	if err != nil {
		t.Fatal(err)
	}

	kernel := "kernel https://user:pass@factory.example/prefix/image/abc/v1.13.0/kernel-arm64 talos.platform=metal"
	initrd := "initrd --name initramfs-arm64.xz https://user:pass@factory.example/prefix/image/abc/v1.13.0/initramfs-arm64.xz"

	want := "#!ipxe\n\nimgfree\niseq ${platform} efi && goto efi ||\n" + kernel + "\n" + initrd + "\nboot\n" +
		":efi\n" + kernel + " initrd=initramfs-arm64.xz\n" + initrd + "\nboot\n"
	if got != want {
		t.Errorf("PXEScript:\ngot  %q\nwant %q", got, want)
	}

	// arm64 iPXE is EFI only: ${platform} is efi.
	if cmds, _ := runIPXE(t, got, "efi"); cmds[1] != kernel+" initrd=initramfs-arm64.xz" {
		t.Errorf("arm64 EFI kernel line = %q", cmds[1])
	}

	if _, err := cmdline.PXEScript(cmdline.PXEOptions{BaseURL: "http://x", Version: release.MustParseVersion("v1.13.0"), Platform: "metal", Arch: "amd64"}); err == nil {
		t.Error("PXEScript(no schematic) = nil error")
	}
}

// checkAgainstFactory runs kiln's script and the public factory's (want)
// as iPXE would on BIOS and on EFI. On BIOS, kiln's runs the factory's
// commands byte for byte, except that the initrd is named after its own
// file; on EFI the kernel line also gains initrd=<that name>. SecureBoot
// scripts are the factory's as they are.
func checkAgainstFactory(t *testing.T, got, want string, secureBoot bool) {
	t.Helper()

	if secureBoot {
		if got != want {
			t.Errorf("SecureBoot script:\ngot  %q\nwant %q", got, want)
		}

		return
	}

	factory, _ := runIPXE(t, want, "pcbios")

	var factoryInitrd string

	for _, cmd := range factory {
		if url, ok := strings.CutPrefix(cmd, "initrd "); ok {
			factoryInitrd = path.Base(url)
		}
	}

	for _, platform := range []string{"pcbios", "efi"} {
		cmds, booted := runIPXE(t, got, platform)
		if !booted {
			t.Errorf("%s: the script ends without boot: %q", platform, cmds)

			continue
		}

		if len(cmds) != len(factory) {
			t.Errorf("%s: commands %q, factory runs %q", platform, cmds, factory)

			continue
		}

		var name string

		for i, cmd := range cmds {
			wantCmd := factory[i]

			if rest, ok := strings.CutPrefix(cmd, "initrd --name "); ok {
				name, rest, _ = strings.Cut(rest, " ")
				if name != factoryInitrd {
					t.Errorf("%s: initrd named %q, want %q (its file name)", platform, name, factoryInitrd)
				}

				cmd = "initrd " + rest
			}

			if platform == "efi" && strings.HasPrefix(wantCmd, "kernel ") {
				wantCmd += " initrd=" + factoryInitrd
			}

			if cmd != wantCmd {
				t.Errorf("%s: command %d:\ngot  %q\nwant %q", platform, i, cmd, wantCmd)
			}
		}

		if name == "" {
			t.Errorf("%s: the initrd has no name: %q", platform, cmds)
		}
	}
}

// runIPXE executes an iPXE script the way iPXE's script and exec code do,
// for the commands these scripts use: "#" comments and ":label" lines are
// skipped, a line splits into whitespace-separated tokens and into commands
// at "&&", "||" and ";", ${platform} expands, iseq compares, goto jumps to
// its label and ends the line, an empty command succeeds, a failing command
// ends the script, and boot ends it. It returns the other commands as iPXE
// would pass them on (arguments joined by single spaces, as concat_args
// builds a kernel command line) and whether boot was reached.
func runIPXE(t *testing.T, script, platform string) ([]string, bool) {
	t.Helper()

	lines := strings.Split(script, "\n")
	if lines[0] != "#!ipxe" {
		t.Fatalf("script does not start with #!ipxe: %q", lines[0])
	}

	var cmds []string

	for pc := 0; pc < len(lines); pc++ {
		tokens := strings.Fields(lines[pc])
		if len(tokens) == 0 || strings.HasPrefix(tokens[0], "#") || strings.HasPrefix(tokens[0], ":") {
			continue
		}

		run, rc, jumped := true, 0, false

		// As iPXE's system(): a terminator always has a command after it,
		// empty at the end of the line.
		for next := "start"; next != "" && !jumped; {
			end := len(tokens)
			next = ""

			for i, tok := range tokens {
				if tok == "&&" || tok == "||" || tok == ";" || strings.HasPrefix(tok, "#") {
					end, next = i, tok

					break
				}
			}

			argv := tokens[:end]
			if end < len(tokens) {
				tokens = tokens[end+1:]
			} else {
				tokens = nil
			}

			if strings.HasPrefix(next, "#") {
				tokens, next = nil, ""
			}

			if run {
				for i, a := range argv {
					argv[i] = strings.ReplaceAll(a, "${platform}", platform)
				}

				switch {
				case len(argv) == 0:
					rc = 0
				case argv[0] == "iseq":
					if len(argv) != 3 {
						t.Fatalf("line %d: iseq takes two values: %q", pc+1, lines[pc])
					}

					rc = 1
					if argv[1] == argv[2] {
						rc = 0
					}
				case argv[0] == "goto":
					target := -1
					if len(argv) == 2 {
						target = slices.Index(lines, ":"+argv[1])
					}

					if target < 0 {
						t.Fatalf("line %d: goto to no label: %q", pc+1, lines[pc])
					}

					pc, rc, jumped = target, 0, true
				case argv[0] == "boot":
					return cmds, true
				default:
					cmds = append(cmds, strings.Join(argv, " "))
					rc = 0
				}
			}

			switch next {
			case "&&":
				run = rc == 0
			case "||":
				run = rc != 0
			default:
				run = true
			}
		}

		if rc != 0 {
			t.Fatalf("line %d fails and ends the script: %q", pc+1, lines[pc])
		}
	}

	return cmds, false
}
