package builder

import (
	"errors"
	"strings"
	"testing"
)

func TestParsePath(t *testing.T) {
	for _, tc := range []struct {
		path string
		want Output
	}{
		{"kernel-amd64", Output{Kind: KindKernel, Platform: "metal", Arch: "amd64"}},
		{"kernel-x86_64", Output{Kind: KindKernel, Platform: "metal", Arch: "amd64"}},
		{"initramfs-arm64.xz", Output{Kind: KindInitramfs, Platform: "metal", Arch: "arm64"}},
		{"cmdline-metal-amd64", Output{Kind: KindCmdline, Platform: "metal", Arch: "amd64"}},
		{"cmdline-metal-amd64-secureboot", Output{Kind: KindCmdline, Platform: "metal", Arch: "amd64", SecureBoot: true}},
		{"metal-arm64-uki.efi", Output{Kind: KindUKI, Platform: "metal", Arch: "arm64"}},
		{"metal-amd64.iso", Output{Kind: KindISO, Platform: "metal", Arch: "amd64"}},
		{"metal-amd64-secureboot.iso", Output{Kind: KindISO, Platform: "metal", Arch: "amd64", SecureBoot: true}},
		{"metal-amd64.raw", Output{Kind: KindDisk, Platform: "metal", Arch: "amd64", DiskFormat: "raw"}},
		{"metal-amd64.raw.zst", Output{Kind: KindDisk, Platform: "metal", Arch: "amd64", DiskFormat: "raw", Compression: "zst"}},
		{"metal-arm64.raw.xz", Output{Kind: KindDisk, Platform: "metal", Arch: "arm64", DiskFormat: "raw", Compression: "xz"}},
		{"gcp-amd64.raw.tar.gz", Output{Kind: KindDisk, Platform: "gcp", Arch: "amd64", DiskFormat: "raw", Compression: "tar.gz"}},
		{"digital-ocean-amd64.raw.gz", Output{Kind: KindDisk, Platform: "digital-ocean", Arch: "amd64", DiskFormat: "raw", Compression: "gz"}},
		{"installer-amd64.tar", Output{Kind: KindInstaller, Platform: "metal", Arch: "amd64"}},
		{"aws-installer-arm64-secureboot.tar", Output{Kind: KindInstaller, Platform: "aws", Arch: "arm64", SecureBoot: true}},
	} {
		got, err := ParsePath(tc.path)
		tc.want.Path = tc.path

		if err != nil || got != tc.want {
			t.Errorf("ParsePath(%q) = %+v, %v; want %+v", tc.path, got, err, tc.want)
		}
	}

	for _, bad := range []string{"", "metal-amd64.ssd", "kernel-mips", "initramfs-amd64", "metal.iso", "metal-amd64-uki", "../x", "metal-amd64.raw.bz2", "-amd64.iso"} {
		_, err := ParsePath(bad)
		if !errors.Is(err, ErrInvalidPath) {
			t.Errorf("ParsePath(%q) error = %v, want ErrInvalidPath", bad, err)
		}
	}

	// The public factory's text first (clients compare it), then the forms.
	_, err := ParsePath("metal-amd64.ssd")
	msg := err.Error()

	if !strings.HasPrefix(msg, `error parsing profile from path: invalid profile path: "metal-amd64.ssd"`) {
		t.Errorf("error text = %q, want the public factory's first", msg)
	}

	for _, form := range pathForms {
		if !strings.Contains(msg, form) {
			t.Errorf("error text %q does not name the form %s", msg, form)
		}
	}
}

// TestPathFormsParse: every form the error names is one ParsePath takes,
// in each of its spellings.
func TestPathFormsParse(t *testing.T) {
	if len(pathForms) < 7 {
		t.Fatalf("pathForms = %v", pathForms)
	}

	for _, form := range pathForms {
		paths := expandForm(form)
		if len(paths) < 1 {
			t.Fatalf("%s expands to nothing", form)
		}

		for _, p := range paths {
			if _, err := ParsePath(p); err != nil {
				t.Errorf("%s: ParsePath(%q) = %v", form, p, err)
			}
		}
	}
}

// expandForm spells out a form: [x] with and without x, <a|b> as each of
// a and b, <arch> as amd64 and <platform> as metal.
func expandForm(form string) []string {
	if i := strings.Index(form, "["); i >= 0 {
		j := i + strings.Index(form[i:], "]")

		return append(expandForm(form[:i]+form[j+1:]), expandForm(form[:i]+form[i+1:j]+form[j+1:])...)
	}

	for i := strings.Index(form, "<"); i >= 0; {
		j := i + strings.Index(form[i:], ">")
		if alts := strings.Split(form[i+1:j], "|"); len(alts) > 1 {
			var out []string
			for _, a := range alts {
				out = append(out, expandForm(form[:i]+a+form[j+1:])...)
			}

			return out
		}

		next := strings.Index(form[j:], "<")
		if next < 0 {
			break
		}

		i = j + next
	}

	return []string{strings.NewReplacer("<arch>", "amd64", "<platform>", "metal").Replace(form)}
}

func TestSupported(t *testing.T) {
	for path, ok := range map[string]bool{
		"kernel-amd64": true, "initramfs-arm64.xz": true, "cmdline-metal-amd64": true, "metal-amd64-uki.efi": true,
		"metal-amd64.iso": true, "metal-arm64.raw.xz": true, "metal-amd64.raw.zst": true, "metal-amd64.raw": true,
		"metal-amd64-secureboot.iso": false, "aws-amd64.raw.xz": false, "metal-amd64.qcow2": false, "installer-amd64.tar": true,
		"metal-installer-arm64.tar": true, "aws-installer-amd64.tar": false, "installer-amd64-secureboot.tar": false,
		"metal-amd64.raw.gz": false,
	} {
		o, err := ParsePath(path)
		if err != nil {
			t.Fatal(err)
		}

		if err := o.Supported(); (err == nil) != ok || (err != nil && !errors.Is(err, ErrUnsupported)) {
			t.Errorf("%s: Supported() = %v, want ok=%v", path, err, ok)
		}
	}
}

func TestContentType(t *testing.T) {
	for path, want := range map[string]string{
		"metal-amd64.iso": "application/x-iso9660-image", "initramfs-amd64.xz": "application/x-xz", "metal-amd64-uki.efi": "application/efi",
		"kernel-amd64": "application/octet-stream", "metal-amd64.raw.zst": "application/zstd", "cmdline-metal-amd64": "application/octet-stream",
	} {
		if got := ContentType(path); got != want {
			t.Errorf("ContentType(%s) = %s, want %s", path, got, want)
		}
	}
}
