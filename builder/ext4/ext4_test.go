package ext4

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/disk"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

var smallTree = treeSpec{seed: 1, big: []int64{1<<20 + 123, 3 << 20, 5<<20 + 7}, small: 300}

// checkFS runs the readers on a standalone ext4 image of the tree at src:
// e2fsck -fn, blkid, dumpe2fs, and debugfs rdump compared with src.
func checkFS(t *testing.T, img, src, label string) {
	t.Helper()
	out := run(t, "e2fsck", "-fn", img)
	t.Logf("e2fsck -fn: %s", lastLines(out, 6))
	guid := disk.GUIDFromLabel(label).String()
	out = run(t, "blkid", "-p", "-o", "export", img)
	for _, want := range []string{"LABEL=" + label + "\n", "TYPE=ext4\n", "UUID=" + guid + "\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("blkid: missing %q in\n%s", want, out)
		}
	}
	out = run(t, "dumpe2fs", "-h", img)
	for _, re := range []string{
		`Filesystem volume name:\s+` + label + `\n`,
		`Filesystem UUID:\s+` + guid + `\n`,
		`Directory Hash Seed:\s+` + guid + `\n`,
		`Block size:\s+4096\n`,
		`Filesystem state:\s+clean\n`,
		`Last write time:\s+Thu Jan  1 00:00:00 1970\n`,
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("dumpe2fs -h: no match for %q in\n%s", re, out)
		}
	}
	dump := t.TempDir()
	var args []string
	ents, _ := os.ReadDir(src)
	for _, e := range ents {
		args = append(args, "/"+e.Name())
	}
	run(t, "debugfs", "-R", "rdump "+strings.Join(args, " ")+" "+dump, img)
	compareTrees(t, src, dump)
	out = run(t, "debugfs", "-R", "stat /manifests/private/reference/latest", img)
	if !regexp.MustCompile(`User:\s+0\s+Group:\s+0`).MatchString(out) {
		t.Errorf("owner not root:\n%s", out)
	}
}

func lastLines(s string, n int) string {
	l := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(l[max(0, len(l)-n):], " | ")
}

func TestBuild(t *testing.T) {
	testfixture.RequireTool(t, "e2fsck", "blkid", "dumpe2fs", "debugfs")
	src := filepath.Join(t.TempDir(), "cache")
	makeTree(t, src, smallTree)
	dir := t.TempDir()
	var sums []string
	for i, ss := range []int{512, 4096, 512} {
		img := filepath.Join(dir, "cache"+strconv.Itoa(i)+".ext4")
		f, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		size, err := Build(context.Background(), f, src, "IMAGECACHE", ss)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		want, _ := Size(src)
		if size != want || fileSize(t, img) != size || size%MiB != 0 {
			t.Fatalf("Build size %d, file %d, Size %d", size, fileSize(t, img), want)
		}
		if i == 0 {
			checkFS(t, img, src, "IMAGECACHE")
		}
		sums = append(sums, fileSum(t, img))
		if os.Getenv("KILN_EXT4_KEEP") != "" {
			exec.Command("cp", img, "/tmp/ext4keep"+strconv.Itoa(i)).Run()
		}
	}
	// The layout does not depend on the sector size and the output is
	// reproducible.
	for i, s := range sums[1:] {
		if s != sums[0] {
			t.Errorf("build %d differs from build 0: %s vs %s", i+1, s, sums[0])
		}
	}
}

// TestDisk writes the tree as the IMAGECACHE partition of a raw disk at both
// sector sizes and reads it back with e2fsck, blkid, sgdisk, debugfs and
// (as root) a read-only kernel mount.
func TestDisk(t *testing.T) {
	testfixture.RequireTool(t, "e2fsck", "blkid", "dumpe2fs", "debugfs", "sgdisk", "losetup")
	src := filepath.Join(t.TempDir(), "cache")
	makeTree(t, src, smallTree)
	ref := filepath.Join(t.TempDir(), "ref.ext4")
	rf, err := os.Create(ref)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Build(context.Background(), rf, src, disk.LabelIMAGECACHE, 512); err != nil {
		t.Fatal(err)
	}
	rf.Close()
	refSum := fileSum(t, ref)

	for _, ss := range []int{512, 4096} {
		t.Run(strconv.Itoa(ss), func(t *testing.T) {
			dir := t.TempDir()
			part, err := Partition(src)
			if err != nil {
				t.Fatal(err)
			}
			p := disk.Params{
				SectorSize: ss,
				EFISize:    2 * MiB,
				EFI:        disk.ContentFunc(func(context.Context, disk.Target) error { return nil }),
				Extra:      []disk.Partition{part},
			}
			p.Size = 1*MiB + p.EFISize + disk.METASize + part.Size + 1*MiB
			img := filepath.Join(dir, "disk.raw")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if err := disk.Write(context.Background(), f, p); err != nil {
				t.Fatal(err)
			}
			tb, err := disk.Layout(p)
			if err != nil {
				t.Fatal(err)
			}
			e, ok := tb.Partition(disk.LabelIMAGECACHE)
			meta, _ := tb.Partition(disk.LabelMETA)
			if !ok || e.Number != meta.Number+1 || e.Offset <= meta.Offset || e.Size != part.Size {
				t.Fatalf("IMAGECACHE entry %+v, META %+v", e, meta)
			}

			// The partition is byte-identical to the standalone image.
			pimg := filepath.Join(dir, "imagecache.ext4")
			extractRange(t, f, e.Offset, e.Size, pimg)
			if s := fileSum(t, pimg); s != refSum {
				t.Errorf("partition differs from Build output")
			}
			checkFS(t, pimg, src, disk.LabelIMAGECACHE)

			// sgdisk: the partition name, after META. sgdisk reads files as
			// 512-byte-sector disks; 4096 goes through a loop device.
			dev := img
			if ss == 4096 {
				dev = losetup(t, "-r", "-b", "4096", img)
			}
			out := run(t, "sgdisk", "-i", strconv.Itoa(e.Number), dev)
			for _, want := range []string{
				"Partition name: 'IMAGECACHE'",
				"Partition unique GUID: " + strings.ToUpper(disk.GUIDFromLabel("IMAGECACHE").String()),
				"First sector: " + strconv.FormatUint(e.FirstLBA, 10) + " ",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("sgdisk -i %d: missing %q in\n%s", e.Number, want, out)
				}
			}
			out = run(t, "sgdisk", "-p", dev)
			if !regexp.MustCompile(`(?m)^\s+` + strconv.Itoa(meta.Number) + `\s.*META\n\s+` + strconv.Itoa(e.Number) + `\s.*IMAGECACHE$`).MatchString(out) {
				t.Errorf("sgdisk -p: IMAGECACHE not right after META:\n%s", out)
			}

			// The kernel: a read-only loop device over the partition, with
			// the disk's sector size, mounted read-only.
			if os.Geteuid() != 0 {
				t.Log("not root: kernel mount skipped")
				return
			}
			pdev := losetup(t, "-r", "-b", strconv.Itoa(ss), "-o", strconv.FormatInt(e.Offset, 10),
				"--sizelimit", strconv.FormatInt(e.Size, 10), img)
			out = run(t, "blkid", "-p", "-o", "export", pdev)
			if !strings.Contains(out, "LABEL=IMAGECACHE\n") || !strings.Contains(out, "TYPE=ext4\n") {
				t.Errorf("blkid %s:\n%s", pdev, out)
			}
			mnt := t.TempDir()
			if out, err := exec.Command("mount", "-t", "ext4", "-o", "ro,noload", pdev, mnt).CombinedOutput(); err != nil {
				t.Fatalf("mount: %v: %s", err, out)
			}
			t.Cleanup(func() {
				if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
					t.Errorf("umount: %v: %s", err, out)
				}
			})
			compareTrees(t, src, mnt)
			st, err := os.Stat(filepath.Join(mnt, "blob"))
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o755 {
				t.Errorf("blob mode %v", st.Mode())
			}
		})
	}
}

// losetup attaches a loop device with args and detaches it in cleanup.
func losetup(t *testing.T, args ...string) string {
	t.Helper()
	out := run(t, "losetup", append([]string{"-f", "--show"}, args...)...)
	dev := strings.TrimSpace(out)
	t.Cleanup(func() {
		if out, err := exec.Command("losetup", "-d", dev).CombinedOutput(); err != nil {
			t.Errorf("losetup -d %s: %v: %s", dev, err, out)
		}
	})
	return dev
}

// TestSize checks the size rule: Talos's rule where it suffices, more for
// small trees and many tiny files, and that the estimate bounds what the
// built file systems really use.
func TestSize(t *testing.T) {
	testfixture.RequireTool(t, "e2fsck", "dumpe2fs")
	cases := []struct {
		name      string
		spec      treeSpec
		wantTalos bool // Size equals Talos's rule
	}{
		{"empty-ish", treeSpec{seed: 2}, false},
		{"small", smallTree, false},
		{"many-tiny", treeSpec{seed: 3, tiny: 3000}, false},
		{"blobs", treeSpec{seed: 4, big: []int64{80 << 20, 50<<20 + 1, 20 << 20}, small: 20}, true}, // two block groups
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := filepath.Join(t.TempDir(), "cache")
			makeTree(t, src, c.spec)
			tr, err := scan(src)
			if err != nil {
				t.Fatal(err)
			}
			size, err := Size(src)
			if err != nil {
				t.Fatal(err)
			}
			talos := talosSize(tr.content)
			t.Logf("%d files, %d dirs, %d bytes: Talos rule %d, Size %d", tr.files, tr.dirs, tr.content, talos, size)
			if size < talos || size%MiB != 0 {
				t.Errorf("Size %d below Talos's %d or not MiB-aligned", size, talos)
			}
			if got := size == talos; got != c.wantTalos {
				t.Errorf("Size == Talos rule: %v, want %v", got, c.wantTalos)
			}
			img := filepath.Join(t.TempDir(), "c.ext4")
			f, err := os.Create(img)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := Build(context.Background(), f, src, "IMAGECACHE", 512); err != nil {
				t.Fatal(err)
			}
			f.Close()
			run(t, "e2fsck", "-fn", img)
			out := run(t, "dumpe2fs", "-h", img)
			if field(t, out, "Block count") > blocksPerGroup {
				// The backup superblock in group 1 is usable too.
				run(t, "e2fsck", "-fn", "-b", strconv.Itoa(blocksPerGroup), "-B", strconv.Itoa(blockSize), img)
			}
			count := field(t, out, "Block count")
			free := field(t, out, "Free blocks")
			used := (count - free) * blockSize
			t.Logf("used %d of %d bytes; estimate %d", used, size, required(tr, size))
			if used > required(tr, size) {
				t.Errorf("the file system uses %d bytes, more than the estimate %d", used, required(tr, size))
			}
			if fi, fu := field(t, out, "Inode count"), field(t, out, "Free inodes"); fi-fu < int64(tr.files+tr.dirs) {
				t.Errorf("%d inodes used for %d entries", fi-fu, tr.files+tr.dirs)
			}

			if size > talos {
				// Talos's size is refused before anything is written.
				err := Content(src, "IMAGECACHE").WriteContent(context.Background(),
					disk.Target{File: f, Offset: 0, Size: talos, SectorSize: 512, Name: "IMAGECACHE"})
				if !errors.Is(err, ErrTooSmall) {
					t.Errorf("Content in Talos's %d bytes: %v, want ErrTooSmall", talos, err)
				}
			}
		})
	}
}

func field(t *testing.T, out, name string) int64 {
	t.Helper()
	m := regexp.MustCompile(`(?m)^` + name + `:\s+(\d+)$`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("dumpe2fs: no %q in\n%s", name, out)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

func TestErrors(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "cache")
	os.MkdirAll(filepath.Join(src, "blob"), 0o755)
	os.WriteFile(filepath.Join(src, "blob", "a"), []byte("a"), 0o644)
	if err := os.Symlink("a", filepath.Join(src, "blob", "l")); err != nil {
		t.Fatal(err)
	}
	if _, err := Size(src); !errors.Is(err, ErrUnsupported) {
		t.Errorf("symlink: %v, want ErrUnsupported", err)
	}
	os.Remove(filepath.Join(src, "blob", "l"))
	f, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Build(context.Background(), f, src, "A-LABEL-LONGER-THAN-16", 512); err == nil {
		t.Error("long label accepted")
	}
	if _, err := Build(context.Background(), f, src, "IMAGECACHE", 1024); err == nil {
		t.Error("sector size 1024 accepted")
	}
	if _, err := Size(filepath.Join(dir, "missing")); err == nil {
		t.Error("missing root accepted")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Build(ctx, f, src, "IMAGECACHE", 512); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestWithTime(t *testing.T) {
	testfixture.RequireTool(t, "e2fsck", "dumpe2fs", "debugfs")
	src := filepath.Join(t.TempDir(), "cache")
	makeTree(t, src, treeSpec{seed: 5, small: 3})
	img := filepath.Join(t.TempDir(), "c.ext4")
	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}
	ts := time.Date(2024, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, err := Build(context.Background(), f, src, "IMAGECACHE", 4096, WithTime(ts)); err != nil {
		t.Fatal(err)
	}
	f.Close()
	run(t, "e2fsck", "-fn", img)
	out := run(t, "env", "TZ=UTC", "dumpe2fs", "-h", img)
	if !strings.Contains(out, "Last write time:          Tue Jan  2 03:04:05 2024") ||
		!strings.Contains(out, "Filesystem created:       Tue Jan  2 03:04:05 2024") {
		t.Errorf("dumpe2fs -h:\n%s", out)
	}
	out = run(t, "env", "TZ=UTC", "debugfs", "-R", "stat /manifests/private/reference/latest", img)
	for _, f := range []string{"ctime", "atime", "mtime", "crtime"} {
		if !regexp.MustCompile(f + `: 0x65937d25:00000000 -- Tue Jan  2 03:04:05 2024`).MatchString(out) {
			t.Errorf("%s not %v:\n%s", f, ts, out)
		}
	}
}
