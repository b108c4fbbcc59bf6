package disk

import (
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

// Debian parts used by the boot test and the benchmarks.
var (
	fixtureKernel  = testfixture.Kernel()
	fixtureModules = testfixture.ModulesDir() + "/kernel/drivers"
)

const (
	sdBootEFI     = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	sdStub        = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	busyboxStatic = "/bin/busybox"
)

func needFixtures(t testing.TB) {
	t.Helper()
	needTools(t, "objcopy", "cpio")
	testfixture.Require(t, fixtureKernel, fixtureModules, sdBootEFI, sdStub, busyboxStatic)
}

func buildUKI(t testing.TB, dir, cmdline, initrd string) string {
	t.Helper()
	osrel := filepath.Join(dir, "os-release")
	cl := filepath.Join(dir, "cmdline")
	os.WriteFile(osrel, []byte("NAME=kiln-test\nID=kiln\nVERSION_ID=1\n"), 0o644)
	os.WriteFile(cl, []byte(cmdline), 0o644)
	uki := filepath.Join(dir, "uki.efi")
	run(t, "objcopy",
		"--add-section", ".osrel="+osrel, "--change-section-vma", ".osrel=0x20000",
		"--add-section", ".cmdline="+cl, "--change-section-vma", ".cmdline=0x30000",
		"--add-section", ".linux="+fixtureKernel, "--change-section-vma", ".linux=0x2000000",
		"--add-section", ".initrd="+initrd, "--change-section-vma", ".initrd=0x3000000",
		sdStub, uki)
	return uki
}

func fileOnDisk(t testing.TB, espPath, src string) esp.File {
	t.Helper()
	st, err := os.Stat(src)
	if err != nil {
		t.Fatal(err)
	}
	return esp.File{Path: espPath, Size: st.Size(), Open: func() (io.ReadCloser, error) { return os.Open(src) }}
}

// bootESP is the sd-boot ESP tree of Talos (§4.4) around uki.
func bootESP(t testing.TB, dir, uki, loaderConf string) []esp.File {
	t.Helper()
	lc := filepath.Join(dir, "loader.conf")
	os.WriteFile(lc, []byte(loaderConf), 0o644)
	return []esp.File{
		fileOnDisk(t, "EFI/boot/BOOTX64.efi", sdBootEFI),
		fileOnDisk(t, "EFI/Linux/Talos-v1.13.0.efi", uki),
		fileOnDisk(t, "loader/loader.conf", lc),
	}
}
