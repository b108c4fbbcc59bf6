package grub

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// platformDir is a GRUB platform directory and the grub-mkimage built
// with it.
type platformDir struct {
	label   string // "2.06 x86_64-efi (bookworm)"
	system  bool   // Debian 12's, installed by TEST_DEBS
	dir     string
	efi     Format // the EFI format of the directory, "" for i386-pc
	mkimage []string
}

const systemGrub = "/usr/lib/grub"

// platformDirs lists every GRUB tree the tests compare with: Debian 12's
// (TEST_DEBS) and the suites `make deps` unpacks under
// testfixture.GrubVersions().
func platformDirs(t testing.TB) []platformDir {
	t.Helper()
	testfixture.RequireTool(t, "grub-mkimage")
	testfixture.Require(t, systemGrub+"/i386-pc/kernel.img", systemGrub+"/x86_64-efi/kernel.img")

	sys := []string{"grub-mkimage"}
	dirs := []platformDir{
		{label: "i386-pc (bookworm)", system: true, dir: systemGrub + "/i386-pc", mkimage: sys},
		{label: "x86_64-efi (bookworm)", system: true, dir: systemGrub + "/x86_64-efi", efi: FormatX86_64EFI, mkimage: sys},
	}

	versions := testfixture.GrubVersions()
	testfixture.Require(t, filepath.Join(versions, ".done"))

	dirs = append(dirs, platformDir{
		label: "arm64-efi (bookworm)", dir: filepath.Join(versions, "bookworm/root/usr/lib/grub/arm64-efi"),
		efi: FormatARM64EFI, mkimage: sys,
	})

	for _, suite := range []string{"trixie", "sid"} {
		root := filepath.Join(versions, suite, "root")
		lib := filepath.Join(root, "usr/lib/x86_64-linux-gnu")
		mk := []string{filepath.Join(lib, "ld-linux-x86-64.so.2"), "--library-path",
			lib + ":" + filepath.Join(root, "lib/x86_64-linux-gnu"), filepath.Join(root, "usr/bin/grub-mkimage")}
		g := filepath.Join(root, "usr/lib/grub")
		dirs = append(dirs,
			platformDir{label: "i386-pc (" + suite + ")", dir: g + "/i386-pc", mkimage: mk},
			platformDir{label: "x86_64-efi (" + suite + ")", dir: g + "/x86_64-efi", efi: FormatX86_64EFI, mkimage: mk},
			platformDir{label: "arm64-efi (" + suite + ")", dir: g + "/arm64-efi", efi: FormatARM64EFI, mkimage: mk},
		)
	}

	for i := range dirs {
		testfixture.Require(t, filepath.Join(dirs[i].dir, "kernel.img"))

		v, err := Version(os.DirFS(dirs[i].dir))
		if err != nil {
			t.Fatal(err)
		}

		dirs[i].label = v + " " + dirs[i].label
	}

	return dirs
}

// grubMkimage runs the real grub-mkimage of p with Talos's arguments.
func grubMkimage(t testing.TB, p platformDir, o Options) ([]byte, error) {
	t.Helper()

	out := filepath.Join(t.TempDir(), "img")
	args := append(append([]string{}, p.mkimage[1:]...), "-d", p.dir, "-O", string(o.Format), "-o", out, "-p", o.Prefix)

	if o.Format == FormatX86_64EFI || o.Format == FormatARM64EFI {
		args = append(args, "--compression", "xz")
	}

	if o.Config != nil {
		cfg := filepath.Join(t.TempDir(), "load.cfg")
		if err := os.WriteFile(cfg, o.Config, 0o644); err != nil {
			t.Fatal(err)
		}

		args = append(args, "-c", cfg)
	}

	cmd := exec.Command(p.mkimage[0], append(args, o.Modules...)...)

	var stderr bytes.Buffer
	cmd.Stderr = &stderr

	if err := cmd.Run(); err != nil {
		return nil, &mkimageError{err: err, stderr: strings.TrimSpace(stderr.String())}
	}

	return os.ReadFile(out)
}

type mkimageError struct {
	err    error
	stderr string
}

func (e *mkimageError) Error() string { return e.err.Error() + ": " + e.stderr }

// allModules is every module of the directory.
func allModules(t testing.TB, dir string) []string {
	t.Helper()

	files, err := filepath.Glob(filepath.Join(dir, "*.mod"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no modules in %s (%v)", dir, err)
	}

	var mods []string
	for _, f := range files {
		mods = append(mods, strings.TrimSuffix(filepath.Base(f), ".mod"))
	}

	return mods
}
