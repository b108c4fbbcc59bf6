package grub

import (
	"bufio"
	"encoding/json"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/release"
)

// The Talos version whose GRUB code is the reference (go.mod's machinery).
const talosModule = "github.com/siderolabs/talos@v1.13.9"

// oracleMain drives Talos's own grub.Quote, Config.Encode,
// PatchBlocklistsForDiskImage and ISO grub.cfg template, copied verbatim from
// the Talos module into a throwaway main package (the package is internal to
// Talos and cannot be imported). Config, MenuEntry and the A entry are
// declared as Talos's grub.go declares them (that file pulls in half of
// machined). One JSON request a line on stdin, one JSON reply a line out.
const oracleMain = `package main

import (
	"bufio"
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"text/template"
)

type BootLabel string

type Config struct {
	Default        BootLabel
	Fallback       BootLabel
	Entries        map[BootLabel]MenuEntry
	AddResetOption bool
}

type MenuEntry struct {
	Name    string
	Linux   string
	Cmdline string
	Initrd  string
}

func (c *Config) validate() error {
	if _, ok := c.Entries[c.Default]; !ok {
		return errors.New("invalid default entry")
	}
	return nil
}

//go:embed grub.cfg
var isoTemplate string

type request struct {
	Kind, Version       string
	Cmdline, Boot, Core []byte
	Reset               bool
	LBA                 uint64
}

type reply struct {
	Text, Boot, Core []byte
	Err              string
}

func main() {
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(nil, 1<<24)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		var r request
		if err := json.Unmarshal(in.Bytes(), &r); err != nil {
			panic(err)
		}
		var rep reply
		switch r.Kind {
		case "quote":
			rep.Text = []byte(Quote(string(r.Cmdline)))
		case "disk":
			c := &Config{Default: "A", Entries: map[BootLabel]MenuEntry{}, AddResetOption: r.Reset}
			c.Entries["A"] = MenuEntry{
				Name:    fmt.Sprintf("%s - %s %s", "A", "Talos", r.Version),
				Linux:   filepath.Join("/", "A", "vmlinuz"),
				Cmdline: string(r.Cmdline),
				Initrd:  filepath.Join("/", "A", "initramfs.xz"),
			}
			var b bytes.Buffer
			if err := c.Encode(&b); err != nil {
				rep.Err = err.Error()
			}
			rep.Text = b.Bytes()
		case "iso":
			tmpl := template.Must(template.New("grub.cfg").Funcs(template.FuncMap{"quote": Quote}).Parse(isoTemplate))
			var b bytes.Buffer
			if err := tmpl.Execute(&b, struct {
				Cmdline        string
				AddResetOption bool
			}{string(r.Cmdline), r.Reset}); err != nil {
				rep.Err = err.Error()
			}
			rep.Text = b.Bytes()
		case "blocklist":
			dir, _ := os.MkdirTemp("", "oracle")
			os.WriteFile(filepath.Join(dir, "boot.img"), r.Boot, 0o644)
			os.WriteFile(filepath.Join(dir, "core.img"), r.Core, 0o644)
			if err := PatchBlocklistsForDiskImage(512, r.LBA, dir); err != nil {
				rep.Err = err.Error()
			}
			rep.Boot, _ = os.ReadFile(filepath.Join(dir, "boot.img"))
			rep.Core, _ = os.ReadFile(filepath.Join(dir, "core.img"))
			os.RemoveAll(dir)
		}
		if err := out.Encode(rep); err != nil {
			panic(err)
		}
	}
}
`

// oracleRequest carries strings as []byte: JSON strings would turn invalid
// UTF-8 into U+FFFD on the way.
type oracleRequest struct {
	Kind, Version       string
	Cmdline, Boot, Core []byte
	Reset               bool
	LBA                 uint64
}

type oracleReply struct {
	Text, Boot, Core []byte
	Err              string
}

type oracle struct {
	mu  sync.Mutex
	in  *json.Encoder
	out *bufio.Scanner
}

func (o *oracle) call(t testing.TB, r oracleRequest) oracleReply {
	t.Helper()

	o.mu.Lock()
	defer o.mu.Unlock()

	if err := o.in.Encode(r); err != nil {
		t.Fatal(err)
	}

	if !o.out.Scan() {
		t.Fatalf("oracle: %v", o.out.Err())
	}

	var rep oracleReply
	if err := json.Unmarshal(o.out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}

	return rep
}

// talosOracle builds and starts the oracle from the Talos module in the Go
// module cache (downloaded from the module proxy when missing).
func talosOracle(t testing.TB) *oracle {
	t.Helper()

	goBin, err := exec.LookPath("go")
	if err != nil {
		testfixture.RequireTool(t, "go")
	}

	out, err := exec.Command(goBin, "mod", "download", "-json", talosModule).Output()

	var mod struct{ Dir string }
	if err == nil {
		err = json.Unmarshal(out, &mod)
	}

	if err != nil || mod.Dir == "" {
		if os.Getenv("KILN_REQUIRE_FIXTURES") == "1" {
			t.Fatalf("Talos source %s unavailable from the module proxy: %v", talosModule, err)
		}

		t.Skipf("Talos source %s unavailable from the module proxy: %v", talosModule, err)
	}

	src := filepath.Join(mod.Dir, "internal/app/machined/pkg/runtime/v1alpha1/bootloader/grub")
	dir := t.TempDir()

	for _, f := range []struct{ from, to string }{
		{filepath.Join(src, "quote.go"), "quote.go"},
		{filepath.Join(src, "encode.go"), "encode.go"},
		{filepath.Join(src, "blocklist.go"), "blocklist.go"},
		{filepath.Join(mod.Dir, "pkg/imager/iso/grub.cfg"), "grub.cfg"},
	} {
		b, err := os.ReadFile(f.from)
		if err != nil {
			t.Fatal(err)
		}

		if strings.HasSuffix(f.to, ".go") {
			b = []byte(strings.Replace(string(b), "\npackage grub\n", "\npackage main\n", 1))
		}

		writeTestFile(t, filepath.Join(dir, f.to), b)
	}

	writeTestFile(t, filepath.Join(dir, "main.go"), []byte(oracleMain))
	writeTestFile(t, filepath.Join(dir, "go.mod"), []byte("module oracle\n\ngo 1.22\n"))

	bin := filepath.Join(dir, "oracle")
	build := exec.Command(goBin, "build", "-o", bin, ".")
	build.Dir = dir
	build.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=mod", "GOTOOLCHAIN=local")

	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the Talos oracle: %v\n%s", err, b)
	}

	cmd := exec.Command(bin)

	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}

	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}

	cmd.Stderr = os.Stderr

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})

	sc := bufio.NewScanner(stdout)
	sc.Buffer(nil, 1<<24)

	return &oracle{in: json.NewEncoder(stdin), out: sc}
}

func writeTestFile(t testing.TB, path string, b []byte) {
	t.Helper()

	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// cmdlines are the kernel command lines compared: Talos's usual ones, every
// character Quote escapes, and random strings over a GRUB-hostile alphabet.
func cmdlines() []string {
	c := []string{
		"",
		"talos.platform=metal console=ttyS0 console=tty0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 printk.devkmsg=on ima_template=ima-ng ima_appraise=fix ima_hash=sha512 selinux=1",
		`a\b{c}d&e$f|g;h<i>j"k`,
		`talos.config=https://example.com/config?x=1&y=${uuid} talos.environment=INSTALLER_META_BASE64=MHgxMT1kdWFsLWJvb3Q=`,
		"\xff\xfe invalid utf-8 \x00 nul",
	}

	r := rand.New(rand.NewPCG(1, 2))
	alphabet := []byte("ab =\\{}&$|;<>\"'`#\n\t\xc3\xa9")

	for range 200 {
		b := make([]byte, r.IntN(40))
		for i := range b {
			b[i] = alphabet[r.IntN(len(alphabet))]
		}

		c = append(c, string(b))
	}

	return c
}

// TestConfigMatchesTalos: Quote, DiskConfig and ISOConfig produce exactly
// what Talos v1.13.9's own code produces.
func TestConfigMatchesTalos(t *testing.T) {
	o := talosOracle(t)

	for _, s := range []string{"v1.13.9", "v1.3.0", "v1.4.0", "v1.10.0-alpha.1"} {
		version := release.MustParseVersion(s)

		for _, cl := range cmdlines() {
			if got, want := Quote(cl), string(o.call(t, oracleRequest{Kind: "quote", Cmdline: []byte(cl)}).Text); got != want {
				t.Fatalf("Quote(%q) = %q, Talos %q", cl, got, want)
			}

			for _, reset := range []bool{true, false} {
				want := o.call(t, oracleRequest{Kind: "disk", Version: s, Cmdline: []byte(cl), Reset: reset})
				if got := string(DiskConfig(version, cl, reset)); got != string(want.Text) || want.Err != "" {
					t.Fatalf("DiskConfig(%q, %q, %v):\n%s\nTalos (%s):\n%s", version, cl, reset, got, want.Err, want.Text)
				}
			}

			want := o.call(t, oracleRequest{Kind: "iso", Cmdline: []byte(cl), Reset: SupportsResetOption(version)})
			if got := string(ISOConfig(version, cl)); got != string(want.Text) || want.Err != "" {
				t.Fatalf("ISOConfig(%q, %q):\n%s\nTalos (%s):\n%s", version, cl, got, want.Err, want.Text)
			}
		}
	}

	if SupportsResetOption(release.MustParseVersion("v1.3.9")) || !SupportsResetOption(release.MustParseVersion("v1.4.0")) {
		t.Error("SupportsResetOption disagrees with quirks (1.4.0 and later)")
	}
}

// TestPatchForGPTDiskMatchesTalos: the same bytes as Talos's
// PatchBlocklistsForDiskImage on the same boot.img and core.img.
func TestPatchForGPTDiskMatchesTalos(t *testing.T) {
	testfixture.Require(t, systemGrub+"/i386-pc/boot.img")

	o := talosOracle(t)
	pc := os.DirFS(systemGrub + "/i386-pc")

	boot, err := BootImage(pc)
	if err != nil {
		t.Fatal(err)
	}

	core, err := MakeImage(pc, Options{Format: FormatPC, Modules: TalosBIOSModules, Prefix: TalosPrefix})
	if err != nil {
		t.Fatal(err)
	}

	// 4302848 is where Talos's BIOS partition starts (after the 2101 MiB EFI
	// partition at 1 MiB).
	for _, lba := range []uint64{2048, 4302848, 1 << 40} {
		want := o.call(t, oracleRequest{Kind: "blocklist", Boot: boot, Core: core, LBA: lba})
		if want.Err != "" {
			t.Fatal(want.Err)
		}

		b, c := append([]byte(nil), boot...), append([]byte(nil), core...)
		if err := PatchForGPTDisk(b, c, lba); err != nil {
			t.Fatal(err)
		}

		if string(b) != string(want.Boot) || string(c) != string(want.Core) {
			t.Fatalf("LBA %d: boot.img differs at 0x%x, core.img at 0x%x", lba, firstDiff(b, want.Boot), firstDiff(c, want.Core))
		}
	}
}
