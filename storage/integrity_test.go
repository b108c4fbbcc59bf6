package storage_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/storage"
)

func assetPath(dir, key string) string { return filepath.Join(dir, "assets", key[:2], key) }

// sparseAsset commits a sparse asset whose size is not a whole number of
// chunks, with data straddling chunk boundaries, and returns its content.
func sparseAsset(t *testing.T, a storage.Assets, key string) []byte {
	t.Helper()

	const size = 9<<20 + 12345

	want := make([]byte, size)

	w, err := a.Create(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}

	for _, off := range []int64{0, 1<<20 - 100, 5<<20 + 7, size - 300} {
		data := bytes.Repeat([]byte{byte(off), 0xa5}, 150)
		copy(want[off:], data)

		if _, err := w.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
	}

	if err := w.File().Truncate(size); err != nil {
		t.Fatal(err)
	}

	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}

	return want
}

// The ETag skips holes and is a function of the content alone: ETagOf of
// the bytes read back. The content's sha256, holes read as zeros, is
// computed when asked for, recorded, and is what sha256sum gives.
func TestAssetDigestOfSparseFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	for _, fresh := range []bool{false, true} {
		a := newAssets(t, dir, 0)
		want := sparseAsset(t, a, "sparse-asset")

		if fresh {
			a = newAssets(t, dir, 0)
		}

		got, err := a.Open(ctx, "sparse-asset")
		if err != nil {
			t.Fatal(err)
		}

		data, _ := io.ReadAll(got)
		etag, _ := storage.ETagOf(bytes.NewReader(want))

		if !bytes.Equal(data, want) || got.ETag() != etag || !strings.HasPrefix(etag, "chunks-") || got.Size() != int64(len(want)) {
			t.Fatalf("fresh process %v: content equal %v, ETag %s, want %s", fresh, bytes.Equal(data, want), got.ETag(), etag)
		}

		if meta, _ := os.ReadFile(assetPath(dir, "sparse-asset") + ".json"); bytes.Contains(meta, []byte("sha256")) {
			t.Fatalf("sha256 computed before it was asked for: %s", meta)
		}

		sum := sha256.Sum256(want)

		if got, err := got.SHA256(ctx); err != nil || got != hex.EncodeToString(sum[:]) {
			t.Fatalf("SHA256 = %s, %v, want %x", got, err, sum)
		}

		got.Close()

		// Recorded: the next process reads it.
		if meta, _ := os.ReadFile(assetPath(dir, "sparse-asset") + ".json"); !bytes.Contains(meta, []byte(hex.EncodeToString(sum[:]))) {
			t.Fatalf("sha256 not recorded: %s", meta)
		}

		again, err := newAssets(t, dir, 0).Open(ctx, "sparse-asset")
		if err != nil {
			t.Fatal(err)
		}

		if got, err := again.SHA256(ctx); err != nil || got != hex.EncodeToString(sum[:]) || again.ETag() != etag {
			t.Fatalf("next process: SHA256 = %s, %v, ETag %s", got, err, again.ETag())
		}

		again.Close()
	}

	put(t, newAssets(t, dir, 0), "empty-asset", "")

	got, err := newAssets(t, dir, 0).Open(ctx, "empty-asset")
	if err != nil {
		t.Fatal(err)
	}
	defer got.Close()

	etag, _ := storage.ETagOf(bytes.NewReader(nil))
	empty := sha256.Sum256(nil)

	if sum, err := got.SHA256(ctx); err != nil || sum != hex.EncodeToString(empty[:]) || got.ETag() != etag || got.Size() != 0 {
		t.Fatalf("empty asset: %s %v %s %d", sum, err, got.ETag(), got.Size())
	}
}

// The same bytes have the same ETag however they were written: a hole, a
// chunk of zeros written out, or the whole streamed; one changed byte
// anywhere changes it.
func TestAssetETagOfBytesAlone(t *testing.T) {
	ctx := context.Background()
	a := newAssets(t, t.TempDir(), 0)
	want := sparseAsset(t, a, "as-holes")

	w, err := a.Create(ctx, "written-out")
	if err != nil {
		t.Fatal(err)
	}

	if _, err := w.WriteAt(want, 0); err != nil { // every zero written: no holes
		t.Fatal(err)
	}

	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}

	put(t, a, "streamed", string(want))

	etags := map[string]bool{}

	for _, key := range []string{"as-holes", "written-out", "streamed"} {
		f, err := a.Open(ctx, key)
		if err != nil {
			t.Fatal(err)
		}

		etags[f.ETag()] = true
		f.Close()
	}

	if len(etags) != 1 {
		t.Fatalf("one content, ETags %v", etags)
	}

	for _, off := range []int{0, 1<<20 - 1, 1 << 20, 3<<20 + 5, len(want) - 1} {
		changed := bytes.Clone(want)
		changed[off] ^= 0x80

		if etag, _ := storage.ETagOf(bytes.NewReader(changed)); etags[etag] {
			t.Fatalf("a byte changed at %d keeps the ETag", off)
		}
	}

	if etag, _ := storage.ETagOf(bytes.NewReader(append(bytes.Clone(want), 0))); etags[etag] {
		t.Fatal("a zero appended keeps the ETag")
	}
}

// The content's sha256 asked for after the file changed on disk is refused
// (and the entry dropped), not a digest of the changed bytes.
func TestAssetSHA256OfChangedFile(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := newAssets(t, dir, 0)
	want := sparseAsset(t, a, "changed-later")

	f, err := a.Open(ctx, "changed-later")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	g, err := os.OpenFile(assetPath(dir, "changed-later"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}

	g.WriteAt([]byte{want[5<<20+10] ^ 1}, 5<<20+10) //nolint:errcheck
	g.Close()

	if sum, err := f.SHA256(ctx); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("SHA256 of a changed file = %s, %v, want ErrCorrupt", sum, err)
	}

	if _, err := a.Open(ctx, "changed-later"); !errors.Is(err, storage.ErrNotFound) {
		t.Fatalf("Open after = %v, want ErrNotFound", err)
	}
}

// A byte changed on disk after commit is never served: not in the process
// that committed the asset (which trusts it without reading it back), even
// with its mtime set back, nor in a fresh one; data written into a hole
// neither. The entry is dropped, so the next build replaces it.
func TestAssetChangedAfterCommitNotServed(t *testing.T) {
	for _, tc := range []struct {
		name         string
		off          int64
		restoreMtime bool
		fresh        bool
	}{
		{name: "flipped byte", off: 5<<20 + 10},
		{name: "flipped byte, mtime set back", off: 5<<20 + 10, restoreMtime: true},
		{name: "flipped byte, fresh process", off: 1<<20 - 50, restoreMtime: true, fresh: true},
		{name: "data in a hole", off: 3 << 20},
		{name: "data in a hole, fresh process", off: 7 << 20, fresh: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			a := newAssets(t, dir, 0)
			want := sparseAsset(t, a, "changed-asset")

			// Trusted first, so the change must be noticed, not just a first check.
			if f, err := a.Open(ctx, "changed-asset"); err != nil {
				t.Fatal(err)
			} else {
				f.Close()
			}

			p := assetPath(dir, "changed-asset")

			before, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}

			f, err := os.OpenFile(p, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}

			if _, err := f.WriteAt([]byte{want[tc.off] ^ 0x01}, tc.off); err != nil {
				t.Fatal(err)
			}

			f.Close()

			if tc.restoreMtime {
				if err := os.Chtimes(p, before.ModTime(), before.ModTime()); err != nil {
					t.Fatal(err)
				}
			}

			if tc.fresh {
				a = newAssets(t, dir, 0)
			}

			if got, err := a.Open(ctx, "changed-asset"); !errors.Is(err, storage.ErrCorrupt) {
				if err == nil {
					got.Close()
				}

				t.Fatalf("Open of a changed asset = %v, want ErrCorrupt", err)
			}

			if _, err := a.Open(ctx, "changed-asset"); !errors.Is(err, storage.ErrNotFound) {
				t.Fatalf("Open after the changed asset was dropped = %v, want ErrNotFound", err)
			}

			if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("changed asset file left: %v", err)
			}
		})
	}
}

// Entries committed before chunk CRCs were recorded are checked by their
// sha256 once, then carry CRCs; one that no longer matches is dropped.
func TestAssetWithoutChunkDigests(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()

	for key, content := range map[string]string{"legacy-good": "the asset", "legacy-bad": "the asset"} {
		put(t, newAssets(t, dir, 0), key, content)

		sum := sha256.Sum256([]byte(content))
		if key == "legacy-bad" {
			sum[0] ^= 1
		}

		meta, _ := json.Marshal(map[string]any{"size": len(content), "sha256": hex.EncodeToString(sum[:])})
		if err := os.WriteFile(assetPath(dir, key)+".json", meta, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	a := newAssets(t, dir, 0)

	if _, err := a.Open(ctx, "legacy-bad"); !errors.Is(err, storage.ErrCorrupt) {
		t.Fatalf("Open(legacy entry with a wrong digest) = %v, want ErrCorrupt", err)
	}

	f, err := a.Open(ctx, "legacy-good")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()

	var meta struct {
		CRC32C []byte `json:"crc32c"`
		ETag   string `json:"etag"`
	}

	etag, _ := storage.ETagOf(strings.NewReader("the asset"))

	data, _ := os.ReadFile(assetPath(dir, "legacy-good") + ".json")
	if err := json.Unmarshal(data, &meta); err != nil || len(meta.CRC32C) != 4 || meta.ETag != etag || f.ETag() != etag {
		t.Fatalf("legacy entry after its first Open: %s", data)
	}

	if f, err := newAssets(t, dir, 0).Open(ctx, "legacy-good"); err != nil {
		t.Fatalf("legacy entry in the next process: %v", err)
	} else {
		f.Close()
	}
}

// Entries committed with CRCs and a sha256 but before ETags get their ETag
// at their first Open, which checks the CRCs; their sha256 is kept.
func TestAssetWithoutETag(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	want := sparseAsset(t, newAssets(t, dir, 0), "without-etag")
	sum := sha256.Sum256(want)

	var meta map[string]any

	data, _ := os.ReadFile(assetPath(dir, "without-etag") + ".json")
	if err := json.Unmarshal(data, &meta); err != nil {
		t.Fatal(err)
	}

	etag := meta["etag"]
	delete(meta, "etag")
	meta["sha256"] = hex.EncodeToString(sum[:])
	data, _ = json.Marshal(meta)

	if err := os.WriteFile(assetPath(dir, "without-etag")+".json", data, 0o644); err != nil {
		t.Fatal(err)
	}

	f, err := newAssets(t, dir, 0).Open(ctx, "without-etag")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	if got, err := f.SHA256(ctx); f.ETag() != etag || err != nil || got != hex.EncodeToString(sum[:]) {
		t.Fatalf("ETag %s, want %s; sha256 %s %v", f.ETag(), etag, got, err)
	}

	if data, _ := os.ReadFile(assetPath(dir, "without-etag") + ".json"); !bytes.Contains(data, []byte(etag.(string))) {
		t.Fatalf("ETag not recorded: %s", data)
	}
}

// killedWriterEnv makes the test binary a process that commits assets in a
// loop until it is killed (TestAssetsKilledMidWrite).
const killedWriterEnv = "KILN_STORAGE_KILLED_WRITER"

func killedContent(key string) []byte {
	i, _ := strconv.Atoi(key[len("killed-"):])
	rng := rand.New(rand.NewPCG(uint64(i), 1))

	data := make([]byte, 4<<20+i*4096)
	for j := 0; j < len(data); j += 8 {
		v := rng.Uint64()
		for k := 0; k < 8 && j+k < len(data); k++ {
			data[j+k] = byte(v >> (8 * k))
		}
	}

	return data
}

func TestKilledWriterHelper(t *testing.T) {
	dir := os.Getenv(killedWriterEnv)
	if dir == "" {
		t.Skip("run by TestAssetsKilledMidWrite")
	}

	a := newAssets(t, dir, 0)
	out := bufio.NewWriter(os.Stdout)

	for i := 0; ; i++ {
		key := fmt.Sprintf("killed-%04d", i)
		data := killedContent(key)

		w, err := a.Create(context.Background(), key)
		if err != nil {
			t.Fatal(err)
		}

		// Written in two halves, sparse in between, so a kill can land
		// between writes as well as in Commit.
		half := len(data) / 2
		w.WriteAt(data[half:], int64(half)) //nolint:errcheck
		w.WriteAt(data[:half], 0)           //nolint:errcheck

		if err := w.Commit(); err != nil {
			t.Fatal(err)
		}

		fmt.Fprintln(out, key)
		out.Flush() //nolint:errcheck
	}
}

// A process killed (SIGKILL) while writing and committing assets leaves
// nothing that a restart serves but whole, committed assets: each key is
// either absent or complete, and no partial file is left.
func TestAssetsKilledMidWrite(t *testing.T) {
	if testing.Short() {
		t.Skip("starts processes")
	}

	ctx := context.Background()
	dir := t.TempDir()

	for round, delay := range []time.Duration{30 * time.Millisecond, 170 * time.Millisecond, 400 * time.Millisecond} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestKilledWriterHelper$", "-test.count=1")
		cmd.Env = append(os.Environ(), killedWriterEnv+"="+dir)
		cmd.Stderr = os.Stderr

		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}

		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}

		lines := bufio.NewScanner(stdout)
		if !lines.Scan() { // one commit done: the next is under way
			t.Fatalf("round %d: the writer committed nothing", round)
		}

		time.Sleep(delay)

		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}

		committed := 1
		for lines.Scan() {
			committed++
		}

		cmd.Wait() //nolint:errcheck // killed

		partial, _ := os.ReadDir(filepath.Join(dir, "assets", "tmp"))
		a := newAssets(t, dir, 0)

		if left, _ := os.ReadDir(filepath.Join(dir, "assets", "tmp")); len(left) != 0 {
			t.Errorf("round %d: %d partial writes left after the restart", round, len(left))
		}

		whole, missing := 0, 0

		for i := range committed + 50 {
			key := fmt.Sprintf("killed-%04d", i)

			f, err := a.Open(ctx, key)
			if errors.Is(err, storage.ErrNotFound) {
				if i < committed {
					t.Errorf("round %d: %s was reported committed but is gone", round, key)
				}

				missing++

				continue
			}

			if err != nil {
				t.Fatalf("round %d: Open(%s) = %v", round, key, err)
			}

			got, _ := io.ReadAll(f)
			f.Close()

			if !bytes.Equal(got, killedContent(key)) {
				t.Fatalf("round %d: %s served with %d bytes that are not what was written", round, key, len(got))
			}

			whole++
		}

		t.Logf("round %d: killed %v after the first commit, %d reported, %d partial writes on disk: then %d whole assets, the rest absent",
			round, delay, committed, len(partial), whole)
	}
}

// An asset written only by Write is digested as it is written; its digests
// are those Commit computes from the file for one written at offsets, and a
// fresh process checks them.
func TestAssetDigestedWhileWritten(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	a := newAssets(t, dir, 0)

	content := killedContent("killed-0777") // 4 MiB + 3 MiB-ish, not whole chunks
	content = append(content, make([]byte, 2<<20)...)

	streamed, err := a.Create(ctx, "streamed-asset")
	if err != nil {
		t.Fatal(err)
	}

	for rest, k := content, 1; len(rest) > 0; k = k*3 + 1 { // uneven writes across chunk boundaries
		n := min(len(rest), k%(1<<21)+1)
		if _, err := streamed.Write(rest[:n]); err != nil {
			t.Fatal(err)
		}

		rest = rest[n:]
	}

	if err := streamed.Commit(); err != nil {
		t.Fatal(err)
	}

	atOffsets, err := a.Create(ctx, "offsets-asset")
	if err != nil {
		t.Fatal(err)
	}

	if _, err := atOffsets.WriteAt(content[:len(content)-2<<20], 0); err != nil {
		t.Fatal(err)
	}

	if err := atOffsets.File().Truncate(int64(len(content))); err != nil {
		t.Fatal(err)
	}

	if err := atOffsets.Commit(); err != nil {
		t.Fatal(err)
	}

	m1, _ := os.ReadFile(assetPath(dir, "streamed-asset") + ".json")
	m2, _ := os.ReadFile(assetPath(dir, "offsets-asset") + ".json")

	if !bytes.Equal(m1, m2) {
		t.Fatalf("digests written while writing:\n%s\nfrom the file:\n%s", m1, m2)
	}

	f, err := newAssets(t, dir, 0).Open(ctx, "streamed-asset")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	got, err := f.SHA256(ctx)
	if sum := sha256.Sum256(content); err != nil || got != hex.EncodeToString(sum[:]) {
		t.Fatalf("sha256 %s, %v, want %x", got, err, sum)
	}
}

// HoleAt reports the holes a server may send as zeros from memory, never a
// byte of data, and leaves the reader where it was.
func TestAssetHoleAt(t *testing.T) {
	ctx := context.Background()
	a := newAssets(t, t.TempDir(), 0)
	want := sparseAsset(t, a, "holes-asset")

	f, err := a.Open(ctx, "holes-asset")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	holes, ok := f.(interface{ HoleAt(off int64) int64 })
	if !ok {
		t.Fatal("a cached asset reports no holes")
	}

	if _, err := f.Seek(12345, io.SeekStart); err != nil {
		t.Fatal(err)
	}

	var reported int64

	for off := int64(0); off < int64(len(want)); {
		n := holes.HoleAt(off)
		if n == 0 {
			off++

			continue
		}

		if off+n > int64(len(want)) || !bytes.Equal(want[off:off+n], make([]byte, n)) {
			t.Fatalf("HoleAt(%d) = %d: data inside", off, n)
		}

		reported += n
		off += n
	}

	if pos, _ := f.Seek(0, io.SeekCurrent); pos != 12345 || reported < 4<<20 {
		t.Fatalf("offset %d after HoleAt, want 12345; %d bytes of holes reported", pos, reported)
	}

	if holes.HoleAt(int64(len(want))) != 0 || holes.HoleAt(-1) != 0 {
		t.Fatal("a hole reported outside the file")
	}
}
