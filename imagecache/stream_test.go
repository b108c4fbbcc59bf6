package imagecache

import (
	"bytes"
	"compress/gzip"
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
	"testing"
	"testing/iotest"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func pattern(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 7))

	for i := range b {
		b[i] = byte(r.Uint32())
	}

	return b
}

// TestSpool reads spools while they are written, in memory, spilled to a
// file part way, or on file from the start, and checks every byte and that
// nothing is left behind.
func TestSpool(t *testing.T) {
	sizes := []int{0, 1, chunk - 1, chunk, chunk + 1, 3*chunk + chunk/2}

	for _, limit := range []int{0, chunk, 100 * chunk} {
		for _, size := range sizes {
			for _, views := range []bool{false, true} {
				t.Run(fmt.Sprintf("mem%d/%d/views=%v", limit/chunk, size, views), func(t *testing.T) {
					dir := t.TempDir()
					pool := newChunks(limit)
					spilled := filepath.Join(dir, "spill")
					s := newSpool(pool, func() (*os.File, string, error) {
						f, err := os.OpenFile(spilled, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)

						return f, spilled, err
					})

					want := pattern(size)

					go func() {
						r := rand.New(rand.NewPCG(1, uint64(size)))
						if views {
							// Reads of random length, straight into the chunks.
							_, err := s.readFrom(&pieces{r: bytes.NewReader(want), rnd: r}, make([]byte, 70_001))
							s.finish(err)

							return
						}

						for p := want; len(p) > 0; {
							n := min(len(p), 1+r.IntN(300_000))
							if _, err := s.Write(p[:n]); err != nil {
								s.finish(err)

								return
							}

							p = p[n:]

							if r.IntN(4) == 0 {
								time.Sleep(time.Millisecond)
							}
						}

						s.finish(nil)
					}()

					var (
						got []byte
						err error
					)

					if views {
						var out bytes.Buffer
						_, err = s.reader().writeTo(&out, make([]byte, 70_001))
						got = out.Bytes()
					} else {
						got, err = io.ReadAll(s.reader())
					}

					if err != nil {
						t.Fatal(err)
					}

					if !bytes.Equal(got, want) {
						t.Fatalf("read %d bytes, want %d (equal prefix: %v)", len(got), len(want), bytes.HasPrefix(want, got))
					}

					s.close()

					if _, err := os.Stat(spilled); !errors.Is(err, os.ErrNotExist) {
						t.Errorf("spill file left: %v", err)
					}

					// Every buffer taken went back.
					if limit > 0 && len(pool.free)+pool.left != limit/chunk {
						t.Errorf("pool: %d free + %d left, want %d", len(pool.free), pool.left, limit/chunk)
					}
				})
			}
		}
	}
}

// pieces reads r in pieces of random length, now and then after a pause.
type pieces struct {
	r   io.Reader
	rnd *rand.Rand
}

func (p *pieces) Read(b []byte) (int, error) {
	if p.rnd.IntN(4) == 0 {
		time.Sleep(time.Millisecond)
	}

	return p.r.Read(b[:min(len(b), 1+p.rnd.IntN(300_000))])
}

// TestSpoolWaitsForMemory: a spool that waits for memory does so until it
// is read (then spills) or abandoned (then fails), never spills ahead.
func TestSpoolWaitsForMemory(t *testing.T) {
	for _, end := range []string{"read", "abandon"} {
		t.Run(end, func(t *testing.T) {
			pool := newChunks(chunk)
			held := pool.get()
			spilled := filepath.Join(t.TempDir(), "spill")

			s := newSpool(pool, func() (*os.File, string, error) {
				f, err := os.OpenFile(spilled, os.O_CREATE|os.O_EXCL|os.O_RDWR, 0o644)

				return f, spilled, err
			})
			s.waitMem = true
			defer s.close()

			data := pattern(chunk / 2)
			wrote := make(chan error, 1)

			go func() {
				_, err := s.Write(data)
				wrote <- err
			}()

			select {
			case err := <-wrote:
				t.Fatalf("write returned (%v) with no memory and no reader", err)
			case <-time.After(100 * time.Millisecond):
			}

			if _, err := os.Stat(spilled); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("spilled while waiting: %v", err)
			}

			if end == "abandon" {
				s.abandon()

				if err := <-wrote; !errors.Is(err, errAbandoned) {
					t.Fatalf("err = %v, want errAbandoned", err)
				}

				return
			}

			r := s.reader()

			if err := <-wrote; err != nil {
				t.Fatal(err)
			}

			s.finish(nil)

			got, err := io.ReadAll(r)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("read %d bytes, %v", len(got), err)
			}

			if _, err := os.Stat(spilled); err != nil {
				t.Fatalf("the spool being read did not spill: %v", err)
			}

			pool.put(held)
		})
	}
}

// TestSpoolFailsAfterLastByte: a fetch whose digest turns out wrong at EOF
// fails the reader, never ends it cleanly.
func TestSpoolFailsAfterLastByte(t *testing.T) {
	s := newSpool(newChunks(4*chunk), nil)
	data := pattern(1000)

	if _, err := s.Write(data); err != nil {
		t.Fatal(err)
	}

	bad := fmt.Errorf("blob: %w", ErrDigest)
	s.finish(bad)

	got, err := io.ReadAll(s.reader())
	if !errors.Is(err, ErrDigest) {
		t.Fatalf("read %d bytes, err %v; want ErrDigest", len(got), err)
	}
}

// TestLayerWriter: the layer is a gzip stream of the input that Go's
// reader and gzip(1) accept, and its digest, diffID and size are right.
func TestLayerWriter(t *testing.T) {
	gz, err := exec.LookPath("gzip")
	if err != nil {
		t.Fatal("gzip(1) is needed to check the layer:", err)
	}

	for _, size := range []int{0, 1, maxStored, maxStored + 1, chunk, chunk + 1, 3*chunk + 12345} {
		for _, sync := range []bool{true, false} {
			t.Run(fmt.Sprintf("%d/sync=%v", size, sync), func(t *testing.T) {
				data := pattern(size)
				path := filepath.Join(t.TempDir(), "layer.gz")
				pool := newChunks(-1)

				f, err := createOut(path, sync, pool)
				if err != nil {
					t.Fatal(err)
				}

				lw := newLayerWriter(f, pool)
				// Odd-sized writes, as tar's headers and padding make.
				for p := data; len(p) > 0; {
					n := min(len(p), 511)
					if len(p) > 5*chunk/4 {
						n = chunk + 3
					}

					if _, err := lw.Write(p[:n]); err != nil {
						t.Fatal(err)
					}

					p = p[n:]
				}

				l, err := lw.Close()
				if err != nil {
					t.Fatal(err)
				}

				if err := f.Close(); err != nil {
					t.Fatal(err)
				}

				blob, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}

				if d := sha256.Sum256(blob); l.Digest.Hex != hex.EncodeToString(d[:]) || l.Size != int64(len(blob)) {
					t.Errorf("digest/size %s %d, file %x %d", l.Digest, l.Size, d, len(blob))
				}

				if d := sha256.Sum256(data); l.DiffID.Hex != hex.EncodeToString(d[:]) {
					t.Errorf("diffID %s, want %x", l.DiffID, d)
				}

				zr, err := gzip.NewReader(bytes.NewReader(blob))
				if err != nil {
					t.Fatal(err)
				}

				got, err := io.ReadAll(zr)
				if err != nil || !bytes.Equal(got, data) {
					t.Fatalf("gunzip: %d bytes, %v", len(got), err)
				}

				if out, err := exec.Command(gz, "-t", path).CombinedOutput(); err != nil {
					t.Errorf("gzip -t: %v\n%s", err, out)
				}
			})
		}
	}
}

// TestOutFile: direct writes, the buffered tail, and a switch to buffered
// part way (what a file system refusing O_DIRECT writes causes) all give
// the bytes written.
func TestOutFile(t *testing.T) {
	data := pattern(3*chunk + 777)

	for _, tc := range []struct {
		name       string
		sync       bool
		switchAt   int
		pieceBytes int
	}{
		{"direct", true, -1, chunk},
		{"direct-odd", true, -1, 70_001},
		{"switch", true, chunk + chunk/2, 4096},
		{"buffered", false, -1, 70_001},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "out")
			pool := newChunks(-1)

			f, err := createOut(path, tc.sync, pool)
			if err != nil {
				t.Fatal(err)
			}

			for off := 0; off < len(data); {
				if off == tc.switchAt && f.direct {
					if err := f.flush(); err != nil {
						t.Fatal(err)
					}

					if err := f.buffered(); err != nil {
						t.Fatal(err)
					}
				}

				n := min(tc.pieceBytes, len(data)-off)
				if tc.switchAt > off {
					n = min(n, tc.switchAt-off)
				}

				// A whole aligned chunk takes the unstaged path.
				p := data[off : off+n]
				if n == chunk {
					p = alignedChunk()
					copy(p, data[off:off+n])
				}

				if _, err := f.Write(p); err != nil {
					t.Fatal(err)
				}

				off += n
			}

			closeHolds(t, f, path, data)
		})
	}
}

// closeHolds closes f and checks that the file at path holds data.
func closeHolds(t *testing.T, f *outFile, path string, data []byte) {
	t.Helper()

	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	if !bytes.Equal(got, data) {
		t.Fatalf("read %d bytes, want %d", len(got), len(data))
	}
}

// TestOutFileReadFrom: readFrom gives the bytes read, with chunks written
// behind the reads, through buf when no second chunk is to be had, and
// stops on a read or a write error.
func TestOutFileReadFrom(t *testing.T) {
	for _, size := range []int{0, 1, chunk - 1, chunk, chunk + 1, 3*chunk + 777} {
		for _, tc := range []struct {
			name  string
			sync  bool
			limit int
		}{{"direct", true, -1}, {"direct-one-chunk", true, chunk}, {"buffered", false, -1}} {
			t.Run(fmt.Sprintf("%s-%d", tc.name, size), func(t *testing.T) {
				data := pattern(size)
				path := filepath.Join(t.TempDir(), "out")

				f, err := createOut(path, tc.sync, newChunks(tc.limit))
				if err != nil {
					t.Fatal(err)
				}

				n, err := f.readFrom(iotest.HalfReader(bytes.NewReader(data)), make([]byte, 70_001))
				if err != nil || n != int64(size) {
					t.Fatalf("readFrom = %d, %v; want %d", n, err, size)
				}

				closeHolds(t, f, path, data)
			})
		}
	}

	t.Run("read-error", func(t *testing.T) {
		f, err := createOut(filepath.Join(t.TempDir(), "out"), true, newChunks(-1))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()

		boom := errors.New("boom")
		r := io.MultiReader(bytes.NewReader(pattern(2*chunk+5)), iotest.ErrReader(boom))

		if _, err := f.readFrom(r, nil); !errors.Is(err, boom) {
			t.Fatalf("err = %v, want %v", err, boom)
		}
	})

	t.Run("write-error", func(t *testing.T) {
		f, err := createOut(filepath.Join(t.TempDir(), "out"), true, newChunks(-1))
		if err != nil {
			t.Fatal(err)
		}

		f.f.Close() //nolint:errcheck // the writes must fail

		// An endless reader: only the failed write ends the copy.
		if _, err := f.readFrom(endless{}, nil); !errors.Is(err, os.ErrClosed) {
			t.Fatalf("err = %v, want %v", err, os.ErrClosed)
		}
	})
}

type endless struct{}

func (endless) Read(p []byte) (int, error) { return len(p), nil }

// TestOCISpill: blobs larger than the spools' memory spill to files, and
// the layer still holds exactly the flat tree.
func TestOCISpill(t *testing.T) {
	f := newFixture(t, 3*chunk/2, 2)
	refs := []string{"ghcr.io/siderolabs/kubelet:v1.36.0", "busybox:1.37"}
	out, flat := writeLayouts(t, f, refs, Options{Platforms: []string{"linux/amd64"}, Signatures: true, Logger: quiet(), spoolMemory: chunk})

	diffTrees(t, untar(t, ociLayer(t, readTree(t, out))), readTree(t, flat))
}

// ociLayer is the one layer of an OCI layout read by readTree.
func ociLayer(t *testing.T, files map[string][]byte) []byte {
	t.Helper()

	var idx v1.IndexManifest
	if err := json.Unmarshal(files["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json: %v", err)
	}

	var m v1.Manifest
	if err := json.Unmarshal(files["blobs/sha256/"+idx.Manifests[0].Digest.Hex], &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}

	return files["blobs/sha256/"+m.Layers[0].Digest.Hex]
}
