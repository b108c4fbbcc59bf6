//go:build e2e

package installer_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// Debian parts of the boot fixture (make deps / make e2e-tools).
const (
	busyboxStatic = "/bin/busybox"
	debianSDBoot  = "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	debianStub    = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub"
	ovmfCode      = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	ovmfVars      = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// unpack writes img's flattened file system under dir as a container
// runtime would (directories, files with their modes, symlinks, hard links).
func unpack(t testing.TB, img v1.Image, dir string) {
	t.Helper()

	rc := mutate.Extract(img)
	defer rc.Close()

	tr := tar.NewReader(rc)

	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}

		if err != nil {
			t.Fatal(err)
		}

		p := filepath.Join(dir, filepath.Clean("/"+h.Name))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}

		switch h.Typeflag {
		case tar.TypeDir:
			err = os.MkdirAll(p, os.FileMode(h.Mode)&os.ModePerm)
		case tar.TypeReg:
			var b []byte
			if b, err = io.ReadAll(tr); err == nil {
				if err = os.WriteFile(p, b, 0o600); err == nil {
					err = os.Chmod(p, os.FileMode(h.Mode)&os.ModePerm)
				}
			}
		case tar.TypeSymlink:
			err = os.Symlink(h.Linkname, p)
		case tar.TypeLink:
			err = os.Link(filepath.Join(dir, filepath.Clean("/"+h.Linkname)), p)
		default:
			err = fmt.Errorf("unexpected tar entry type %q", h.Typeflag)
		}

		if err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
	}
}

func copyFile(t testing.TB, src, dst string, mode os.FileMode) {
	t.Helper()

	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}

	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(dst, b, mode); err != nil {
		t.Fatal(err)
	}
}

// qemu runs a TCG guest with a serial console until it powers off and
// returns the console.
func qemu(ctx context.Context, t testing.TB, args ...string) string {
	t.Helper()

	args = append([]string{"-machine", "q35", "-m", "1024", "-smp", "1", "-nographic", "-no-reboot"}, args...)

	var out bytes.Buffer

	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = &out, &out

	err := cmd.Run()
	t.Logf("qemu-system-x86_64 %s: %v", strings.Join(args, " "), err)

	return out.String()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}

	return s
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}

	sort.Strings(out)

	return out
}
