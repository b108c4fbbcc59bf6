package disk

import (
	"bytes"
	"context"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/meta"
)

// benchInputs builds the ESP inputs of a Talos-sized image: systemd-boot,
// loader.conf and a ~100 MiB UKI (Debian kernel + 90 MiB of incompressible
// "initramfs", like Talos's xz/zstd initramfs), plus a META image.
func benchInputs(b *testing.B, dir string) ([]esp.File, []byte) {
	b.Helper()
	return benchInputsT(b, dir)
}

func benchInputsT(b testing.TB, dir string) ([]esp.File, []byte) {
	b.Helper()
	needFixtures(b)
	uki := filepath.Join(dir, "uki.efi")
	if _, err := os.Stat(uki); err != nil { // reused when present (TestPeakRSS)
		initrd := filepath.Join(dir, "initrd.img")
		blob := make([]byte, 90*MiB)
		rand.Read(blob)
		if err := os.WriteFile(initrd, blob, 0o644); err != nil {
			b.Fatal(err)
		}
		uki = buildUKI(b, dir, "console=ttyS0", initrd)
	}
	m, err := meta.Partition([]meta.Value{{Key: 0x0a, Value: "network config"}})
	if err != nil {
		b.Fatal(err)
	}
	return bootESP(b, dir, uki, "# systemd-boot configuration\n\ntimeout 10\n"), m
}

func bytesReader(b []byte) *bytes.Reader { return bytes.NewReader(b) }

// BenchmarkWrite: kiln's Write (GPT + go-diskfs FAT32 ESP in place + META).
func BenchmarkWrite(b *testing.B) {
	for _, sector := range []int{512, 4096} {
		b.Run("sector="+strconv.Itoa(sector), func(b *testing.B) {
			dir := b.TempDir()
			files, m := benchInputs(b, dir)
			f, err := os.Create(filepath.Join(dir, "disk.raw"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			b.ResetTimer()
			for b.Loop() {
				err := Write(context.Background(), f, Params{SectorSize: sector, EFI: ESP(files, esp.Options{}), META: bytes.NewReader(m)})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(SDBootDiskSize)
		})
	}
}

// BenchmarkNativePipeline: the same image with truncate + sgdisk + mkfs.vfat
// (in place, --offset) + mcopy + dd, i.e. Talos's tool chain without its
// separate EFI.img. Per-step times are reported; sgdisk includes ~1 s it
// spends asking the kernel to re-read the table of a plain file.
func BenchmarkNativePipeline(b *testing.B) {
	needTools(b, "sgdisk", "mkfs.vfat", "mcopy", "dd", "truncate")
	dir := b.TempDir()
	files, m := benchInputs(b, dir)
	tree := filepath.Join(dir, "esp")
	for _, f := range files {
		dst := filepath.Join(tree, filepath.FromSlash(f.Path))
		os.MkdirAll(filepath.Dir(dst), 0o755)
		rc, _ := f.Open()
		out, _ := os.Create(dst)
		buf := new(bytes.Buffer)
		buf.ReadFrom(rc)
		out.Write(buf.Bytes())
		out.Close()
		rc.Close()
	}
	metaImg := filepath.Join(dir, "meta.img")
	os.WriteFile(metaImg, m, 0o644)
	img := filepath.Join(dir, "disk.raw")
	steps := map[string]time.Duration{}
	step := func(name string, args ...string) {
		start := time.Now()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = tree
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", name, err, out)
		}
		steps[name] += time.Since(start)
	}
	b.ResetTimer()
	for b.Loop() {
		os.Remove(img)
		step("truncate", "truncate", "-s", strconv.Itoa(SDBootDiskSize), img)
		step("sgdisk", "sgdisk", "-U", GUIDFromLabel(diskLabel).String(),
			"-n", "1:2048:+2101M", "-t", "1:"+TypeEFI.String(), "-c", "1:EFI", "-u", "1:"+GUIDFromLabel("EFI").String(),
			"-n", "2:0:+1M", "-t", "2:"+TypeLinuxData.String(), "-c", "2:META", "-u", "2:"+GUIDFromLabel("META").String(), img)
		step("mkfs.vfat", "mkfs.vfat", "-F", "32", "-n", "EFI", "--invariant", "--offset", "2048", img, strconv.Itoa(2101*1024))
		step("mcopy", "mcopy", "-s", "-p", "-Q", "-m", "-i", img+"@@1M", "EFI", "loader", "::")
		step("dd", "dd", "if="+metaImg, "of="+img, "bs=1M", "seek=2102", "conv=notrunc", "status=none")
	}
	b.SetBytes(SDBootDiskSize)
	for name, d := range steps {
		b.ReportMetric(float64(d.Milliseconds())/float64(b.N), name+"-ms/op")
	}
}
