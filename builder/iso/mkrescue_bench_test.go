package iso_test

// Run by hand (make bench runs it too):
//
//	go test -run '^$' -bench DualBoot -benchtime 3x ./builder/iso/
//
// BenchmarkDualBoot times kiln's dual-boot ISO ("kiln": MkrescueBIOS and
// iso.Write with the ESP appended, in a process of its own: this test
// binary re-run as TestDualBootHelper) against Talos's grub-mkrescue call
// ("grub-mkrescue", hybrid.go's arguments) on the same tree (the sd-boot
// bench tree plus a 12 MiB kernel, a 90 MiB initramfs and grub.cfg), the
// same efiboot.img and the host's i386-pc GRUB directory. Each run goes
// through /usr/bin/time, so both sides are measured alike: ns/op (wall),
// cpu-ns/op (user+system of the process and its children), peak-RSS-KiB
// (the largest process), allocated-B/op (the output's blocks on disk) and,
// for kiln, written-B/op (/proc/self/io wchar of its process).

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/iso"
)

func allocated(b *testing.B, p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		b.Fatal(err)
	}
	return st.Blocks * 512
}

// timed runs cmd under /usr/bin/time and returns its CPU time, peak RSS in
// KiB and the lines it printed that start with "KILN-".
func timed(b *testing.B, env []string, name string, args ...string) (time.Duration, int64, []string) {
	b.Helper()
	mustTool(b, "/usr/bin/time")
	stats := filepath.Join(b.TempDir(), "time")
	cmd := exec.Command("/usr/bin/time", append([]string{"-o", stats, "-f", "%U %S %M", name}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		b.Fatalf("%s: %v\n%s", name, err, out)
	}
	s, err := os.ReadFile(stats)
	if err != nil {
		b.Fatal(err)
	}
	f := strings.Fields(string(s))
	if len(f) < 3 {
		b.Fatalf("/usr/bin/time wrote %q", s)
	}
	u, _ := strconv.ParseFloat(f[len(f)-3], 64)
	sys, _ := strconv.ParseFloat(f[len(f)-2], 64)
	rss, _ := strconv.ParseInt(f[len(f)-1], 10, 64)
	var kiln []string
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "KILN-") {
			kiln = append(kiln, sc.Text())
		}
	}
	return time.Duration((u + sys) * float64(time.Second)), rss, kiln
}

func BenchmarkDualBoot(b *testing.B) {
	if _, err := os.Stat(filepath.Join(hostGrubPC, "boot_hybrid.img")); err != nil {
		b.Skipf("no GRUB i386-pc tree: %v", err)
	}
	bt := newBenchTree(b)
	for p, n := range map[string]int{"boot/vmlinuz": 12 << 20, "boot/initramfs.xz": 90 << 20, "boot/grub/grub.cfg": 1200} {
		writeRandom(b, filepath.Join(bt.dir, p), uint64(n), n)
	}
	tmp := b.TempDir()

	for _, side := range []string{"kiln", "grub-mkrescue"} {
		b.Run(side, func(b *testing.B) {
			out := filepath.Join(tmp, side+".iso")
			var cpu time.Duration
			var rss, written int64
			for b.Loop() {
				os.Remove(out)
				var c time.Duration
				var r int64
				var lines []string
				if side == "kiln" {
					c, r, lines = timed(b, []string{"KILN_BENCH_TREE=" + bt.dir, "KILN_BENCH_ESP=" + bt.espPath, "KILN_BENCH_OUT=" + out},
						os.Args[0], "-test.run=^TestDualBootHelper$", "-test.v")
					for _, l := range lines {
						if v, ok := strings.CutPrefix(l, "KILN-WCHAR: "); ok {
							n, _ := strconv.ParseInt(v, 10, 64)
							written += n
						}
					}
				} else {
					mustTool(b, "grub-mkrescue")
					esp := filepath.Join(bt.dir, "efiboot.img")
					if err := os.Link(bt.espPath, esp); err != nil && !os.IsExist(err) {
						b.Fatal(err)
					}
					c, r, _ = timed(b, nil, "grub-mkrescue", "--compress=xz", "--output="+out, "--directory="+hostGrubPC,
						"-m", "efiboot.img", "-iso-level", "3", bt.dir,
						"-eltorito-alt-boot", "-e", "--interval:appended_partition_2:all::",
						"-append_partition", "2", "0xef", esp,
						"-appended_part_as_gpt", "-partition_cyl_align", "all", "-partition_offset", "16",
						"-iso_mbr_part_type", "0x83", "-no-emul-boot", "--",
						"-volid", iso.VolumeID("v1.13.0"), "-volset-id", iso.Label("v1.13.0"))
					if err := os.Remove(esp); err != nil {
						b.Fatal(err)
					}
				}
				cpu += c
				rss = max(rss, r)
			}
			n := float64(b.N)
			b.ReportMetric(float64(cpu)/n, "cpu-ns/op")
			b.ReportMetric(float64(rss), "peak-RSS-KiB")
			b.ReportMetric(float64(allocated(b, out)), "allocated-B/op")
			if side == "kiln" {
				b.ReportMetric(float64(written)/n, "written-B/op")
			}
		})
	}
}

// TestDualBootHelper is BenchmarkDualBoot's kiln process: the dual-boot ISO
// of the tree its environment names, nothing else.
func TestDualBootHelper(t *testing.T) {
	tree, espPath, out := os.Getenv("KILN_BENCH_TREE"), os.Getenv("KILN_BENCH_ESP"), os.Getenv("KILN_BENCH_OUT")
	if tree == "" {
		t.Skip("BenchmarkDualBoot's helper process")
	}
	var files []iso.File
	err := filepath.WalkDir(tree, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "efiboot.img" {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(tree, p)
		files = append(files, iso.File{Path: filepath.ToSlash(rel), Size: info.Size(), Source: p})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	mk, err := iso.MkrescueBIOS(os.DirFS(hostGrubPC))
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := iso.Write(context.Background(), f, iso.Params{
		VolumeID: iso.VolumeID("v1.13.0"), VolumeSetID: iso.Label("v1.13.0"),
		Files: append(files, mk.Files...), Dirs: mk.Dirs, BIOS: mk.BIOS,
		ESP: espPath, TempDir: filepath.Dir(out),
	}); err != nil {
		t.Fatal(err)
	}
	if io := procIO(); io != nil {
		fmt.Printf("KILN-WCHAR: %d\n", io["wchar"])
	}
}
