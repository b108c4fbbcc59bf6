package testfixture

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// BuildInstaller compiles the fixture installer (internal/testfixture/installer,
// the /bin/installer of the synthetic installer-base) for linux/arch as a
// static binary and returns it.
func BuildInstaller(tb testing.TB, arch string) []byte {
	tb.Helper()

	src := inRepo("internal", "testfixture", "installer")
	if src == "" {
		tb.Fatal("not inside the kiln repository")
	}

	// go test puts its own toolchain first on PATH.
	goBin, err := exec.LookPath("go")
	if err != nil {
		tb.Fatalf("building the fixture installer needs the go command: %v", err)
	}

	out := filepath.Join(tb.TempDir(), "installer")
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags=-s -w", "-o", out, ".")
	cmd.Dir = src
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)

	if b, err := cmd.CombinedOutput(); err != nil {
		tb.Fatalf("building the fixture installer for %s: %v\n%s", arch, err, b)
	}

	b, err := os.ReadFile(out)
	if err != nil {
		tb.Fatal(err)
	}

	return b
}

// InstallerOracle is Talos's own installer-layer code behind a JSON pipe
// (hack/installer-oracle, which make unit builds): $KILN_INSTALLER_ORACLE,
// else <repo>/_tools/bin/installer-oracle; see Require.
func InstallerOracle(tb testing.TB) string {
	tb.Helper()

	bin := os.Getenv("KILN_INSTALLER_ORACLE")
	if bin == "" {
		bin = inRepo("_tools", "bin", "installer-oracle")
	}

	Require(tb, bin)

	return bin
}
