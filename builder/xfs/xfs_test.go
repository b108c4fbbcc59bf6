package xfs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/builder/disk"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"golang.org/x/sys/unix"
)

// want is the content map readFS returns for files.
func want(t testing.TB, files []File) map[string]string {
	t.Helper()
	m := map[string]string{}
	for _, f := range files {
		parts, err := cleanPath(f.Path)
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i < len(parts); i++ {
			m[strings.Join(parts[:i], "/")] = "dir"
		}
		m[strings.Join(parts, "/")] = fileSum(t, f)
	}
	return m
}

func checkReadBack(t testing.TB, img string, files []File) {
	t.Helper()
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	st, _ := f.Stat()
	got, err := readFS(f, st.Size())
	if err != nil {
		t.Fatalf("readFS: %v", err)
	}
	if w := want(t, files); !maps.Equal(got, w) {
		for k, v := range w {
			if got[k] != v {
				t.Errorf("%s: got %q, want %q", k, got[k], v)
			}
		}
		for k := range got {
			if _, ok := w[k]; !ok {
				t.Errorf("%s: unexpected", k)
			}
		}
	}
}

// repairClean runs xfs_repair -n and fails on a non-zero exit or on any
// line that is not one of its progress lines.
func repairClean(t testing.TB, img string) {
	t.Helper()
	out, err := exec.Command("xfs_repair", "-n", "-f", img).CombinedOutput()
	if err != nil {
		t.Fatalf("xfs_repair -n: %v\n%s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "Phase ") || strings.HasPrefix(l, "- ") ||
			strings.Contains(l, "host filesystem geometry") || strings.HasPrefix(l, "Repair may fail") ||
			strings.HasPrefix(l, "the image and the host") || strings.HasPrefix(l, "No modify flag set") {
			continue
		}
		t.Errorf("xfs_repair -n: %s", l)
	}
}

// sbFields returns xfs_db's print of superblock ag as a map.
func sbFields(t testing.TB, img string, ag int) map[string]string {
	t.Helper()
	out := run(t, "xfs_db", "-r", "-c", fmt.Sprintf("sb %d", ag), "-c", "print", img)
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, " = "); ok {
			m[k] = v
		}
	}
	return m
}

var bootUUID = disk.GUIDFromLabel("BOOT").String()

func TestGUID(t *testing.T) {
	// talos-formats.md §4.2: GUIDFromLabel("BOOT").
	if bootUUID != "24c73076-4092-85dd-9d98-686a2dbf6d81" {
		t.Fatalf("GUIDFromLabel(BOOT) = %s", bootUUID)
	}
}

// TestRepair builds the BOOT tree with each feature set Talos uses that
// xfsprogs 6.1 understands, at both sector sizes, and checks it with
// xfs_repair -n, xfs_db and the package's own reader.
func TestRepair(t *testing.T) {
	testfixture.RequireTool(t, "xfs_repair", "xfs_db")
	files := bootFiles(300)
	for _, c := range []struct {
		name string
		f    Features
		ss   int
		size int64
	}{
		{"lts_6.12", LTS612, 512, BootSize},
		{"lts_6.12-4k", LTS612, 4096, BootSize},
		{"lts_6.6-1000MiB", LTS66, 512, LegacyBootSize},
		{"lts_6.1", LTS61, 512, LegacyBootSize},
		{"lts_6.1-4k", LTS61, 4096, BootSize},
		{"minimal", Features{}, 512, 300 * MiB},
	} {
		t.Run(c.name, func(t *testing.T) {
			img := buildImage(t, c.size, files, Options{Features: &c.f, SectorSize: c.ss, Time: time.Unix(1767225600, 5)})
			repairClean(t, img)
			sb := sbFields(t, img, 0)
			for k, v := range map[string]string{
				"fname": `"BOOT\000\000\000\000\000\000\000\000"`, "uuid": bootUUID,
				"sectsize": strconv.Itoa(c.ss), "blocksize": "4096", "inodesize": "512",
			} {
				if sb[k] != v {
					t.Errorf("sb 0 %s = %q, want %q", k, sb[k], v)
				}
			}
			label := run(t, "xfs_db", "-r", "-c", "label", "-c", "uuid", img)
			if !strings.Contains(label, `label = "BOOT"`) || !strings.Contains(label, "UUID = "+bootUUID) {
				t.Errorf("xfs_db label/uuid:\n%s", label)
			}
			if out := run(t, "blkid", "-p", "-o", "export", img); !strings.Contains(out, "TYPE=xfs\n") ||
				!strings.Contains(out, "LABEL=BOOT\n") || !strings.Contains(out, "UUID="+bootUUID+"\n") {
				t.Errorf("blkid:\n%s", out)
			}
			checkReadBack(t, img, files)
			// xfs_db reads a file's data back through its own bmap code.
			out := run(t, "xfs_db", "-r", "-c", "path /grub/grub.cfg", "-c", "bmap", img)
			if !regexp.MustCompile(`data offset 0 startblock \d+ \(\d+/\d+\) count 1 flag 0`).MatchString(out) {
				t.Errorf("xfs_db bmap grub.cfg:\n%s", out)
			}
		})
	}
}

// TestExchange: lts_6.18's exchange feature is a superblock bit with no
// other on-disk trace, which xfsprogs 6.1 refuses as unknown. Its image
// equals lts_6.12's except for the superblocks, so lts_6.12's checks
// (TestRepair, TestRebuild, the kernel mounts) cover it; the host kernel
// (TestKernelLoop) mounts it as it is.
func TestExchange(t *testing.T) {
	files := bootFiles(50)
	a := recordWrites(t, BootSize, files, Options{Features: &LTS612})
	b := recordWrites(t, BootSize, files, Options{Features: &LTS618})
	if len(a) != len(b) {
		t.Fatalf("%d writes vs %d", len(a), len(b))
	}
	var sbs int
	for off, w := range a {
		if b[off] == w {
			continue
		}
		if off%(BootSize/4) != 0 {
			t.Errorf("write at %d differs", off)
		}
		sbs++
	}
	if sbs != 4 {
		t.Errorf("%d superblock writes differ, want 4", sbs)
	}
}

// recorder is an io.WriterAt that keeps only a hash of each write.
type recorder struct {
	mu     sync.Mutex
	writes map[int64]string
	bytes  int64
	n      int
}

func (r *recorder) WriteAt(p []byte, off int64) (int, error) {
	s := sha256.Sum256(p)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.writes != nil {
		r.writes[off] = fmt.Sprintf("%d:%x", len(p), s)
	}
	r.bytes += int64(len(p))
	r.n++
	return len(p), nil
}

func recordWrites(t testing.TB, size int64, files []File, o Options) map[int64]string {
	t.Helper()
	r := &recorder{writes: map[int64]string{}}
	if err := Write(context.Background(), r, size, files, o); err != nil {
		t.Fatal(err)
	}
	return r.writes
}

// TestRebuild is a differential test against xfs_repair's own allocator
// bookkeeping: xfs_repair (not -n) rebuilds every AG's free space, inode
// and reverse-mapping B+trees from what it finds in the inodes. The rebuilt
// reverse mappings of every file and directory must equal ours, and each
// AG must have the same free-block total; repair must find nothing to fix.
func TestRebuild(t *testing.T) {
	testfixture.RequireTool(t, "xfs_repair", "xfs_db")
	for _, ss := range []int{512, 4096} {
		t.Run(strconv.Itoa(ss), func(t *testing.T) {
			img := buildImage(t, BootSize, bootFiles(400), Options{Features: &LTS612, SectorSize: ss})
			fixed := filepath.Join(t.TempDir(), "fixed.xfs")
			run(t, "cp", "--sparse=always", img, fixed)
			out := run(t, "xfs_repair", "-f", fixed)
			for _, l := range strings.Split(out, "\n") {
				l = strings.TrimSpace(l)
				if l != "" && !strings.HasPrefix(l, "Phase ") && !strings.HasPrefix(l, "- ") && l != "done" &&
					!strings.Contains(l, "host filesystem") && !strings.HasPrefix(l, "Repair may fail") && !strings.HasPrefix(l, "the image and") {
					t.Errorf("xfs_repair: %s", l)
				}
			}
			inodeMaps := func(img string) []string {
				var r []string
				for _, l := range strings.Split(run(t, "xfs_db", "-r", "-c", "fsmap", img), "\n") {
					_, rec, _ := strings.Cut(l, ": ")
					if f := strings.Fields(rec); len(f) > 4 && !strings.HasPrefix(f[4], "-") {
						r = append(r, rec)
					}
				}
				return r
			}
			a, b := inodeMaps(img), inodeMaps(fixed)
			if len(a) < 400 || !slices.Equal(a, b) {
				t.Errorf("inode reverse mappings differ after xfs_repair (%d vs %d records)", len(a), len(b))
			}
			for ag := range 4 {
				sum := func(img string) string {
					out := run(t, "xfs_db", "-r", "-c", fmt.Sprintf("agf %d", ag), "-c", "print freeblks flcount btreeblks", img)
					var n int
					for _, f := range regexp.MustCompile(`= (\d+)`).FindAllStringSubmatch(out, -1) {
						v, _ := strconv.Atoi(f[1])
						n += v
					}
					return strconv.Itoa(n)
				}
				if x, y := sum(img), sum(fixed); x != y {
					t.Errorf("AG %d: free+agfl+btree blocks %s, after xfs_repair %s", ag, x, y)
				}
			}
			for _, f := range []string{"icount", "ifree", "fdblocks"} {
				if x, y := sbFields(t, img, 0)[f], sbFields(t, fixed, 0)[f]; x != y {
					t.Errorf("sb %s %s, after xfs_repair %s", f, x, y)
				}
			}
		})
	}
}

// TestMkfsGeometry compares the geometry with Debian's mkfs.xfs for the
// same size, sector size and features (those xfsprogs 6.1 knows): every
// superblock field but the counters, and the AG headers' shape.
func TestMkfsGeometry(t *testing.T) {
	testfixture.RequireTool(t, "mkfs.xfs", "xfs_db")
	for _, c := range []struct {
		size int64
		ss   int
		f    Features
	}{
		{BootSize, 512, LTS612},
		{BootSize, 4096, LTS612},
		{LegacyBootSize, 512, LTS66},
		{LegacyBootSize + 12345*4096 + 100, 512, LTS61},
		{301 * MiB, 4096, Features{}},
	} {
		t.Run(fmt.Sprintf("%d-%d-%s", c.size, c.ss, strings.ReplaceAll(c.f.String(), " ", ",")), func(t *testing.T) {
			dir := t.TempDir()
			ref := filepath.Join(dir, "mkfs.xfs")
			if err := os.WriteFile(ref, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			os.Truncate(ref, c.size)
			b := func(v bool) string {
				if v {
					return "1"
				}
				return "0"
			}
			f := c.f
			run(t, "mkfs.xfs", "-q", "-f", "-L", "BOOT", "-s", "size="+strconv.Itoa(c.ss), "-n", "ftype=1",
				"-m", "crc=1,finobt="+b(f.Finobt)+",rmapbt="+b(f.Rmapbt)+",reflink="+b(f.Reflink)+",inobtcount="+b(f.Inobtcount)+
					",bigtime="+b(f.Bigtime)+",uuid="+bootUUID,
				"-i", "sparse="+b(f.Sparse)+",nrext64="+b(f.Nrext64), ref)
			img := buildImage(t, c.size, nil, Options{Features: &f, SectorSize: c.ss})
			repairClean(t, img)
			counters := map[string]bool{"icount": true, "ifree": true, "fdblocks": true, "crc": true}
			for ag := range 4 {
				a, b := sbFields(t, ref, ag), sbFields(t, img, ag)
				for k, v := range a {
					if !counters[k] && b[k] != v {
						t.Errorf("sb %d %s = %q, mkfs.xfs %q", ag, k, b[k], v)
					}
				}
				// An empty file system: the AG headers match field for field.
				for _, hdr := range []string{"agf", "agi", "agfl"} {
					x := run(t, "xfs_db", "-r", "-c", fmt.Sprintf("%s %d", hdr, ag), "-c", "print", ref)
					y := run(t, "xfs_db", "-r", "-c", fmt.Sprintf("%s %d", hdr, ag), "-c", "print", img)
					strip := regexp.MustCompile(`(?m)^crc = .*$`)
					if strip.ReplaceAllString(x, "") != strip.ReplaceAllString(y, "") {
						t.Errorf("%s %d differs:\nmkfs.xfs:\n%s\nours:\n%s", hdr, ag, x, y)
					}
				}
			}
			if a, b := run(t, "xfs_db", "-r", "-c", "fsmap", ref), run(t, "xfs_db", "-r", "-c", "fsmap", img); c.f.Rmapbt && a != b {
				t.Errorf("fsmap differs:\nmkfs.xfs:\n%s\nours:\n%s", a, b)
			}
		})
	}
}

// TestKernelLoop mounts the images with the host kernel through a loop
// device (root only), reads every file, then writes through the kernel
// (an upgrade's worth: new kernel and initramfs, rewritten grub.cfg, deleted
// files) and checks the result with xfs_repair -n again.
func TestKernelLoop(t *testing.T) {
	testfixture.RequireTool(t, "xfs_repair", "losetup", "mount")
	if os.Geteuid() != 0 {
		t.Skip("not root: loop mount skipped (make e2e boots the Debian kernel in QEMU instead)")
	}
	files := bootFiles(300)
	for _, c := range []struct {
		name string
		f    Features
		ss   int
	}{{"lts_6.18", LTS618, 512}, {"lts_6.12-4k", LTS612, 4096}, {"lts_6.1", LTS61, 512}} {
		t.Run(c.name, func(t *testing.T) {
			img := buildImage(t, BootSize, files, Options{Features: &c.f, SectorSize: c.ss})
			dev := strings.TrimSpace(run(t, "losetup", "-f", "--show", "-b", strconv.Itoa(c.ss), img))
			t.Cleanup(func() { exec.Command("losetup", "-d", dev).Run() })
			mnt := t.TempDir()
			out, err := exec.Command("mount", "-t", "xfs", dev, mnt).CombinedOutput()
			if err != nil {
				t.Skipf("mount: %v: %s (no XFS in this kernel?)", err, out)
			}
			mounted := true
			t.Cleanup(func() {
				if mounted {
					exec.Command("umount", mnt).Run()
				}
			})
			got := map[string]string{}
			filepath.WalkDir(mnt, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					t.Error(err)
					return nil
				}
				rel, _ := filepath.Rel(mnt, p)
				if rel == "." {
					return nil
				}
				if d.IsDir() {
					got[rel] = "dir"
					return nil
				}
				f, _ := os.Open(p)
				h := sha256.New()
				io.Copy(h, f)
				f.Close()
				got[rel] = fmt.Sprintf("%x", h.Sum(nil))
				return nil
			})
			if w := want(t, files); !maps.Equal(got, w) {
				t.Errorf("kernel sees %d entries, want %d (or contents differ)", len(got), len(w))
			}
			st, _ := os.Stat(filepath.Join(mnt, "grub/fonts"))
			if st == nil || st.Mode().Perm() != 0o700 {
				t.Errorf("grub/fonts mode %v", st)
			}
			// Write through the kernel as a Talos upgrade does.
			os.MkdirAll(filepath.Join(mnt, "B"), 0o755)
			big := bytes.Repeat([]byte("kiln"), 5<<20)
			for _, p := range []string{"B/vmlinuz", "B/initramfs.xz", "grub/grub.cfg"} {
				if err := os.WriteFile(filepath.Join(mnt, p), big, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			for _, p := range []string{"A", "grub/i386-pc", "deep"} {
				if err := os.RemoveAll(filepath.Join(mnt, p)); err != nil {
					t.Fatal(err)
				}
			}
			if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
				t.Fatalf("umount: %v: %s", err, out)
			}
			mounted = false
			exec.Command("losetup", "-d", dev).Run()
			if c.f.Exchange {
				return // xfsprogs 6.1 does not know the exchange bit
			}
			repairClean(t, img)
		})
	}
}

func TestErrors(t *testing.T) {
	ok := genFile("a", 10, 1)
	long := strings.Repeat("n", 256)
	cases := []struct {
		name  string
		size  int64
		files []File
		opts  Options
		err   error
		msg   string
	}{
		{"too small", 100 * MiB, nil, Options{}, ErrInvalid, "outside"},
		{"too big", 100 << 30, nil, Options{}, ErrInvalid, "outside"},
		{"empty path", BootSize, []File{genFile("", 1, 1)}, Options{}, ErrInvalid, "empty path"},
		{"dotdot", BootSize, []File{genFile("a/../b", 1, 1)}, Options{}, ErrInvalid, "not clean"},
		{"dot", BootSize, []File{genFile("./b", 1, 1)}, Options{}, ErrInvalid, "not clean"},
		{"long name", BootSize, []File{genFile("a/"+long, 1, 1)}, Options{}, ErrInvalid, "256 bytes"},
		{"nul", BootSize, []File{genFile("a\x00b", 1, 1)}, Options{}, ErrInvalid, "NUL"},
		{"duplicate", BootSize, []File{ok, ok}, Options{}, ErrInvalid, `duplicate path "a"`},
		{"file under file", BootSize, []File{ok, genFile("a/b", 1, 1)}, Options{}, ErrInvalid, `duplicate path "a"`},
		{"dir twice", BootSize, []File{{Path: "d", Mode: fs.ModeDir}, {Path: "d", Mode: fs.ModeDir}}, Options{}, ErrInvalid, "duplicate"},
		{"symlink", BootSize, []File{{Path: "l", Mode: fs.ModeSymlink}}, Options{}, ErrInvalid, "only regular files"},
		{"negative", BootSize, []File{genFile("a", -1, 1)}, Options{}, ErrInvalid, "size"},
		{"no open", BootSize, []File{{Path: "a", Size: 1}}, Options{}, ErrInvalid, "Open"},
		{"label", BootSize, nil, Options{Label: "THIRTEEN-LONG"}, ErrInvalid, "label"},
		{"sector", BootSize, nil, Options{SectorSize: 1024}, ErrInvalid, "sector size"},
		{"inobtcount", BootSize, nil, Options{Features: &Features{Inobtcount: true}}, ErrInvalid, "finobt"},
		{"file too large", LegacyBootSize, []File{genFile("A/initramfs.xz", LegacyBootSize, 1)}, Options{}, ErrNoSpace, "A/initramfs.xz"},
		{"files too large", LegacyBootSize, []File{genFile("a", 500*MiB, 1), genFile("b", 500*MiB, 1)}, Options{}, ErrNoSpace, "b ("},
		{"legacy time", BootSize, nil, Options{Features: &Features{}, Time: time.Unix(1<<33, 0)}, ErrInvalid, "bigtime"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := &recorder{}
			err := Write(context.Background(), r, c.size, c.files, c.opts)
			if !errors.Is(err, c.err) || !strings.Contains(err.Error(), c.msg) {
				t.Fatalf("err = %v, want %v containing %q", err, c.err, c.msg)
			}
			if r.n != 0 {
				t.Errorf("%d writes before the error", r.n)
			}
		})
	}
	// Too many entries for the leaf directory form.
	var many []File
	for i := range 600 {
		many = append(many, genFile(fmt.Sprintf("d/%04d-%s", i, strings.Repeat("x", 20)), 0, 1))
	}
	if _, err := NewPlan(BootSize, many, Options{}); !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), `directory "/d"`) {
		t.Errorf("600 entries: %v", err)
	}
	// Contents that do not match the declared size.
	for _, c := range []struct {
		name string
		f    File
		msg  string
	}{
		{"short", File{Path: "a", Size: 10, Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("12345")), nil }}, "shorter"},
		{"long", File{Path: "a", Size: 3, Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("12345")), nil }}, "longer"},
		{"open fails", File{Path: "a", Size: 3, Open: func() (io.ReadCloser, error) { return nil, os.ErrPermission }}, "permission"},
	} {
		if err := Write(context.Background(), &recorder{}, BootSize, []File{c.f}, Options{}); err == nil || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Write(ctx, &recorder{}, BootSize, bootFiles(1), Options{}); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestForConfig(t *testing.T) {
	for cfg, f := range map[string]Features{
		"/usr/share/xfsprogs/mkfs/lts_6.18.conf": LTS618, "lts_6.12.conf": LTS612, "lts_6.6.conf": LTS66, "lts_6.1.conf": LTS61,
	} {
		got, err := ForConfig(cfg)
		if err != nil || got != f {
			t.Errorf("ForConfig(%s) = %v, %v", cfg, got, err)
		}
	}
	if _, err := ForConfig("lts_5.4.conf"); !errors.Is(err, ErrInvalid) {
		t.Errorf("unknown config: %v", err)
	}
}

// TestDeterministic: the same input gives the same bytes, and the BOOT
// partition of a disk image is byte for byte the standalone image.
func TestDeterministic(t *testing.T) {
	files := bootFiles(100)
	a := buildImage(t, BootSize, files, Options{})
	b := buildImage(t, BootSize, files, Options{})
	if fileHash(t, a, 0, BootSize) != fileHash(t, b, 0, BootSize) {
		t.Fatal("two builds differ")
	}
	for _, ss := range []int{512, 4096} {
		part := Partition(BootSize, files, Options{})
		p := disk.Params{
			SectorSize: ss,
			EFISize:    2 * MiB,
			EFI:        disk.ContentFunc(func(context.Context, disk.Target) error { return nil }),
			Extra:      []disk.Partition{part},
		}
		p.Size = 1*MiB + p.EFISize + disk.METASize + part.Size + 1*MiB
		img := filepath.Join(t.TempDir(), "disk.raw")
		f, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		if err := disk.Write(context.Background(), f, p); err != nil {
			t.Fatal(err)
		}
		f.Close()
		tb, _ := disk.Layout(p)
		e, _ := tb.Partition("BOOT")
		want := a
		if ss == 4096 {
			want = buildImage(t, BootSize, files, Options{SectorSize: 4096})
		}
		if fileHash(t, img, e.Offset, e.Size) != fileHash(t, want, 0, BootSize) {
			t.Errorf("sector %d: BOOT partition differs from Build output", ss)
		}
	}
}

// fileHash hashes [off, off+n) of the file at p as (offset, block) pairs
// of its non-zero 4 KiB blocks, reading only its data extents (a 2000 MiB
// image is mostly holes).
func fileHash(t testing.TB, p string, off, n int64) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	buf := make([]byte, 1<<20)
	end := off + n
	for pos := off; pos < end; {
		d, err := f.Seek(pos, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) || d >= end {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		hole, err := f.Seek(d, unix.SEEK_HOLE)
		if err != nil {
			t.Fatal(err)
		}
		hole = min(hole, end)
		for at := d; at < hole; {
			k, err := f.ReadAt(buf[:min(int64(len(buf)), hole-at)], at)
			if err != nil && k == 0 {
				t.Fatal(err)
			}
			for i := 0; i < k; i += blockSize {
				blk := buf[i:min(i+blockSize, k)]
				if !allZero(blk) {
					fmt.Fprintf(h, "%d:", at+int64(i)-off)
					h.Write(blk)
				}
			}
			at += int64(k)
		}
		pos = hole
	}
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestSparse: bytes written are the file data plus a little metadata, and
// the image allocates no more than that.
func TestSparse(t *testing.T) {
	files := bootFiles(300)
	r := &recorder{}
	if err := Write(context.Background(), r, BootSize, files, Options{}); err != nil {
		t.Fatal(err)
	}
	p, _ := NewPlan(BootSize, files, Options{})
	meta := r.bytes - p.DataBytes()
	t.Logf("data %d bytes, written %d bytes in %d writes (metadata %d)", p.DataBytes(), r.bytes, r.n, meta)
	if meta < 0 || meta > 1<<20 {
		t.Errorf("metadata writes %d bytes", meta)
	}
	img := buildImage(t, BootSize, files, Options{})
	var st syscallStat
	if alloc := allocated(t, img, &st); alloc > p.DataBytes()+2<<20 {
		t.Errorf("image allocates %d bytes for %d of data", alloc, p.DataBytes())
	}
}

// TestGRUB reads the image with GRUB's own XFS driver (grub-fstest, Debian's
// GRUB 2.06, which knows nrext64 but not exchange): the reader that boots
// BOOT on BIOS machines. It lists the short-form, block and leaf
// directories and checks grub.cfg and the kernel and initramfs CRCs.
func TestGRUB(t *testing.T) {
	testfixture.RequireTool(t, "grub-fstest")
	files := bootFiles(300)
	byPath := map[string]File{}
	for _, f := range files {
		byPath[f.Path] = f
	}
	for _, c := range []struct {
		name string
		f    Features
		ss   int
	}{{"lts_6.12", LTS612, 512}, {"lts_6.12-4k", LTS612, 4096}, {"lts_6.1", LTS61, 512}} {
		t.Run(c.name, func(t *testing.T) {
			img := buildImage(t, BootSize, files, Options{Features: &c.f, SectorSize: c.ss})
			for dir, n := range map[string]int{"/": 3, "/A": 2, "/grub": 5, "/grub/i386-pc": 300, "/grub/locale": 40, "/deep/a/b/c/d/e": 1} {
				if got := len(strings.Fields(run(t, "grub-fstest", img, "ls", dir))); got != n {
					t.Errorf("grub ls %s: %d entries, want %d", dir, got, n)
				}
			}
			rc, _ := byPath["grub/grub.cfg"].Open()
			cfg, _ := io.ReadAll(rc)
			if got := run(t, "grub-fstest", img, "cat", "/grub/grub.cfg"); got != string(cfg) {
				t.Errorf("grub cat grub.cfg: %q", got)
			}
			for _, p := range []string{"A/vmlinuz", "A/initramfs.xz", "grub/i386-pc/module_299_with_a_longer_name.mod"} {
				rc, _ := byPath[p].Open()
				h := crc32.NewIEEE()
				io.Copy(h, rc)
				if got := strings.TrimSpace(run(t, "grub-fstest", img, "crc", "/"+p)); got != fmt.Sprintf("%08x", h.Sum32()) {
					t.Errorf("grub crc %s = %s, want %08x", p, got, h.Sum32())
				}
			}
		})
	}
}

// TestLargestDirectory fills one directory to the most entries the leaf
// form holds (found by NewPlan refusing one more) and checks it.
func TestLargestDirectory(t *testing.T) {
	testfixture.RequireTool(t, "xfs_repair")
	var files []File
	for i := 0; ; i++ {
		next := append(files, genFile(fmt.Sprintf("d/entry-%04d", i), int64(i%3), uint64(i)))
		if _, err := NewPlan(MinSize, next, Options{}); err != nil {
			if !errors.Is(err, ErrInvalid) || i < 400 {
				t.Fatalf("%d entries: %v", i+1, err)
			}
			break
		}
		files = next
	}
	t.Logf("%d entries fit", len(files))
	img := buildImage(t, MinSize, files, Options{Features: &LTS612})
	repairClean(t, img)
	checkReadBack(t, img, files)
}

// TestMkfsProto builds the same tree with mkfs.xfs -p protofile (what Talos
// runs) and with Write: the geometry (every superblock field but the
// counters) is the same, xfs_repair -n is clean on both and both hold the
// same names.
func TestMkfsProto(t *testing.T) {
	testfixture.RequireTool(t, "mkfs.xfs", "xfs_db", "xfs_repair")
	files, proto := benchTree(t, bootFiles(60))
	ref := filepath.Join(t.TempDir(), "mkfs.xfs")
	if err := os.WriteFile(ref, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	os.Truncate(ref, BootSize)
	run(t, "mkfs.xfs", "-q", "-f", "-n", "ftype=1", "-L", "BOOT",
		"-m", "crc=1,finobt=1,rmapbt=1,reflink=1,inobtcount=1,bigtime=1,uuid="+bootUUID,
		"-i", "sparse=1,nrext64=1", "-p", proto, ref)
	img := buildImage(t, BootSize, files, Options{Features: &LTS612})
	repairClean(t, ref)
	repairClean(t, img)
	a, b := sbFields(t, ref, 0), sbFields(t, img, 0)
	for k, v := range a {
		if k != "icount" && k != "ifree" && k != "fdblocks" && k != "crc" && b[k] != v {
			t.Errorf("sb 0 %s = %q, mkfs.xfs -p %q", k, b[k], v)
		}
	}
	for _, dir := range []string{"/", "/A", "/grub", "/grub/i386-pc", "/grub/locale", "/deep/a/b/c/d/e"} {
		names := func(img string) []string {
			var n []string
			for _, l := range strings.Split(run(t, "xfs_db", "-r", "-c", "ls "+dir, img), "\n") {
				if f := strings.Fields(l); len(f) == 7 {
					n = append(n, f[5]+" "+f[2])
				}
			}
			slices.Sort(n)
			return n
		}
		if x, y := names(ref), names(img); !slices.Equal(x, y) || len(x) < 3 {
			t.Errorf("ls %s: mkfs.xfs -p %v, ours %v", dir, x, y)
		}
	}
}

// zeroFile is a file of zeros: the writer leaves it as holes, so a file
// larger than an AG costs nothing to write.
func zeroFile(path string, size int64) File {
	return File{Path: path, Size: size, Open: func() (io.ReadCloser, error) {
		return io.NopCloser(io.LimitReader(zeroReader{}, size)), nil
	}}
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) { clear(p); return len(p), nil }

// TestLargeFile places files larger than an allocation group: their
// extents split at AG ends, around the next AGs' headers and the log.
func TestLargeFile(t *testing.T) {
	testfixture.RequireTool(t, "xfs_repair", "xfs_db")
	files := []File{zeroFile("A/big", 600*MiB), genFile("A/after", 3*MiB+5, 9), zeroFile("B/big2", 450*MiB), bytesFile("c", []byte("x"))}
	img := buildImage(t, BootSize, files, Options{Features: &LTS612})
	repairClean(t, img)
	checkReadBack(t, img, files)
	out := run(t, "xfs_db", "-r", "-c", "path /A/big", "-c", "bmap", img)
	if n := strings.Count(out, "data offset"); n < 2 {
		t.Errorf("A/big in %d extents:\n%s", n, out)
	}
	// B/big2 runs from AG 1 into AG 2, around its headers and the log.
	out = run(t, "xfs_db", "-r", "-c", "path /B/big2", "-c", "bmap", img)
	if !strings.Contains(out, "(1/") || !strings.Contains(out, "(2/16397)") {
		t.Errorf("B/big2 extents:\n%s", out)
	}
	if _, err := NewPlan(BootSize, append(files, zeroFile("d", 1000*MiB)), Options{}); !errors.Is(err, ErrNoSpace) {
		t.Errorf("overfull: %v", err)
	}
}
