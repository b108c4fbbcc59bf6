package iso_test

// Run by hand (make bench runs it too):
//
//	go test -run '^$' -bench DualBoot -benchtime 3x ./builder/iso/
//
// BenchmarkDualBoot times kiln's dual-boot ISO ("kiln": MkrescueBIOS and
// iso.Write with the ESP appended) against Talos's grub-mkrescue call
// ("grub-mkrescue", hybrid.go's arguments) on the same tree (the sd-boot
// bench tree plus a 12 MiB kernel, a 90 MiB initramfs and grub.cfg), the
// same efiboot.img and the host's i386-pc GRUB directory. Besides ns/op:
// cpu-ns/op (user+system of this process, or of grub-mkrescue and its
// children), peak-RSS-KiB (of this process, or of the largest child),
// allocated-B/op (the output's blocks on disk) and, for kiln,
// written-B/op (/proc/self/io wchar).

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/iso"
)

func cpuTime(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func maxRSS(who int) int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return ru.Maxrss
}

func allocated(b *testing.B, p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		b.Fatal(err)
	}
	return st.Blocks * 512
}

func BenchmarkDualBoot(b *testing.B) {
	if _, err := os.Stat(filepath.Join(hostGrubPC, "boot_hybrid.img")); err != nil {
		b.Skipf("no GRUB i386-pc tree: %v", err)
	}
	bt := newBenchTree(b)
	add := func(p string, seed uint64, n int) {
		writeRandom(b, filepath.Join(bt.dir, p), seed, n)
		bt.files = append(bt.files, iso.File{Path: p, Size: int64(n), Source: filepath.Join(bt.dir, p)})
	}
	add("boot/vmlinuz", 20, 12<<20)
	add("boot/initramfs.xz", 21, 90<<20)
	add("boot/grub/grub.cfg", 22, 1200)
	tmp := b.TempDir()

	b.Run("kiln", func(b *testing.B) {
		out := filepath.Join(tmp, "kiln.iso")
		f, err := os.Create(out)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		io0, cpu0 := procIO(), cpuTime(syscall.RUSAGE_SELF)
		defer reportIO(b, io0)
		for b.Loop() {
			mk, err := iso.MkrescueBIOS(os.DirFS(hostGrubPC))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := iso.Write(context.Background(), f, iso.Params{
				VolumeID: iso.VolumeID("v1.13.0"), VolumeSetID: iso.Label("v1.13.0"),
				Files: append(bt.files[:len(bt.files):len(bt.files)], mk.Files...), Dirs: mk.Dirs, BIOS: mk.BIOS,
				ESP: bt.espPath, TempDir: tmp,
			}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(cpuTime(syscall.RUSAGE_SELF)-cpu0)/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(maxRSS(syscall.RUSAGE_SELF)), "peak-RSS-KiB")
		b.ReportMetric(float64(allocated(b, out)), "allocated-B/op")
	})

	b.Run("grub-mkrescue", func(b *testing.B) {
		mustTool(b, "grub-mkrescue")
		if err := os.Link(bt.espPath, filepath.Join(bt.dir, "efiboot.img")); err != nil {
			b.Fatal(err)
		}
		out := filepath.Join(tmp, "mkrescue.iso")
		cpu0 := cpuTime(syscall.RUSAGE_CHILDREN)
		for b.Loop() {
			os.Remove(out)
			cmd := exec.Command("grub-mkrescue", "--compress=xz", "--output="+out, "--directory="+hostGrubPC,
				"-m", "efiboot.img", "-iso-level", "3", bt.dir,
				"-eltorito-alt-boot", "-e", "--interval:appended_partition_2:all::",
				"-append_partition", "2", "0xef", filepath.Join(bt.dir, "efiboot.img"),
				"-appended_part_as_gpt", "-partition_cyl_align", "all", "-partition_offset", "16",
				"-iso_mbr_part_type", "0x83", "-no-emul-boot", "--",
				"-volid", iso.VolumeID("v1.13.0"), "-volset-id", iso.Label("v1.13.0"))
			if o, err := cmd.CombinedOutput(); err != nil {
				b.Fatalf("grub-mkrescue: %v\n%s", err, o)
			}
		}
		b.ReportMetric(float64(cpuTime(syscall.RUSAGE_CHILDREN)-cpu0)/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(maxRSS(syscall.RUSAGE_CHILDREN)), "peak-RSS-KiB")
		b.ReportMetric(float64(allocated(b, out)), "allocated-B/op")
	})
}
