package depmod

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/pmorjan/kmod"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// debianSubset are the directories of Debian's module tree the comparison
// copies: filesystems, libraries, crypto, block and md drivers, netfilter
// and USB (about 630 modules with aliases, devnames, softdeps, weak
// symbols and deep dependency chains), small enough for make test.
var debianSubset = []string{"kernel/fs", "kernel/lib", "kernel/crypto", "kernel/drivers/block", "kernel/drivers/md",
	"kernel/net/netfilter", "kernel/drivers/usb"}

// copyTree copies the subset of Debian's module directory (and its
// modules.order, modules.builtin, modules.builtin.modinfo) to
// <root>/lib/modules/<kver> and returns that directory.
func copyTree(t *testing.T, root string, dirs []string) string {
	t.Helper()

	src := testfixture.ModulesDir()
	testfixture.Require(t, src)

	dst := filepath.Join(root, "lib", "modules", filepath.Base(src))

	for _, f := range []string{"modules.order", "modules.builtin", "modules.builtin.modinfo"} {
		copyFile(t, filepath.Join(src, f), filepath.Join(dst, f))
	}

	for _, d := range dirs {
		err := filepath.WalkDir(filepath.Join(src, d), func(p string, e fs.DirEntry, err error) error {
			if err != nil || e.IsDir() {
				return err
			}

			rel, _ := filepath.Rel(src, p)
			copyFile(t, p, filepath.Join(dst, rel))

			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	return dst
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()

	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}

	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// runDepmod runs Debian's depmod (kmod) on root/lib/modules/<kver> with
// the search list given, as Talos's imager runs it (--config with one
// file), and returns the files it wrote.
func runDepmod(t *testing.T, root, kver string, search []string) map[string][]byte {
	t.Helper()

	testfixture.RequireTool(t, "depmod")

	conf := filepath.Join(t.TempDir(), "10-extra-modules.conf")
	if err := os.WriteFile(conf, []byte("search "+strings.Join(search, " ")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	if out, err := exec.Command("depmod", "--all", "--basedir", root, "--config", conf, kver).CombinedOutput(); err != nil {
		t.Fatalf("depmod: %v\n%s", err, out)
	}

	dir := filepath.Join(root, "lib", "modules", kver)
	got := map[string][]byte{}

	for _, f := range Files {
		data, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			t.Fatalf("depmod wrote no %s: %v", f, err)
		}

		got[f] = data

		// Leave the tree as it was for Generate.
		if err := os.Remove(filepath.Join(dir, f)); err != nil {
			t.Fatal(err)
		}
	}

	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "modules.") && !slices.Contains([]string{"modules.order", "modules.builtin", "modules.builtin.modinfo"}, e.Name()) {
			t.Errorf("depmod wrote %s, which Generate does not", e.Name())
		}
	}

	return got
}

// compare fails on any file that is not byte-for-byte depmod's, showing
// the first difference (and the index entries that differ, for .bin).
func compare(t *testing.T, want, got map[string][]byte) {
	t.Helper()

	for _, f := range Files {
		if bytes.Equal(want[f], got[f]) {
			continue
		}

		if strings.HasSuffix(f, ".bin") {
			we, ge := dumpIndex(t, want[f]), dumpIndex(t, got[f])
			t.Errorf("%s differs from depmod's (%d vs %d bytes); entries equal: %v\ndepmod: %.2000s\nours:   %.2000s",
				f, len(want[f]), len(got[f]), slices.Equal(we, ge), strings.Join(diffLines(we, ge), "\n"), strings.Join(diffLines(ge, we), "\n"))

			continue
		}

		wl, gl := strings.Split(string(want[f]), "\n"), strings.Split(string(got[f]), "\n")
		i := 0

		for i < len(wl) && i < len(gl) && wl[i] == gl[i] {
			i++
		}

		t.Errorf("%s differs from depmod's at line %d (%d vs %d lines):\ndepmod: %q\nours:   %q",
			f, i+1, len(wl), len(gl), wl[i:min(i+3, len(wl))], gl[i:min(i+3, len(gl))])
	}
}

func diffLines(a, b []string) []string {
	var out []string

	for _, l := range a {
		if !slices.Contains(b, l) {
			out = append(out, l)
		}
	}

	return out
}

// dumpIndex lists a binary index as "key\tpriority\tvalue" lines, in the
// order a reader walking the trie finds them.
func dumpIndex(t *testing.T, data []byte) []string {
	t.Helper()

	if len(data) < 12 || binary.BigEndian.Uint32(data) != indexMagic || binary.BigEndian.Uint32(data[4:]) != indexVersion {
		t.Fatalf("not a kmod index: % x", data[:min(12, len(data))])
	}

	var out []string

	var walk func(off uint32, key string)

	walk = func(off uint32, key string) {
		p := int(off & nodeMask)

		if off&nodePrefix != 0 {
			end := bytes.IndexByte(data[p:], 0)
			key += string(data[p : p+end])
			p += end + 1
		}

		var children []uint32

		first := 0

		if off&nodeChildren != 0 {
			first = int(data[p])
			last := int(data[p+1])
			p += 2

			for range last - first + 1 {
				children = append(children, binary.BigEndian.Uint32(data[p:]))
				p += 4
			}
		}

		if off&nodeValues != 0 {
			n := int(binary.BigEndian.Uint32(data[p:]))
			p += 4

			for range n {
				prio := binary.BigEndian.Uint32(data[p:])
				p += 4
				end := bytes.IndexByte(data[p:], 0)
				out = append(out, fmt.Sprintf("%s\t%d\t%s", key, prio, data[p:p+end]))
				p += end + 1
			}
		}

		for i, c := range children {
			if c != 0 {
				walk(c, key+string(rune(first+i)))
			}
		}
	}

	walk(binary.BigEndian.Uint32(data[8:]), "")

	return out
}

// TestMatchesDebianDepmod runs Generate and Debian's depmod on the same
// real module tree (Debian's kernel, a subset) and wants the same bytes in
// every file.
func TestMatchesDebianDepmod(t *testing.T) {
	root := t.TempDir()
	dir := copyTree(t, root, debianSubset)
	kver := filepath.Base(dir)

	for _, search := range [][]string{{"extras", BuiltIn}, {"updates", BuiltIn}} {
		t.Run(strings.Join(search, "_"), func(t *testing.T) {
			want := runDepmod(t, root, kver, search)

			got, err := Generate(os.DirFS(dir), Options{Search: search})
			if err != nil {
				t.Fatal(err)
			}

			compare(t, want, got)

			if t.Failed() {
				return
			}

			// What it was about: real dependencies.
			if !bytes.Contains(got["modules.dep"], []byte("kernel/fs/fat/vfat.ko: kernel/fs/fat/fat.ko\n")) {
				t.Errorf("modules.dep has no vfat -> fat line")
			}
		})
	}
}

// TestExtensionModules is Talos's case: modules an extension adds under
// extras/ (not in modules.order, so listed in depmod's hash order), one
// of them replacing a base module of the same name, and a file that is no
// module at all.
func TestExtensionModules(t *testing.T) {
	root := t.TempDir()
	dir := copyTree(t, root, []string{"kernel/fs/fat", "kernel/fs/nls", "kernel/lib", "kernel/drivers/block", "kernel/fs/isofs"})
	src := testfixture.ModulesDir()

	// The "extension": vfat and msdos moved to extras/ (so their
	// dependency fat stays in the base tree), a second isofs that must
	// win over kernel/fs/isofs/isofs.ko, and a placeholder .ko.
	for _, m := range []string{"vfat", "msdos"} {
		if err := os.Rename(filepath.Join(dir, "kernel/fs/fat", m+".ko"), filepath.Join(dir, "extras", m+".ko")); err != nil {
			if err := os.MkdirAll(filepath.Join(dir, "extras"), 0o755); err != nil {
				t.Fatal(err)
			}

			if err := os.Rename(filepath.Join(dir, "kernel/fs/fat", m+".ko"), filepath.Join(dir, "extras", m+".ko")); err != nil {
				t.Fatal(err)
			}
		}
	}

	copyFile(t, filepath.Join(src, "kernel/fs/isofs/isofs.ko"), filepath.Join(dir, "extras/isofs.ko"))
	copyFile(t, filepath.Join(src, "kernel/drivers/block/loop.ko"), filepath.Join(dir, "extras/sub/loop-extra.ko"))

	if err := os.WriteFile(filepath.Join(dir, "extras/placeholder.ko"), []byte("\x7fELF not really"), 0o644); err != nil {
		t.Fatal(err)
	}

	search := []string{"extras", BuiltIn}
	want := runDepmod(t, root, filepath.Base(dir), search)

	got, err := Generate(os.DirFS(dir), Options{Search: search})
	if err != nil {
		t.Fatal(err)
	}

	compare(t, want, got)

	for _, line := range []string{"extras/vfat.ko: kernel/fs/fat/fat.ko\n", "extras/isofs.ko:", "extras/placeholder.ko:\n"} {
		if !bytes.Contains(got["modules.dep"], []byte(line)) {
			t.Errorf("modules.dep lacks %q:\n%s", line, got["modules.dep"])
		}
	}

	if bytes.Contains(got["modules.dep"], []byte("kernel/fs/isofs/isofs.ko")) {
		t.Errorf("the base isofs.ko is still listed; extras/ should win")
	}
}

// TestModprobeReadsOurs has Debian's modprobe resolve modules from the
// indexes Generate wrote (libkmod reads only the .bin files).
func TestModprobeReadsOurs(t *testing.T) {
	testfixture.RequireTool(t, "modprobe")

	root := t.TempDir()
	dir := copyTree(t, root, []string{"kernel/fs/fat", "kernel/fs/nls", "kernel/drivers/block"})

	got, err := Generate(os.DirFS(dir), Options{Search: []string{"extras", BuiltIn}})
	if err != nil {
		t.Fatal(err)
	}

	for name, data := range got {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	kver := filepath.Base(dir)

	for _, tc := range []struct{ args, want string }{
		{"--show-depends vfat", "insmod " + dir + "/kernel/fs/fat/fat.ko \ninsmod " + dir + "/kernel/fs/fat/vfat.ko \n"},
		// An alias from modules.alias.bin.
		{"--show-depends fs-vfat", "kernel/fs/fat/vfat.ko"},
		// A built-in module from modules.builtin.bin.
		{"--show-depends zswap", "builtin zswap"},
		// A symbol from modules.symbols.bin.
		{"--resolve-alias symbol:fat_attach", "fat"},
	} {
		args := append([]string{"--dirname", root, "--set-version", kver}, strings.Fields(tc.args)...)

		out, err := exec.Command("modprobe", args...).CombinedOutput()
		if err != nil || !strings.Contains(string(out), tc.want) {
			t.Errorf("modprobe %s: %v\n%s\nwant %q", tc.args, err, out, tc.want)
		}
	}
}

// TestIndexFormat pins the trie layout on a few keys against a hand
// computation: shared prefixes split into nodes, children written first.
func TestIndexFormat(t *testing.T) {
	x := newIndex()

	for _, kv := range [][2]string{{"ask", "1"}, {"ate", "2"}, {"on", "3"}, {"once", "4"}, {"one", "5"}} {
		if err := x.insert(kv[0], kv[1], 0); err != nil {
			t.Fatal(err)
		}
	}

	got := dumpIndex(t, x.bytes())
	want := []string{"ask\t0\t1", "ate\t0\t2", "on\t0\t3", "once\t0\t4", "one\t0\t5"}

	if !slices.Equal(got, want) {
		t.Errorf("entries %q, want %q", got, want)
	}

	if err := x.insert("bad\x80", "v", 0); err == nil {
		t.Error("a non-ASCII key was accepted")
	}
}

func TestGenerateRefusesUnreadableTree(t *testing.T) {
	_, err := Generate(errFS{}, Options{})
	if err == nil {
		t.Fatal("Generate accepted a tree it cannot read")
	}
}

type errFS struct{}

func (errFS) Open(string) (fs.File, error) { return nil, io.ErrUnexpectedEOF }

// TestTalosLoaderReadsOurs loads modules by name with the loader Talos's
// machined uses (github.com/pmorjan/kmod, KernelModuleSpec controller),
// which reads the text modules.dep, modules.alias and modules.builtin,
// with the kernel calls replaced by a recorder.
func TestTalosLoaderReadsOurs(t *testing.T) {
	root := t.TempDir()
	dir := copyTree(t, root, []string{"kernel/fs/fat", "kernel/fs/nls", "kernel/drivers/block", "kernel/lib"})

	// An extension's module under extras/, needing fat from the base tree.
	if err := os.MkdirAll(filepath.Join(dir, "extras"), 0o755); err != nil {
		t.Fatal(err)
	}

	if err := os.Rename(filepath.Join(dir, "kernel/fs/fat/vfat.ko"), filepath.Join(dir, "extras/vfat.ko")); err != nil {
		t.Fatal(err)
	}

	got, err := Generate(os.DirFS(dir), Options{Search: []string{"extras", BuiltIn}})
	if err != nil {
		t.Fatal(err)
	}

	for name, data := range got {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The loader looks in <root>/<uname -r>.
	var uts syscall.Utsname
	if err := syscall.Uname(&uts); err != nil {
		t.Fatal(err)
	}

	var rel []byte
	for _, c := range uts.Release {
		if c == 0 {
			break
		}

		rel = append(rel, byte(c))
	}

	loaderRoot := t.TempDir()
	modDir := filepath.Join(loaderRoot, string(rel))

	if err := os.Symlink(dir, modDir); err != nil {
		t.Fatal(err)
	}

	var loaded []string

	k, err := kmod.New(kmod.SetRootDir(loaderRoot), kmod.SetIgnoreStatus(), kmod.SetConfigFile(""),
		kmod.SetInitFunc(func(path, _ string, _ int) error {
			rel, _ := filepath.Rel(modDir, path)
			loaded = append(loaded, rel)

			return nil
		}))
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name string
		want []string
	}{
		{"vfat", []string{"kernel/fs/fat/fat.ko", "extras/vfat.ko"}},
		{"fs-msdos", []string{"kernel/fs/fat/fat.ko", "kernel/fs/fat/msdos.ko"}}, // an alias
		{"zswap", nil}, // built in: nothing to load
	} {
		loaded = nil

		if err := k.Load(tc.name, "", 0); err != nil {
			t.Errorf("Load(%s): %v", tc.name, err)
			continue
		}

		if !slices.Equal(loaded, tc.want) {
			t.Errorf("Load(%s) loaded %v, want %v", tc.name, loaded, tc.want)
		}
	}
}

// FuzzReadModule feeds the module parser what an extension could ship.
func FuzzReadModule(f *testing.F) {
	f.Add([]byte("\x7fELF\x02\x01\x01\x00"))

	if m := testfixture.ModulesDir(); m != "" {
		if data, err := os.ReadFile(filepath.Join(m, "kernel/fs/fat/vfat.ko")); err == nil {
			f.Add(data)
		}
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		_, _ = readModule(bytes.NewReader(data), int64(len(data)))
	})
}

// TestDependsMatchesModinfo cross-checks the dependencies computed from
// symbols against what the kernel build recorded in each module's
// .modinfo depends= (modpost resolves the same symbols), for every module
// of the Debian subset whose dependencies are all in the subset.
func TestDependsMatchesModinfo(t *testing.T) {
	dir := copyTree(t, t.TempDir(), debianSubset)

	d := &depmod{fsys: os.DirFS(dir), opts: Options{MaxModuleSize: 1 << 30}, log: slog.New(slog.DiscardHandler),
		search: []string{"extras", BuiltIn}, byName: map[string]*mod{}}

	if err := d.find(); err != nil {
		t.Fatal(err)
	}

	d.buildArray()

	if err := d.sort(); err != nil {
		t.Fatal(err)
	}

	if err := d.load(); err != nil {
		t.Fatal(err)
	}

	checked := 0

	for _, m := range d.modules {
		var want []string

		for _, kv := range m.info.info {
			if kv.key == "depends" && kv.value != "" {
				for _, dep := range strings.Split(kv.value, ",") {
					want = append(want, strings.ReplaceAll(dep, "-", "_"))
				}
			}
		}

		complete := true

		for _, w := range want {
			if d.byName[w] == nil {
				complete = false
			}
		}

		if !complete {
			continue
		}

		var got []string
		for _, dep := range m.deps {
			got = append(got, dep.name)
		}

		slices.Sort(got)
		slices.Sort(want)

		if !slices.Equal(got, want) {
			t.Errorf("%s: dependencies from symbols %v, .modinfo depends= %v", m.relpath, got, want)
		}

		checked++
	}

	if checked < 500 {
		t.Errorf("only %d modules checked", checked)
	}
}
