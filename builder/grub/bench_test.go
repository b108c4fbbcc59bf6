package grub

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// BenchmarkMakeImage compares MakeImage with running grub-mkimage (what
// Talos's installer execs) for Talos's two images, on Debian 12's GRUB.
func BenchmarkMakeImage(b *testing.B) {
	testfixture.RequireTool(b, "grub-mkimage")
	testfixture.Require(b, systemGrub+"/i386-pc/kernel.img", systemGrub+"/x86_64-efi/kernel.img")

	for _, c := range []struct {
		name string
		o    Options
		dir  string
	}{
		{"i386-pc", Options{Format: FormatPC, Modules: slices.Concat(TalosModules, TalosBIOSModules), Prefix: TalosPrefix}, "i386-pc"},
		{"x86_64-efi", Options{Format: FormatX86_64EFI, Modules: TalosModules, Prefix: TalosPrefix}, "x86_64-efi"},
	} {
		dir := filepath.Join(systemGrub, c.dir)

		b.Run(c.name+"/kiln", func(b *testing.B) {
			fsys := os.DirFS(dir)
			for b.Loop() {
				img, err := MakeImage(fsys, c.o)
				if err != nil {
					b.Fatal(err)
				}

				b.SetBytes(int64(len(img)))
			}
		})

		b.Run(c.name+"/grub-mkimage", func(b *testing.B) {
			out := filepath.Join(b.TempDir(), "img")
			args := []string{"-d", dir, "-O", string(c.o.Format), "-o", out, "-p", c.o.Prefix}

			if c.o.Format == FormatX86_64EFI {
				args = append(args, "--compression", "xz")
			}

			args = append(args, c.o.Modules...)

			for b.Loop() {
				if o, err := exec.Command("grub-mkimage", args...).CombinedOutput(); err != nil {
					b.Fatalf("%v: %s", err, o)
				}

				st, err := os.Stat(out)
				if err != nil {
					b.Fatal(err)
				}

				b.SetBytes(st.Size())
			}
		})
	}
}
