package imagecache

import (
	"errors"
	"io"
	"os"
	"sync"
)

// spoolMemory bounds the memory the spools of one Write hold; beyond it
// they spill to files. The packer drains the spool at the head of the tar
// as it fills, so memory only holds what the other fetches run ahead.
const spoolMemory = 256 << 20

// chunks hands out chunk-sized buffers up to a limit and recycles them: a
// reused buffer costs nothing, where fresh pages (of memory or of page
// cache) cost more than the copy into them.
type chunks struct {
	mu   sync.Mutex
	free [][]byte
	left int // buffers that may still be allocated
}

// newChunks returns a pool of at most limit bytes; limit < 0 means no
// limit.
func newChunks(limit int) *chunks {
	if limit < 0 {
		return &chunks{left: -1}
	}

	return &chunks{left: limit / chunk}
}

// get returns a buffer, or nil when the limit is reached.
func (c *chunks) get() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()

	if n := len(c.free); n > 0 {
		b := c.free[n-1]
		c.free = c.free[:n-1]

		return b
	}

	if c.left == 0 {
		return nil
	}

	if c.left > 0 {
		c.left--
	}

	return alignedChunk()
}

func (c *chunks) put(b []byte) {
	c.mu.Lock()
	c.free = append(c.free, b)
	c.mu.Unlock()
}

// spool carries one blob from the worker that fetches it to the packer,
// which reads it in tar order while it is still being written. Bytes go to
// memory chunks while there are any, then to a file: with OCI the tree is
// never written out as a whole.
type spool struct {
	mu   sync.Mutex
	cond *sync.Cond
	pool *chunks
	// mem holds bytes [0, len(mem)*chunk) while the spool is in memory, a
	// chunk released (nil) once read; bytes from spilled on are in f at
	// offset-spilled.
	mem     [][]byte
	spilled int64
	f       *os.File
	own     string // path of f, removed on close; "" for a file not ours
	spill   func() (*os.File, string, error)
	data    []byte // an inline blob
	n       int64  // bytes readable
	done    bool
	err     error
}

// newSpool returns a spool taking memory from pool and, once pool is
// exhausted, writing to the file spill creates.
func newSpool(pool *chunks, spill func() (*os.File, string, error)) *spool {
	s := &spool{pool: pool, spill: spill, spilled: -1}
	s.cond = sync.NewCond(&s.mu)

	return s
}

// Write appends p and makes it readable (the worker side).
func (s *spool) Write(p []byte) (int, error) {
	n := len(p)

	for len(p) > 0 {
		k, err := s.write(p)
		if k > 0 {
			s.mu.Lock()
			s.n += int64(k)
			s.mu.Unlock()
			s.cond.Broadcast()
		}

		if err != nil {
			return n - len(p) + k, err
		}

		p = p[k:]
	}

	return n, nil
}

// write puts a prefix of p at offset s.n. Only the worker changes n, mem
// and f, so they are read here without the lock; the reader only reads
// bytes below n.
func (s *spool) write(p []byte) (int, error) {
	if s.spilled >= 0 {
		return s.f.Write(p)
	}

	if s.n < int64(len(s.mem))*chunk {
		return copy(s.mem[len(s.mem)-1][s.n%chunk:], p), nil
	}

	if b := s.pool.get(); b != nil {
		s.mu.Lock()
		s.mem = append(s.mem, b)
		s.mu.Unlock()

		return copy(b, p), nil
	}

	f, own, err := s.spill()
	if err != nil {
		return 0, err
	}

	s.mu.Lock()
	s.f, s.own, s.spilled = f, own, s.n
	s.mu.Unlock()

	return f.Write(p)
}

// finish ends the spool: readers get EOF after the last byte, or err.
func (s *spool) finish(err error) {
	s.mu.Lock()
	s.done, s.err = true, err
	s.mu.Unlock()
	s.cond.Broadcast()
}

// complete makes the spool a finished one holding data, or the n bytes of
// f (a layer-cache file, not removed on close).
func (s *spool) complete(data []byte, f *os.File, n int64) {
	s.mu.Lock()
	s.data, s.n, s.done = data, n, true

	if f != nil {
		s.f, s.spilled = f, 0
	}
	s.mu.Unlock()
	s.cond.Broadcast()
}

// reader reads the spool from the start, waiting for bytes not yet
// written; it releases memory as it goes, so read it only once.
func (s *spool) reader() io.Reader { return &spoolReader{s: s} }

// close releases memory and the file (removing it if it is ours). Call it
// only when no worker writes to the spool any more.
func (s *spool) close() {
	s.mu.Lock()
	f, own, mem := s.f, s.own, s.mem
	s.f, s.own, s.mem, s.data = nil, "", nil, nil
	s.mu.Unlock()

	for _, b := range mem {
		if b != nil {
			s.pool.put(b)
		}
	}

	if f != nil {
		f.Close() //nolint:errcheck // read side, or already failed
	}

	if own != "" {
		os.Remove(own) //nolint:errcheck // scratch, removed with its directory anyway
	}
}

type spoolReader struct {
	s   *spool
	off int64
}

func (r *spoolReader) Read(p []byte) (int, error) {
	s := r.s

	s.mu.Lock()
	for r.off >= s.n && !s.done {
		s.cond.Wait()
	}

	n, err := s.n, s.err

	// A failed fetch fails the reader even after all its bytes arrived: the
	// digest is only known to be wrong at the end.
	if err != nil {
		s.mu.Unlock()

		return 0, err
	}

	if r.off >= n {
		s.mu.Unlock()

		return 0, io.EOF
	}

	m := min(int64(len(p)), n-r.off)

	switch {
	case s.data != nil:
		k := copy(p[:m], s.data[r.off:])
		s.mu.Unlock()
		r.off += int64(k)

		return k, nil
	case s.spilled < 0 || r.off < s.spilled:
		i := int(r.off / chunk)
		k := copy(p[:m], s.mem[i][r.off%chunk:])
		r.off += int64(k)

		var done []byte
		if r.off%chunk == 0 {
			done, s.mem[i] = s.mem[i], nil
		}
		s.mu.Unlock()

		if done != nil {
			s.pool.put(done)
		}

		return k, nil
	}

	f, base := s.f, s.spilled
	s.mu.Unlock()

	k, err := f.ReadAt(p[:m], r.off-base)
	if errors.Is(err, io.EOF) && k > 0 {
		err = nil
	}

	r.off += int64(k)

	return k, err
}
