package squashfs

import (
	"bytes"
	"crypto/rand"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestUnsquashfsReadsOurs(t *testing.T) {
	testfixture.RequireTool(t, "unsquashfs")

	bin, err := exec.LookPath("unsquashfs")
	if err != nil {
		t.Fatal(err)
	}

	big := make([]byte, 3*blockSize+17)
	_, _ = rand.Read(big[:blockSize]) // one incompressible block, stored raw

	files := map[string][]byte{
		"usr/local/bin/tool":             big,
		"usr/local/share/schematic/abcd": nil,
		"etc/cri/conf.d/x.part":          []byte("runtime\n"),
		"exact":                          bytes.Repeat([]byte("y"), blockSize),
	}

	// Enough entries to need several metadata blocks and listing runs.
	for i := range 700 {
		files[filepath.Join("many", strings.Repeat("n", i%50)+string(rune('a'+i%26))+string(rune('a'+i/26)))] = []byte{byte(i)}
	}

	img := filepath.Join(t.TempDir(), "x.sqsh")
	// KEEP_SQSH=/path keeps the image for inspection by hand.
	if p := os.Getenv("KEEP_SQSH"); p != "" {
		img = p
	}

	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}

	w, err := NewWriter(f, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}

	for name, data := range files {
		if err := w.Create(name, 0o644, bytes.NewReader(data), nil); err != nil {
			t.Fatal(err)
		}
	}

	if err := w.Symlink("usr/local/bin/alias", "tool", nil); err != nil {
		t.Fatal(err)
	}

	if err := w.Mkdir("empty", 0o700, nil); err != nil {
		t.Fatal(err)
	}

	label := map[string]string{"security.selinux": "system_u:object_r:system_state_t:s0"}
	if err := w.Create("usr/local/etc/talos/config.yaml", 0o400, strings.NewReader("version: v1alpha1\n"), label); err != nil {
		t.Fatal(err)
	}

	size, err := w.Close()
	if err != nil {
		t.Fatal(err)
	}

	_ = f.Close()

	if size%4096 != 0 {
		t.Errorf("size %d not padded to 4 KiB", size)
	}

	out, err := exec.Command(bin, "-lls", img).CombinedOutput()
	if err != nil {
		t.Fatalf("unsquashfs -lls: %v\n%s", err, out)
	}

	listing := string(out)
	for _, want := range []string{"squashfs-root/usr/local/bin/alias -> tool", "-r-------- root/root", "drwx------ root/root"} {
		if !strings.Contains(listing, want) {
			t.Errorf("listing lacks %q:\n%s", want, listing)
		}
	}

	dir := filepath.Join(t.TempDir(), "out")
	if out, err := exec.Command(bin, "-no-xattrs", "-d", dir, img).CombinedOutput(); err != nil {
		t.Fatalf("unsquashfs: %v\n%s", err, out)
	}

	for name, data := range files {
		got, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}

		if !bytes.Equal(got, data) {
			t.Errorf("%s: %d bytes differ from the %d written", name, len(got), len(data))
		}
	}

	// unsquashfs -lls does not show xattrs; its stat output counts them.
	out, _ = exec.Command(bin, "-s", img).CombinedOutput()
	if !strings.Contains(string(out), "Xattrs are compressed") {
		t.Errorf("superblock reports no xattrs:\n%s", out)
	}
}

// TestKernelMountsOurs loop-mounts an image when the test runs as root on
// a kernel with squashfs: the kernel is stricter than unsquashfs (empty
// files, files of exactly one block, xattrs).
func TestKernelMountsOurs(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount")
	}

	if fsList, _ := os.ReadFile("/proc/filesystems"); !strings.Contains(string(fsList), "squashfs") {
		t.Skip("kernel has no squashfs")
	}

	img := filepath.Join(t.TempDir(), "k.sqsh")

	f, err := os.Create(img)
	if err != nil {
		t.Fatal(err)
	}

	w, err := NewWriter(f, time.Unix(1700000000, 0))
	if err != nil {
		t.Fatal(err)
	}

	exact := bytes.Repeat([]byte("z"), blockSize)
	label := map[string]string{"security.selinux": "system_u:object_r:system_state_t:s0"}

	for _, e := range []struct {
		name string
		data []byte
		x    map[string]string
	}{{"empty", nil, nil}, {"exact", exact, nil}, {"dir/labelled", []byte("cfg\n"), label}} {
		if err := w.Create(e.name, 0o400, bytes.NewReader(e.data), e.x); err != nil {
			t.Fatal(err)
		}
	}

	if err := w.Symlink("dir/link", "labelled", nil); err != nil {
		t.Fatal(err)
	}

	if _, err := w.Close(); err != nil {
		t.Fatal(err)
	}

	_ = f.Close()

	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-o", "loop,ro", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount here: %v: %s", err, out)
	}

	defer func() { _ = exec.Command("umount", mnt).Run() }()

	if got, err := os.ReadFile(filepath.Join(mnt, "empty")); err != nil || len(got) != 0 {
		t.Errorf("empty: %q, %v", got, err)
	}

	if got, err := os.ReadFile(filepath.Join(mnt, "exact")); err != nil || !bytes.Equal(got, exact) {
		t.Errorf("exact: %d bytes, %v", len(got), err)
	}

	if got, err := os.ReadFile(filepath.Join(mnt, "dir/link")); err != nil || string(got) != "cfg\n" {
		t.Errorf("dir/link: %q, %v", got, err)
	}

	buf := make([]byte, 128)

	n, err := syscall.Getxattr(filepath.Join(mnt, "dir/labelled"), "security.selinux", buf)
	if err != nil || string(buf[:n]) != label["security.selinux"] {
		t.Errorf("security.selinux: %q, %v", buf[:max(n, 0)], err)
	}
}
