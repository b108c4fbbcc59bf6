package disk

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kiln-dev/kiln/builder/compress"
	"github.com/kiln-dev/kiln/builder/esp"
)

// TestPeakRSS is run by hand to measure peak RSS for a 4 GiB image, one step
// per process (run the test binary under /usr/bin/time -v):
//
//	KILN_RSS=inputs|write|zst|xz KILN_RSS_DIR=/some/dir go test -run TestPeakRSS ./builder/disk
//
// "inputs" makes the ~100 MiB UKI once; "write" then measures Write alone.
func TestPeakRSS(t *testing.T) {
	mode, dir := os.Getenv("KILN_RSS"), os.Getenv("KILN_RSS_DIR")
	if mode == "" || dir == "" {
		t.Skip("set KILN_RSS and KILN_RSS_DIR")
	}
	img := filepath.Join(dir, "disk4g.raw")
	switch mode {
	case "inputs":
		needFixtures(t)
		os.Remove(filepath.Join(dir, "uki.efi"))
		benchInputsT(t, dir)
	case "write":
		needFixtures(t)
		files, m := benchInputsT(t, dir)
		f, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := Write(context.Background(), f, Params{Size: 4 << 30, EFI: ESP(files, esp.Options{}), META: bytesReader(m)}); err != nil {
			t.Fatal(err)
		}
	case "zst", "xz":
		in, err := os.Open(img)
		if err != nil {
			t.Fatal(err)
		}
		defer in.Close()
		out, err := os.Create(img + "." + mode)
		if err != nil {
			t.Fatal(err)
		}
		defer out.Close()
		if err := compress.Compress(context.Background(), out, in, compress.Format(mode), compress.Options{}); err != nil {
			t.Fatal(err)
		}
	}
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	t.Logf("%s: peak RSS %d MiB", mode, ru.Maxrss/1024)
}
