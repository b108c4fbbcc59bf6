package xfs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// memImage is a sparse in-memory image: 4 KiB pages, absent pages read as
// zeros.
type memImage struct {
	mu    sync.Mutex
	pages map[int64][]byte
	size  int64
}

func newMemImage(size int64) *memImage { return &memImage{pages: map[int64][]byte{}, size: size} }

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > m.size {
		return 0, fmt.Errorf("write of %d at %d outside %d", len(p), off, m.size)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := 0; n < len(p); {
		pg, in := (off+int64(n))/4096, int((off+int64(n))%4096)
		b := m.pages[pg]
		if b == nil {
			b = make([]byte, 4096)
			m.pages[pg] = b
		}
		n += copy(b[in:], p[n:])
	}
	return len(p), nil
}

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(p)
	for n := 0; n < len(p); {
		pg, in := (off+int64(n))/4096, int((off+int64(n))%4096)
		k := min(len(p)-n, 4096-in)
		if b := m.pages[pg]; b != nil {
			copy(p[n:n+k], b[in:])
		}
		n += k
	}
	return len(p), nil
}

// treeFromBytes turns fuzz input into a file list: every 4 bytes make one
// entry (depth, name length, kind, size), names drawn from a small alphabet
// so that duplicates, shared parents and all directory forms occur.
// With valid, the refusable cases (".", over-long names, duplicates, a file
// larger than the file system) are left out.
func treeFromBytes(data []byte, valid bool) []File {
	var files []File
	var dirs []string
	for i := 0; i+4 <= len(data) && len(files) < 700; i += 4 {
		a, b, c, d := data[i], data[i+1], data[i+2], data[i+3]
		parent := ""
		if len(dirs) > 0 && a%4 != 0 {
			parent = dirs[int(a)%len(dirs)] + "/"
		}
		nl := 1 + int(b)%40
		if b >= 250 && !valid {
			nl = 200 + int(b) // up to 455 bytes: names over 255 must be refused
		}
		name := strings.Repeat(string(rune('a'+c%7)), nl%5+1) + fmt.Sprintf("%x", i) + strings.Repeat("z", max(0, nl-8))
		if c == 0 && !valid {
			name = "." // refused
		}
		p := parent + name
		switch {
		case d%5 == 0:
			files = append(files, File{Path: p, Mode: fs.ModeDir | fs.FileMode(d)&0o777})
			dirs = append(dirs, p)
		case d%5 == 1 && len(files) > 0 && !valid:
			files = append(files, files[int(c)%len(files)]) // a duplicate
		default:
			size := int64(d) * int64(b) * 13
			if d == 255 && !valid {
				size = 400 * MiB // does not fit in MinSize
			}
			files = append(files, genFile(p, size, uint64(i)))
		}
	}
	return files
}

// FuzzWrite feeds arbitrary trees to the writer: it must either refuse the
// input with ErrInvalid/ErrNoSpace before writing anything, or write a file
// system the package's reader accepts with exactly the input's contents.
func FuzzWrite(f *testing.F) {
	f.Add([]byte("\x00\x01\x02\x05"))
	f.Add([]byte("AAAA\x01\x02\x03\x04\x05\x06\x07\x08abcdefgh"))
	rng := rand.New(rand.NewPCG(7, 7))
	for range 6 {
		b := make([]byte, 4*(50+rng.IntN(400)))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		files := treeFromBytes(data, false)
		img := newMemImage(MinSize)
		err := Write(context.Background(), img, MinSize, files, Options{Features: &LTS618})
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrNoSpace) {
				t.Fatalf("unexpected error: %v", err)
			}
			if len(img.pages) != 0 {
				t.Fatalf("%d pages written before error %v", len(img.pages), err)
			}
			return
		}
		got, err := readFS(img, MinSize)
		if err != nil {
			t.Fatalf("readFS: %v", err)
		}
		if w := want(t, files); !maps.Equal(got, w) {
			t.Fatalf("read back %d entries, want %d", len(got), len(w))
		}
	})
}

// TestRepairSample runs xfs_repair -n on random trees of the fuzzer's shape
// (deep paths, long names, every directory form, empty and odd-sized files,
// both sector sizes): the fuzzer itself checks with the in-package reader.
func TestRepairSample(t *testing.T) {
	testfixture.RequireTool(t, "xfs_repair")
	rng := rand.New(rand.NewPCG(2026, 16))
	ran := 0
	for i := 0; ran < 6 && i < 100; i++ {
		b := make([]byte, 4*(20+rng.IntN(600)))
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		files := treeFromBytes(b, true)
		ss := []int{512, 4096}[i%2]
		feat := []Features{LTS612, LTS61, LTS66}[i%3]
		if _, err := NewPlan(MinSize, files, Options{Features: &feat, SectorSize: ss}); err != nil {
			continue
		}
		ran++
		img := filepath.Join(t.TempDir(), "f.xfs")
		out, err := os.Create(img)
		if err != nil {
			t.Fatal(err)
		}
		if err := Build(context.Background(), out, MinSize, files, Options{Features: &feat, SectorSize: ss}); err != nil {
			t.Fatal(err)
		}
		out.Close()
		repairClean(t, img)
		checkReadBack(t, img, files)
	}
	if ran < 6 {
		t.Fatalf("only %d valid samples", ran)
	}
}
