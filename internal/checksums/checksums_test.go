package checksums

import (
	"bytes"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

func sum(data string) string {
	s := sha512.Sum512([]byte(data))

	return hex.EncodeToString(s[:])
}

// TestFormatCheckedBySha512sum: what Format writes is what coreutils'
// sha512sum prints for the same files, and `sha512sum -c --strict` accepts
// it; a changed file fails the check.
func TestFormatCheckedBySha512sum(t *testing.T) {
	testfixture.RequireTool(t, "sha512sum")

	bin, err := exec.LookPath("sha512sum")
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	files := map[string]string{"vmlinuz-amd64": "kernel", "initramfs-amd64.xz": "", "metal-amd64.raw.xz": strings.Repeat("disk", 1000)}
	names := []string{"metal-amd64.raw.xz", "vmlinuz-amd64", "initramfs-amd64.xz"}

	var entries []Entry

	for _, n := range names {
		if err := os.WriteFile(filepath.Join(dir, n), []byte(files[n]), 0o644); err != nil {
			t.Fatal(err)
		}

		entries = append(entries, Entry{Name: n, SHA512: sum(files[n])})
	}

	out, err := Format(entries)
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(bin, names...)
	cmd.Dir = dir

	want, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}

	if !bytes.Equal(out, want) {
		t.Fatalf("Format:\n%s\nsha512sum:\n%s", out, want)
	}

	if err := os.WriteFile(filepath.Join(dir, "checksums.txt"), out, 0o644); err != nil {
		t.Fatal(err)
	}

	check := exec.Command(bin, "-c", "--strict", "checksums.txt")
	check.Dir = dir

	if b, err := check.CombinedOutput(); err != nil {
		t.Fatalf("sha512sum -c: %v\n%s", err, b)
	}

	if err := os.WriteFile(filepath.Join(dir, "vmlinuz-amd64"), []byte("kernel!"), 0o644); err != nil {
		t.Fatal(err)
	}

	again := exec.Command(bin, "-c", "--strict", "checksums.txt")
	again.Dir = dir

	if b, err := again.CombinedOutput(); err == nil || !strings.Contains(string(b), "vmlinuz-amd64: FAILED") {
		t.Fatalf("sha512sum -c passed a changed file: %v\n%s", err, b)
	}

	back, err := Parse(out)
	if err != nil {
		t.Fatal(err)
	}

	if len(back) != len(entries) {
		t.Fatalf("Parse: %d entries, want %d", len(back), len(entries))
	}

	for i := range back {
		if back[i] != entries[i] {
			t.Errorf("entry %d: %+v, want %+v", i, back[i], entries[i])
		}
	}
}

func TestParseRefuses(t *testing.T) {
	good := sum("x")

	for name, data := range map[string]string{
		"empty":             "",
		"no final newline":  good + "  a",
		"one space":         good + " a\n",
		"binary marker":     good + " *a\n",
		"upper-case hex":    strings.ToUpper(good) + "  a\n",
		"short digest":      good[:127] + "  a\n",
		"sha256":            good[:64] + "  a\n",
		"not hex":           "g" + good[1:] + "  a\n",
		"blank line":        good + "  a\n\n",
		"comment":           "# sums\n" + good + "  a\n",
		"path":              good + "  ../etc/passwd\n",
		"absolute":          good + "  /etc/passwd\n",
		"subdirectory":      good + "  v1/a\n",
		"backslash":         good + "  a\\b\n",
		"dot":               good + "  .\n",
		"dot dot":           good + "  ..\n",
		"empty name":        good + "  \n",
		"control character": good + "  a\rb\n",
		"twice":             good + "  a\n" + good + "  a\n",
		"not UTF-8":         good + "  a\xff\n",
		"too long name":     good + "  " + strings.Repeat("a", 256) + "\n",
		"over the size cap": strings.Repeat(good+"  a\n", MaxFileBytes/len(good)),
		"CRLF":              good + "  a\r\n",
		"star name":         good + "  *a\n",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := Parse([]byte(data)); !errors.Is(err, ErrInvalid) {
				t.Fatalf("Parse(%q) = %v, want ErrInvalid", data, err)
			}
		})
	}

	if _, err := Format([]Entry{{Name: "a/b", SHA512: good}}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Format of a path: %v, want ErrInvalid", err)
	}
}

// FuzzParse: Parse never panics, and what it accepts formats back to the
// same bytes.
func FuzzParse(f *testing.F) {
	f.Add([]byte(sum("a") + "  metal-amd64.raw.xz\n" + sum("") + "  vmlinuz-amd64\n"))
	f.Add([]byte(sum("a") + " *x\n"))
	f.Add([]byte("\n"))

	f.Fuzz(func(t *testing.T, data []byte) {
		entries, err := Parse(data)
		if err != nil {
			return
		}

		out, err := Format(entries)
		if err != nil {
			t.Fatalf("Format of what Parse accepted: %v", err)
		}

		if !bytes.Equal(out, data) {
			t.Fatalf("round trip: %q -> %q", data, out)
		}
	})
}
