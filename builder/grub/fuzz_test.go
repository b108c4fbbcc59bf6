package grub

import (
	"os"
	"strings"
	"testing"
)

// FuzzKernel feeds arbitrary kernel.img bytes to the i386-pc and EFI
// loaders: an error, never a panic, a hang or a runaway allocation. The seeds
// are real kernel.img files of ~30–100 KiB: cap minimization
// (-fuzzminimizetime 100x, as make fuzz does) or it takes the whole run.
func FuzzKernel(f *testing.F) {
	for _, p := range []string{"/i386-pc/kernel.img", "/x86_64-efi/kernel.img"} {
		if b, err := os.ReadFile(systemGrub + p); err == nil {
			f.Add(b)
		}
	}

	f.Add([]byte("\x7fELF\x02\x01\x01"))

	f.Fuzz(func(t *testing.T, b []byte) {
		if img, _, err := loadPCKernel(b); err == nil && len(img) > maxImageSize {
			t.Fatalf("%d-byte image", len(img))
		}

		for _, m := range []uint16{emX86_64, emAarch64} {
			if k, err := loadEFIKernel(b, m); err == nil {
				writePE(k, nil, m, false)
			}
		}
	})
}

// FuzzModDep feeds arbitrary moddep.lst text and module lists to the
// resolver.
func FuzzModDep(f *testing.F) {
	if b, err := os.ReadFile(systemGrub + "/i386-pc/moddep.lst"); err == nil {
		f.Add(b, strings.Join(TalosModules, " "))
	}

	f.Add([]byte("a: b\nb: a\n"), "a")
	f.Add([]byte("a: b c\nc: b\n"), "a c x")

	f.Fuzz(func(t *testing.T, moddep []byte, modules string) {
		d, err := parseModDep(moddep)
		if err != nil {
			return
		}

		order, err := d.resolve(strings.Fields(modules))
		if err != nil {
			return
		}

		seen := map[string]bool{}
		for _, m := range order {
			if seen[m] {
				t.Fatalf("%s twice in %v", m, order)
			}

			seen[m] = true

			for _, dep := range d[m] {
				if !seen[dep] {
					t.Fatalf("%s before its dependency %s in %v", m, dep, order)
				}
			}
		}
	})
}
