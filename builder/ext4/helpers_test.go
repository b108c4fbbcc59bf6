package ext4

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// treeSpec describes a generated image-cache-shaped tree.
type treeSpec struct {
	seed  uint64
	big   []int64 // sizes of large blobs
	small int     // number of small blobs (100 B – 3 KiB)
	tiny  int     // number of extra 1–300 byte manifests (many-tiny-files case)
}

// makeTree writes an image cache tree under dir: blob/sha256-<hex> (large,
// small and one empty blob), manifests/<registry>/<repo>/{reference,digest}/…,
// one 0600 file and one 0700 directory. Content is pseudo-random from seed.
func makeTree(tb testing.TB, dir string, s treeSpec) {
	tb.Helper()
	rng := rand.New(rand.NewPCG(s.seed, 0x6b696c6e))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	mk := func(rel string, data []byte, perm os.FileMode) {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.WriteFile(p, data, perm); err != nil {
			tb.Fatal(err)
		}
	}
	blob := func(data []byte) string {
		sum := sha256.Sum256(data)
		return "sha256-" + hex.EncodeToString(sum[:])
	}
	random := func(n int64) []byte {
		b := make([]byte, n)
		for i := 0; i+8 <= len(b); i += 8 {
			v := rng.Uint64()
			for j := range 8 {
				b[i+j] = byte(v >> (8 * j))
			}
		}
		for i := len(b) &^ 7; i < len(b); i++ {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	for _, n := range s.big {
		// Stream large blobs so a 300 MB tree does not sit in memory.
		f, err := os.CreateTemp(dir, "big")
		if err != nil {
			tb.Fatal(err)
		}
		h := sha256.New()
		for left := n; left > 0; {
			c := random(min(left, 8<<20))
			h.Write(c)
			if _, err := f.Write(c); err != nil {
				tb.Fatal(err)
			}
			left -= int64(len(c))
		}
		f.Close()
		dst := filepath.Join(dir, "blob", "sha256-"+hex.EncodeToString(h.Sum(nil)))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			tb.Fatal(err)
		}
		if err := os.Rename(f.Name(), dst); err != nil {
			tb.Fatal(err)
		}
		os.Chmod(dst, 0o644)
	}
	mk("blob/"+blob(nil), nil, 0o644) // the empty blob
	for i := range s.small {
		d := random(100 + rng.Int64N(3000))
		perm := os.FileMode(0o644)
		if i == 0 {
			perm = 0o600
		}
		mk("blob/"+blob(d), d, perm)
	}
	images := []string{
		"registry.k8s.io/kube-apiserver", "registry.k8s.io/kube-controller-manager",
		"registry.k8s.io/kube-scheduler", "registry.k8s.io/kube-proxy",
		"registry.k8s.io/coredns/coredns", "ghcr.io/siderolabs/flannel",
		"registry.k8s.io/pause", "ghcr.io/siderolabs/kubelet", "docker.io/library/busybox",
	}
	for _, img := range images {
		idx := []byte(fmt.Sprintf(`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[],"x":%q}`, img))
		mk("manifests/"+img+"/reference/v1.36.0", idx, 0o644)
		mk("manifests/"+img+"/digest/"+blob(idx), idx, 0o644)
		child := append(idx, random(200)...)
		mk("manifests/"+img+"/digest/"+blob(child), child, 0o644)
	}
	for i := range s.tiny {
		d := random(1 + rng.Int64N(300))
		mk(fmt.Sprintf("manifests/localhost_5000_/many/digest/%s-%d", blob(d), i), d, 0o644)
	}
	priv := filepath.Join(dir, "manifests", "private")
	if err := os.MkdirAll(priv, 0o700); err != nil {
		tb.Fatal(err)
	}
	os.Chmod(priv, 0o700)
	mk("manifests/private/reference/latest", []byte("secret"), 0o644)
}

// compareTrees checks that got holds exactly want's directories and regular
// files, byte for byte, with the same permission bits. got may also hold
// lost+found.
func compareTrees(tb testing.TB, want, got string) {
	tb.Helper()
	seen := map[string]bool{}
	err := filepath.WalkDir(want, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(want, p)
		if rel == "." {
			return nil
		}
		seen[rel] = true
		wi, err := d.Info()
		if err != nil {
			return err
		}
		gi, err := os.Lstat(filepath.Join(got, rel))
		if err != nil {
			tb.Errorf("%s: missing: %v", rel, err)
			return nil
		}
		if wi.Mode() != gi.Mode() {
			tb.Errorf("%s: mode %v, want %v", rel, gi.Mode(), wi.Mode())
		}
		if d.IsDir() {
			return nil
		}
		if wi.Size() != gi.Size() {
			tb.Errorf("%s: size %d, want %d", rel, gi.Size(), wi.Size())
			return nil
		}
		if a, b := fileSum(tb, p), fileSum(tb, filepath.Join(got, rel)); a != b {
			tb.Errorf("%s: content differs", rel)
		}
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	filepath.WalkDir(got, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(got, p)
		if rel == "." {
			return nil
		}
		if rel == "lost+found" {
			return fs.SkipDir
		}
		if !seen[rel] {
			tb.Errorf("%s: not in the source tree", rel)
		}
		return nil
	})
}

func fileSum(tb testing.TB, p string) string {
	f, err := os.Open(p)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		tb.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// run runs a reader tool and returns its combined output, failing on a
// non-zero exit.
func run(tb testing.TB, name string, args ...string) string {
	tb.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		tb.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// extractRange copies [off, off+n) of src into a new file dst.
func extractRange(tb testing.TB, src *os.File, off, n int64, dst string) {
	tb.Helper()
	f, err := os.Create(dst)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	if _, err := io.CopyBuffer(struct{ io.Writer }{f}, io.NewSectionReader(src, off, n), buf); err != nil {
		tb.Fatal(err)
	}
}

// recorder wraps the image file and records the size of every WriteAt.
type recorder struct {
	*os.File
	mu    sync.Mutex
	sizes []int
}

func (r *recorder) WriteAt(p []byte, off int64) (int, error) {
	r.mu.Lock()
	r.sizes = append(r.sizes, len(p))
	r.mu.Unlock()
	return r.File.WriteAt(p, off)
}

// stats summarises recorded writes: count, total bytes, bytes in writes of
// at least 1 MiB, and the number of writes below 1 MiB.
func (r *recorder) stats() (n int, total, big int64, small int) {
	for _, s := range r.sizes {
		total += int64(s)
		if s >= MiB {
			big += int64(s)
		} else {
			small++
		}
	}
	return len(r.sizes), total, big, small
}

// fileSize returns the size of the file at path.
func fileSize(tb testing.TB, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		tb.Fatal(err)
	}
	return st.Size()
}
