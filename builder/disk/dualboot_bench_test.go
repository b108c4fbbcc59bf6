package disk_test

import (
	"context"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/disk"
	"github.com/kiln-dev/kiln/builder/esp"
	"github.com/kiln-dev/kiln/builder/grub"
	"github.com/kiln-dev/kiln/builder/meta"
	"github.com/kiln-dev/kiln/builder/xfs"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

// dualBootInputs are the files of a Talos-sized dual-boot disk, on disk:
// systemd-boot, a 100 MiB incompressible stand-in UKI, the fixture kernel,
// a 90 MiB incompressible stand-in initramfs, grub.cfg, and a META image.
type dualBootInputs struct {
	dir                              string
	sdboot, uki, kernel, initrd, cfg string
	loaderConf, metaImg              string
	kernelSize, initrdSize, ukiSize  int64
}

func newDualBootInputs(tb testing.TB) dualBootInputs {
	tb.Helper()
	kernel := testfixture.Kernel()
	sdboot := "/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
	testfixture.Require(tb, kernel, sdboot, filepath.Join(hostGrub, "i386-pc", "kernel.img"), filepath.Join(hostGrub, "x86_64-efi", "kernel.img"))
	dir := tb.TempDir()
	in := dualBootInputs{dir: dir, sdboot: sdboot, kernel: kernel}
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			tb.Fatal(err)
		}
		return p
	}
	// Written in 4 MiB pieces, so that the inputs do not set the test
	// process's peak RSS.
	random := func(name string, n int) string {
		p := filepath.Join(dir, name)
		f, err := os.Create(p)
		if err != nil {
			tb.Fatal(err)
		}
		defer f.Close()
		buf := make([]byte, 4<<20)
		for ; n > 0; n -= len(buf) {
			rand.Read(buf)
			if _, err := f.Write(buf[:min(n, len(buf))]); err != nil {
				tb.Fatal(err)
			}
		}
		return p
	}
	in.uki = random("uki.efi", 100<<20)
	in.initrd = random("initramfs.xz", 90<<20)
	in.cfg = write("grub.cfg", grub.DiskConfig(release.MustParseVersion("v1.12.0"), "talos.platform=metal console=tty0", true))
	in.loaderConf = write("loader.conf", []byte("# systemd-boot configuration\n\ntimeout 10\n"))
	m, err := meta.Partition([]meta.Value{{Key: 0x11, Value: "dual-boot"}})
	if err != nil {
		tb.Fatal(err)
	}
	in.metaImg = write("meta.img", m)
	for p, n := range map[string]*int64{in.kernel: &in.kernelSize, in.initrd: &in.initrdSize, in.uki: &in.ukiSize} {
		st, err := os.Stat(p)
		if err != nil {
			tb.Fatal(err)
		}
		*n = st.Size()
	}
	return in
}

func openFile(p string) func() (io.ReadCloser, error) {
	return func() (io.ReadCloser, error) { return os.Open(p) }
}

// kilnDualBoot writes the disk as the builder does: core.img and boot.img
// with builder/grub, EFI with builder/esp, BOOT with builder/xfs, in place.
func kilnDualBoot(tb testing.TB, in dualBootInputs, out *os.File) {
	tb.Helper()
	pc := os.DirFS(filepath.Join(hostGrub, "i386-pc"))
	core, err := grub.MakeImage(pc, grub.Options{Format: grub.FormatPC, Modules: append(append([]string(nil), grub.TalosModules...), grub.TalosBIOSModules...), Prefix: grub.TalosPrefix})
	if err != nil {
		tb.Fatal(err)
	}
	boot, err := grub.BootImage(pc)
	if err != nil {
		tb.Fatal(err)
	}
	m, err := os.ReadFile(in.metaImg)
	if err != nil {
		tb.Fatal(err)
	}
	features := xfs.LTS612
	bootPart := xfs.Partition(disk.BootSize, []xfs.File{
		{Path: "A/vmlinuz", Size: in.kernelSize, Open: openFile(in.kernel)},
		{Path: "A/initramfs.xz", Size: in.initrdSize, Open: openFile(in.initrd)},
		{Path: "grub/grub.cfg", Size: int64(len(grub.DiskConfig(release.MustParseVersion("v1.12.0"), "talos.platform=metal console=tty0", true))), Open: openFile(in.cfg)},
	}, xfs.Options{Features: &features})
	st, _ := os.Stat(in.sdboot)
	lc, _ := os.Stat(in.loaderConf)
	if err := disk.Write(context.Background(), out, disk.Params{
		Bootloader: disk.BootloaderDualBoot,
		EFI: disk.ESP([]esp.File{
			{Path: "EFI/boot/BOOTX64.efi", Size: st.Size(), Open: openFile(in.sdboot)},
			{Path: "EFI/Linux/Talos-v1.12.0.efi", Size: in.ukiSize, Open: openFile(in.uki)},
			{Path: "loader/loader.conf", Size: lc.Size(), Open: openFile(in.loaderConf)},
		}, esp.Options{}),
		BIOS: &disk.BIOSBoot{BootImage: boot, CoreImage: core},
		Boot: &bootPart,
		META: bytesReaderOf(m),
	}); err != nil {
		tb.Fatal(err)
	}
}

func allocatedBytes(tb testing.TB, paths ...string) int64 {
	tb.Helper()
	var n int64
	for _, p := range paths {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err == nil {
			n += st.Blocks * 512
		}
	}
	return n
}

// BenchmarkDualBootKiln: kiln's 4247 MiB dual-boot disk. Reported: MB
// allocated in the output (what was written: the rest are holes).
func BenchmarkDualBootKiln(b *testing.B) {
	in := newDualBootInputs(b)
	img := filepath.Join(in.dir, "disk.raw")
	f, err := os.Create(img)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.ResetTimer()
	for b.Loop() {
		kilnDualBoot(b, in, f)
	}
	b.ReportMetric(float64(allocatedBytes(b, img))/1e6, "allocated-MB")
}

// toolPipeline makes the same disk with the tools Talos's imager runs
// (cmd/installer ModeImage): sgdisk for the table, grub-mkimage for
// core.img and the discarded x86_64-efi image, mkfs.vfat + mcopy into
// EFI.img, mkfs.xfs -p protofile (Debian 13's 6.13, whose lts_6.12.conf
// Talos 1.12 passes; Debian 12's lacks -p file=) into BOOT.img, then each
// partition image and boot.img copied into the disk. It returns the files
// it wrote and the children's largest peak RSS.
func toolPipeline(tb testing.TB, in dualBootInputs, work string, steps map[string]time.Duration) ([]string, int64) {
	tb.Helper()
	root := testfixture.XFSTrixieRoot()
	lib := filepath.Join(root, "usr", "lib", "x86_64-linux-gnu")
	testfixture.Require(tb, filepath.Join(root, "usr", "sbin", "mkfs.xfs"))
	testfixture.RequireTool(tb, "sgdisk", "grub-mkimage", "mkfs.vfat", "mcopy", "dd", "truncate")
	os.RemoveAll(work)
	tree := filepath.Join(work, "tree")
	for _, d := range []string{"EFI/boot", "EFI/Linux", "loader"} {
		os.MkdirAll(filepath.Join(tree, d), 0o755)
	}
	for src, dst := range map[string]string{in.sdboot: "EFI/boot/BOOTX64.efi", in.uki: "EFI/Linux/Talos-v1.12.0.efi", in.loaderConf: "loader/loader.conf"} {
		if err := os.Symlink(src, filepath.Join(tree, dst)); err != nil {
			tb.Fatal(err)
		}
	}
	proto := filepath.Join(work, "proto")
	os.WriteFile(proto, []byte("/dev/null\n0 0\nd--755 0 0\nA d--755 0 0\nvmlinuz ---644 0 0 "+in.kernel+"\ninitramfs.xz ---644 0 0 "+in.initrd+
		"\n$\ngrub d--755 0 0\ngrub.cfg ---644 0 0 "+in.cfg+"\n$\n$\n"), 0o644)
	img, efi, boot, core, efiImg := filepath.Join(work, "disk.raw"), filepath.Join(work, "EFI.img"), filepath.Join(work, "BOOT.img"),
		filepath.Join(work, "core.img"), filepath.Join(work, "grub-efi.img")
	var peak int64
	step := func(name string, args ...string) {
		start := time.Now()
		cmd := exec.Command(args[0], args[1:]...)
		cmd.Dir = tree
		if out, err := cmd.CombinedOutput(); err != nil {
			tb.Fatalf("%s: %v\n%s", name, err, out)
		}
		steps[name] += time.Since(start)
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && ru.Maxrss*1024 > peak {
			peak = ru.Maxrss * 1024
		}
	}
	mods := append(append([]string(nil), grub.TalosModules...), grub.TalosBIOSModules...)
	step("truncate", "truncate", "-s", strconv.Itoa(disk.DualBootDiskSize), img)
	step("sgdisk", "sgdisk", "-U", disk.GUIDFromLabel("talos-image-disk").String(),
		"-n", "1:2048:+2101M", "-t", "1:"+disk.TypeEFI.String(), "-c", "1:EFI", "-u", "1:"+disk.GUIDFromLabel("EFI").String(),
		"-n", "2:0:+1M", "-t", "2:"+disk.TypeBIOSBoot.String(), "-c", "2:BIOS", "-u", "2:"+disk.GUIDFromLabel("BIOS").String(), "-A", "2:set:2",
		"-n", "3:0:+2000M", "-t", "3:"+disk.TypeLinuxData.String(), "-c", "3:BOOT", "-u", "3:"+disk.GUIDFromLabel("BOOT").String(),
		"-n", "4:0:+1M", "-t", "4:"+disk.TypeLinuxData.String(), "-c", "4:META", "-u", "4:"+disk.GUIDFromLabel("META").String(), img)
	step("grub-mkimage", append([]string{"grub-mkimage", "-O", "i386-pc", "-o", core, "-p", grub.TalosPrefix}, mods...)...)
	step("grub-mkimage", append([]string{"grub-mkimage", "-O", "x86_64-efi", "-o", efiImg, "-p", grub.TalosPrefix, "-C", "xz"}, grub.TalosModules...)...)
	step("truncate", "truncate", "-s", "2101M", efi)
	step("mkfs.vfat", "mkfs.vfat", "-F", "32", "-n", "EFI", "--invariant", efi)
	step("mcopy", "mcopy", "-s", "-p", "-Q", "-m", "-i", efi, "EFI", "loader", "::")
	step("truncate", "truncate", "-s", "2000M", boot)
	step("mkfs.xfs", filepath.Join(lib, "ld-linux-x86-64.so.2"), "--library-path", lib+":"+filepath.Join(root, "lib", "x86_64-linux-gnu"),
		filepath.Join(root, "usr", "sbin", "mkfs.xfs"), "-n", "ftype=1", "-c", "options="+filepath.Join(root, "usr/share/xfsprogs/mkfs/lts_6.12.conf"),
		"-f", "-L", "BOOT", "-p", "file="+proto, "-m", "uuid="+disk.GUIDFromLabel("BOOT").String(), boot)
	step("dd", "dd", "if="+efi, "of="+img, "bs=4M", "seek=1M", "oflag=seek_bytes", "conv=notrunc,sparse", "status=none")
	step("dd", "dd", "if="+core, "of="+img, "bs=1M", "seek=2102M", "oflag=seek_bytes", "conv=notrunc", "status=none")
	step("dd", "dd", "if="+boot, "of="+img, "bs=4M", "seek=2103M", "oflag=seek_bytes", "conv=notrunc,sparse", "status=none")
	step("dd", "dd", "if="+in.metaImg, "of="+img, "bs=1M", "seek=4103M", "oflag=seek_bytes", "conv=notrunc,sparse", "status=none")
	step("dd", "dd", "if="+filepath.Join(hostGrub, "i386-pc", "boot.img"), "of="+img, "bs=446", "count=1", "conv=notrunc", "status=none")
	return []string{img, efi, boot, core, efiImg}, peak
}

// BenchmarkDualBootTools: the same disk with Talos's tool pipeline. Per-step
// times, MB allocated in the output and in the intermediate partition
// images (written, then copied), and the largest child's peak RSS.
func BenchmarkDualBootTools(b *testing.B) {
	in := newDualBootInputs(b)
	steps := map[string]time.Duration{}
	var (
		files []string
		peak  int64
	)
	b.ResetTimer()
	for b.Loop() {
		files, peak = toolPipeline(b, in, filepath.Join(in.dir, "work"), steps)
	}
	b.ReportMetric(float64(allocatedBytes(b, files[0]))/1e6, "allocated-MB")
	b.ReportMetric(float64(allocatedBytes(b, files[1:]...))/1e6, "intermediate-MB")
	b.ReportMetric(float64(peak)/(1<<20), "child-peak-RSS-MiB")
	for name, d := range steps {
		b.ReportMetric(float64(d.Milliseconds())/float64(b.N), name+"-ms/op")
	}
}

// TestPeakRSSDualBoot is run by hand for kiln's peak RSS writing the
// dual-boot disk in a process of its own:
//
//	KILN_RSS_DUALBOOT=1 go test -run TestPeakRSSDualBoot -v ./builder/disk
func TestPeakRSSDualBoot(t *testing.T) {
	if os.Getenv("KILN_RSS_DUALBOOT") == "" {
		t.Skip("set KILN_RSS_DUALBOOT")
	}
	in := newDualBootInputs(t)
	img := filepath.Join(in.dir, "disk.raw")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var before syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &before)
	start := time.Now()
	kilnDualBoot(t, in, f)
	wall := time.Since(start)
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	t.Logf("dual-boot disk: %s wall, %d MB allocated, peak RSS %d MiB (%d MiB before the write, inputs included)",
		wall.Round(time.Millisecond), allocatedBytes(t, img)/1e6, ru.Maxrss/1024, before.Maxrss/1024)
	if s := strings.TrimSpace(runTool(t, "sgdisk", "-v", img)); !strings.Contains(s, "No problems found") {
		t.Errorf("sgdisk -v: %s", s)
	}
}
