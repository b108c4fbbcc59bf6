package builder

import (
	"errors"
	"fmt"
	"strings"

	"github.com/kiln-dev/kiln/internal/echo"
)

// Kind is the kind of a boot asset.
type Kind string

// Asset kinds, as the public factory's paths name them.
const (
	KindKernel    Kind = "kernel"
	KindInitramfs Kind = "initramfs"
	KindCmdline   Kind = "cmdline"
	KindUKI       Kind = "uki"
	KindISO       Kind = "iso"
	KindDisk      Kind = "disk"
	KindInstaller Kind = "installer"
)

// Output is a parsed asset path such as "metal-amd64.raw.zst".
type Output struct {
	Kind       Kind
	Platform   string
	Arch       string
	SecureBoot bool
	// DiskFormat is "raw", "qcow2", "vhd" or "ova" for disks.
	DiskFormat string
	// Compression is "", "xz", "zst", "gz" or "tar.gz".
	Compression string
	// Path is the path as requested, the default download file name.
	Path string
}

// ErrInvalidPath is matched by every path the grammar refuses.
var ErrInvalidPath = errors.New("invalid profile path")

// pathForms are the forms of an asset path ParsePath takes, for the error
// of a path of none of them.
var pathForms = []string{
	"kernel-<arch>",
	"initramfs-<arch>.xz",
	"cmdline-<platform>-<arch>[-secureboot]",
	"<platform>-<arch>[-secureboot].iso",
	"<platform>-<arch>[-secureboot]-uki.efi",
	"[<platform>-]installer-<arch>[-secureboot].tar",
	"<platform>-<arch>[-secureboot].<raw|qcow2|vhd|ova>[.<gz|xz|zst|tar.gz>]",
}

// PathError is the public factory's error for a path it cannot parse.
type PathError struct{ Path string }

// Error starts with the public factory's text, which clients may compare,
// and goes on with the forms a path can take.
func (e *PathError) Error() string {
	return fmt.Sprintf("error parsing profile from path: invalid profile path: %q; valid paths: %s (<arch> amd64 or arm64, <platform> e.g. metal)",
		echo.Clip(e.Path), strings.Join(pathForms, ", "))
}

func (e *PathError) Is(target error) bool { return target == ErrInvalidPath }

// ErrUnsupported marks valid outputs kiln cannot build yet.
var ErrUnsupported = errors.New("not supported yet")

// UnsupportedError names what is not supported.
type UnsupportedError struct{ What string }

func (e *UnsupportedError) Error() string { return e.What + " is not supported yet" }

func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }

// normalizeArch maps iPXE's ${buildarch} spellings, as the public factory does.
func normalizeArch(a string) (string, bool) {
	switch a {
	case "amd64", "x86_64", "i386":
		return "amd64", true
	case "arm64":
		return "arm64", true
	}

	return "", false
}

var (
	diskFormats  = []string{"raw", "qcow2", "vhd", "ova"}
	compressions = []string{"tar.gz", "gz", "xz", "zst"}
)

// ParsePath parses an asset path with the public factory's grammar:
//
//	kernel-<arch>
//	initramfs-<arch>.xz
//	cmdline-<platform>-<arch>[-secureboot]
//	<platform>-<arch>[-secureboot].iso
//	<platform>-<arch>[-secureboot]-uki.efi
//	[<platform>-]installer-<arch>[-secureboot].tar
//	<platform>-<arch>[-secureboot].<raw|qcow2|vhd|ova>[.<gz|xz|zst|tar.gz>]
func ParsePath(path string) (Output, error) {
	bad := &PathError{Path: path}
	out := Output{Path: path, Platform: "metal"}

	if path == "" || strings.ContainsAny(path, "/\\ ") {
		return Output{}, bad
	}

	if rest, ok := strings.CutPrefix(path, "kernel-"); ok {
		arch, ok := normalizeArch(rest)
		if !ok {
			return Output{}, bad
		}

		out.Kind, out.Arch = KindKernel, arch

		return out, nil
	}

	if rest, ok := strings.CutPrefix(path, "initramfs-"); ok {
		a, ok := strings.CutSuffix(rest, ".xz")
		if !ok {
			return Output{}, bad
		}

		arch, ok := normalizeArch(a)
		if !ok {
			return Output{}, bad
		}

		out.Kind, out.Arch = KindInitramfs, arch

		return out, nil
	}

	if rest, ok := strings.CutPrefix(path, "cmdline-"); ok {
		if err := parsePlatformArch(rest, &out); err != nil {
			return Output{}, bad
		}

		out.Kind = KindCmdline

		return out, nil
	}

	if rest, ok := strings.CutSuffix(path, "-uki.efi"); ok {
		if err := parsePlatformArch(rest, &out); err != nil {
			return Output{}, bad
		}

		out.Kind = KindUKI

		return out, nil
	}

	if rest, ok := strings.CutSuffix(path, ".iso"); ok {
		if err := parsePlatformArch(rest, &out); err != nil {
			return Output{}, bad
		}

		out.Kind = KindISO

		return out, nil
	}

	if rest, ok := strings.CutSuffix(path, ".tar"); ok && strings.Contains(rest, "installer-") {
		platform, archPart, _ := strings.Cut(rest, "installer-")
		platform = strings.TrimSuffix(platform, "-")

		if err := parsePlatformArch("x-"+archPart, &out); err != nil {
			return Output{}, bad
		}

		out.Platform = "metal"
		if platform != "" {
			out.Platform = platform
		}

		out.Kind = KindInstaller

		return out, nil
	}

	// Disk images: split "<platform>-<arch>[-secureboot]" from ".<format>[.<compression>]".
	for _, c := range compressions {
		if rest, ok := strings.CutSuffix(path, "."+c); ok {
			for _, f := range diskFormats {
				if base, ok := strings.CutSuffix(rest, "."+f); ok {
					return diskOutput(base, f, c, out, bad)
				}
			}
		}
	}

	for _, f := range diskFormats {
		if base, ok := strings.CutSuffix(path, "."+f); ok {
			return diskOutput(base, f, "", out, bad)
		}
	}

	return Output{}, bad
}

func diskOutput(base, format, compression string, out Output, bad error) (Output, error) {
	if err := parsePlatformArch(base, &out); err != nil {
		return Output{}, bad
	}

	out.Kind, out.DiskFormat, out.Compression = KindDisk, format, compression

	return out, nil
}

// parsePlatformArch parses "<platform>-<arch>[-secureboot]"; the platform may
// itself contain dashes (digital-ocean), the arch never does.
func parsePlatformArch(s string, out *Output) error {
	if rest, ok := strings.CutSuffix(s, "-secureboot"); ok {
		s, out.SecureBoot = rest, true
	}

	i := strings.LastIndex(s, "-")
	if i <= 0 {
		return ErrInvalidPath
	}

	arch, ok := normalizeArch(s[i+1:])
	if !ok {
		return ErrInvalidPath
	}

	platform := s[:i]
	for _, r := range platform {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
			return ErrInvalidPath
		}
	}

	out.Platform, out.Arch = platform, arch

	return nil
}

// Supported reports whether kiln can build the output today, with an
// error naming what is missing.
func (o Output) Supported() error {
	switch {
	case o.SecureBoot:
		return &UnsupportedError{What: "SecureBoot (" + o.Path + ")"}
	case o.Kind != KindKernel && o.Kind != KindInitramfs && o.Platform != "metal":
		return &UnsupportedError{What: "platform " + o.Platform + " (only metal)"}
	case o.Kind == KindDisk && o.DiskFormat != "raw":
		return &UnsupportedError{What: "disk format " + o.DiskFormat + " (only raw)"}
	case o.Kind == KindDisk && o.Compression != "" && o.Compression != "xz" && o.Compression != "zst":
		return &UnsupportedError{What: "compression " + o.Compression + " (only xz and zst)"}
	}

	return nil
}

// ContentType is the public factory's media type for a path.
func ContentType(path string) string {
	switch {
	case strings.HasSuffix(path, ".efi"):
		return "application/efi"
	case strings.HasSuffix(path, ".iso"):
		return "application/x-iso9660-image"
	case strings.HasSuffix(path, ".xz"):
		return "application/x-xz"
	case strings.HasSuffix(path, ".gz"):
		return "application/gzip"
	case strings.HasSuffix(path, ".zst"):
		// Not in the factory's own table: it comes from the system's MIME
		// types there, and its integration tests assert it.
		return "application/zstd"
	case strings.HasSuffix(path, ".qcow2"):
		return "application/x-qemu-disk"
	case strings.HasSuffix(path, ".tar"):
		return "application/x-tar"
	}

	return "application/octet-stream"
}
