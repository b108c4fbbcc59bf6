package grub

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// isoModules is an El Torito core.img for an ISO9660 volume, as
// grub-mkrescue makes one (biosdisk, iso9660) with what Talos's ISO menu
// needs built in.
var isoModules = []string{"biosdisk", "iso9660", "normal", "configfile", "linux", "all_video", "test", "echo", "search", "part_msdos"}

// xorrisoISO writes an ISO of tree with eltorito.img (at
// boot/grub/i386-pc/eltorito.img in tree) as its no-emulation El Torito boot
// image, the way grub-mkrescue asks xorriso for it; patched says whether
// xorriso itself patches the image and writes boot_hybrid.img as the MBR
// (-boot-info-table --grub2-boot-info --grub2-mbr) or leaves both alone.
func xorrisoISO(t testing.TB, tree, out string, patched bool) {
	t.Helper()
	testfixture.RequireTool(t, "xorriso")

	args := []string{"-as", "mkisofs", "-b", "boot/grub/i386-pc/eltorito.img", "-no-emul-boot", "-boot-load-size", "4"}
	if patched {
		args = append(args, "-boot-info-table", "--grub2-boot-info", "--grub2-mbr", systemGrub+"/i386-pc/boot_hybrid.img")
	}

	cmd := exec.Command("xorriso", append(args, "-o", out, tree)...)
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH=1700000000")

	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("xorriso: %v\n%s", err, b)
	}
}

// imageLBA finds the 2 KiB block of iso that holds img, by its third block
// (the first two are what the patches change).
func imageLBA(t testing.TB, iso, img []byte) uint32 {
	t.Helper()

	probe := img[2*isoBlockSize : 3*isoBlockSize]
	for lba := 0; (lba+3)*isoBlockSize <= len(iso); lba++ {
		if bytes.Equal(iso[(lba+2)*isoBlockSize:(lba+3)*isoBlockSize], probe) {
			return uint32(lba)
		}
	}

	t.Fatal("El Torito image not found in the ISO")

	return 0
}

// patchISO applies PatchElToritoImage and PatchHybridMBR to an ISO xorriso
// wrote without its own patches.
func patchISO(t testing.TB, iso, img []byte) {
	t.Helper()

	lba := imageLBA(t, iso, img)
	if err := PatchElToritoImage(iso[int(lba)*isoBlockSize:int(lba)*isoBlockSize+len(img)], lba, 16); err != nil {
		t.Fatal(err)
	}

	mbr, err := HybridBootImage(os.DirFS(systemGrub + "/i386-pc"))
	if err != nil {
		t.Fatal(err)
	}

	if err := PatchHybridMBR(mbr, lba); err != nil {
		t.Fatal(err)
	}

	copy(iso, mbr)
}

// TestPatchElToritoMatchesXorriso: PatchElToritoImage and PatchHybridMBR
// write what xorriso's -boot-info-table, --grub2-boot-info and --grub2-mbr
// write for grub-mkrescue.
func TestPatchElToritoMatchesXorriso(t *testing.T) {
	testfixture.Require(t, systemGrub+"/i386-pc/kernel.img")

	img, err := MakeImage(os.DirFS(systemGrub+"/i386-pc"), Options{Format: FormatPCElTorito, Modules: isoModules, Prefix: "/boot/grub"})
	if err != nil {
		t.Fatal(err)
	}

	// Trailing bytes that end mid-word exercise the checksum's partial
	// last word.
	for _, pad := range []int{0, 1, 3} {
		dir := t.TempDir()
		tree := filepath.Join(dir, "tree")
		img := append(append([]byte(nil), img...), bytes.Repeat([]byte{0xab}, pad)...)

		if err := os.MkdirAll(filepath.Join(tree, "boot/grub/i386-pc"), 0o755); err != nil {
			t.Fatal(err)
		}

		writeTestFile(t, filepath.Join(tree, "boot/grub/i386-pc/eltorito.img"), img)
		writeTestFile(t, filepath.Join(tree, "hello"), []byte("hello\n"))

		xorrisoISO(t, tree, filepath.Join(dir, "ref.iso"), true)
		xorrisoISO(t, tree, filepath.Join(dir, "plain.iso"), false)

		ref, err := os.ReadFile(filepath.Join(dir, "ref.iso"))
		if err != nil {
			t.Fatal(err)
		}

		plain, err := os.ReadFile(filepath.Join(dir, "plain.iso"))
		if err != nil {
			t.Fatal(err)
		}

		lba := imageLBA(t, ref, img)
		patchISO(t, plain, img)

		if !bytes.Equal(plain[:sectorSize], ref[:sectorSize]) {
			t.Errorf("pad %d: MBR differs from xorriso's at 0x%x", pad, firstDiff(plain[:sectorSize], ref[:sectorSize]))
		}

		at := int(lba) * isoBlockSize
		if got, want := plain[at:at+len(img)], ref[at:at+len(img)]; !bytes.Equal(got, want) {
			t.Errorf("pad %d: El Torito image at block %d differs from xorriso's at 0x%x", pad, lba, firstDiff(got, want))
		}
	}
}

func TestPatchErrors(t *testing.T) {
	if err := PatchForGPTDisk(make([]byte, 10), make([]byte, 512), 2048); err == nil {
		t.Error("short boot.img accepted")
	}

	if err := PatchForGPTDisk(make([]byte, 512), make([]byte, 10), 2048); err == nil {
		t.Error("short core.img accepted")
	}

	if err := PatchForGPTDisk(make([]byte, 512), make([]byte, 512), 0); err == nil {
		t.Error("sector 0 accepted")
	}

	if err := PatchElToritoImage(make([]byte, 100), 20, 16); err == nil {
		t.Error("short El Torito image accepted")
	}

	if err := PatchHybridMBR(make([]byte, 100), 20); err == nil {
		t.Error("short MBR accepted")
	}
}
