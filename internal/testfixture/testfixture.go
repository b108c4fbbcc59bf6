// Package testfixture locates the Debian parts tests boot and read: the
// linux-image package unpacked by `make deps` (or KILN_E2E_KERNEL),
// systemd-boot-efi (Debian 12's, and Debian 13's beside it), busybox-static
// and OVMF.
package testfixture

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// KernelDir is the root of the unpacked linux-image package: KILN_E2E_KERNEL,
// else <repo>/_e2e/kernel.
func KernelDir() string {
	if d := os.Getenv("KILN_E2E_KERNEL"); d != "" {
		return d
	}

	return inRepo("_e2e", "kernel")
}

// SDBootTrixieDir is the EFI directory of Debian 13's systemd-boot-efi (257,
// whose stub and boot loader honour UKI .profile sections), unpacked by
// `make e2e-tools`: KILN_E2E_SDBOOT, else
// <repo>/_e2e/sdboot-trixie/root/usr/lib/systemd/boot/efi.
func SDBootTrixieDir() string {
	if d := os.Getenv("KILN_E2E_SDBOOT"); d != "" {
		return d
	}

	return inRepo("_e2e", "sdboot-trixie", "root", "usr", "lib", "systemd", "boot", "efi")
}

// XFSTrixieRoot is where Debian 13's xfsprogs (6.13) is unpacked with its
// libraries, by `make e2e-tools` (the bench's imager shims use the same
// tree): KILN_XFS_TRIXIE, else <repo>/_e2e/imager-trixie/root.
func XFSTrixieRoot() string {
	if d := os.Getenv("KILN_XFS_TRIXIE"); d != "" {
		return d
	}

	return inRepo("_e2e", "imager-trixie", "root")
}

// inRepo joins elem to the repository root (the directory holding go.mod
// above the working directory), or returns "" outside the repository.
func inRepo(elem ...string) string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}

	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return filepath.Join(append([]string{dir}, elem...)...)
		}

		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}

		dir = parent
	}
}

// Crane is the crane CLI tests run as a peer: $CRANE, else the one
// `make e2e-tools` installs in <repo>/_tools/bin; see Require.
func Crane(tb testing.TB) string {
	tb.Helper()

	bin := os.Getenv("CRANE")
	if bin == "" {
		bin = inRepo("_tools", "bin", "crane")
	}

	Require(tb, bin)

	return bin
}

// Cosign is the cosign CLI tests run as a peer: $COSIGN, else the one
// `make e2e-tools` installs in <repo>/_tools/bin; see Require.
func Cosign(tb testing.TB) string {
	tb.Helper()

	bin := os.Getenv("COSIGN")
	if bin == "" {
		bin = inRepo("_tools", "bin", "cosign")
	}

	Require(tb, bin)

	return bin
}

// DockerRegistry is Debian's distribution registry: $DOCKER_REGISTRY, else
// docker-registry on PATH; see Require.
func DockerRegistry(tb testing.TB) string {
	tb.Helper()

	bin := os.Getenv("DOCKER_REGISTRY")
	if bin == "" {
		bin, _ = exec.LookPath("docker-registry")
	}

	Require(tb, bin)

	return bin
}

// Kernel is the path of the fixture's vmlinuz, or "" if it is not there.
func Kernel() string {
	m, _ := filepath.Glob(filepath.Join(KernelDir(), "boot", "vmlinuz-*"))
	if len(m) != 1 {
		return ""
	}

	return m[0]
}

// ModulesDir is lib/modules/<version> of the fixture kernel.
func ModulesDir() string {
	m, _ := filepath.Glob(filepath.Join(KernelDir(), "lib", "modules", "*"))
	if len(m) != 1 {
		return ""
	}

	return m[0]
}

// Require stops the test when a fixture file is missing: a failure under
// make (KILN_REQUIRE_FIXTURES=1, so CI never silently skips), a skip for a
// plain `go test` on a machine without them.
func Require(tb testing.TB, paths ...string) {
	tb.Helper()

	for _, p := range paths {
		if _, err := os.Stat(p); p == "" || err != nil {
			if os.Getenv("KILN_REQUIRE_FIXTURES") == "1" {
				tb.Fatalf("test fixture %q missing (make deps installs the unit tests' fixtures, make e2e-tools the e2e peers): %v", p, err)
			}

			tb.Skipf("test fixture %q missing; run make deps (or make e2e-tools)", p)
		}
	}
}

// RequireTool is Require for a command on PATH.
func RequireTool(tb testing.TB, names ...string) {
	tb.Helper()

	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			if os.Getenv("KILN_REQUIRE_FIXTURES") == "1" {
				tb.Fatalf("%s is not installed (make deps installs the Debian tools the tests read with): %v", n, err)
			}

			tb.Skipf("%s is not installed; run make deps", n)
		}
	}
}

// GrubVersions is where `make deps` unpacks Debian 13's and unstable's GRUB
// (module trees and grub-mkimage with the libraries it runs with) and Debian
// 12's arm64-efi tree, one directory per suite: KILN_GRUB_VERSIONS, else
// <repo>/_e2e/grub.
func GrubVersions() string {
	if d := os.Getenv("KILN_GRUB_VERSIONS"); d != "" {
		return d
	}

	return inRepo("_e2e", "grub")
}
