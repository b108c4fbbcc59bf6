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
	mu    sync.Mutex
	freed sync.Cond // a buffer came back, or wake was called
	free  [][]byte
	left  int // buffers that may still be allocated
}

// newChunks returns a pool of at most limit bytes; limit < 0 means no
// limit.
func newChunks(limit int) *chunks {
	c := &chunks{left: -1}
	if limit >= 0 {
		c.left = limit / chunk
	}

	c.freed.L = &c.mu

	return c
}

// get returns a buffer, or nil when the limit is reached.
func (c *chunks) get() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()

	return c.take()
}

// wait is get that, at the limit, waits for a buffer to come back as long
// as give() is false; it returns nil once give() is true.
func (c *chunks) wait(give func() bool) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()

	for {
		if b := c.take(); b != nil || give() {
			return b
		}

		c.freed.Wait()
	}
}

// wake makes waiters look at their give func again.
func (c *chunks) wake() {
	c.mu.Lock()
	c.freed.Broadcast()
	c.mu.Unlock()
}

// take is get with c.mu held.
func (c *chunks) take() []byte {
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
	c.freed.Broadcast()
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
	// waitMem: the writer waits for memory rather than spill until the
	// spool is read, so that fetches running ahead of the packer do not
	// fill the disk twice; the spool being read spills, so the packer
	// always makes progress.
	waitMem bool
	read    bool // reader was called, or nobody will read
	gone    bool // nobody will read: writes fail
}

// errAbandoned fails the writes of a spool nobody will read.
var errAbandoned = errors.New("image cache: write abandoned")

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
		s.grew(k)

		if err != nil {
			return n - len(p) + k, err
		}

		p = p[k:]
	}

	return n, nil
}

// write puts a prefix of p at offset s.n.
func (s *spool) write(p []byte) (int, error) {
	dst, err := s.space()
	if err != nil {
		return 0, err
	}

	if dst == nil {
		return s.f.Write(p)
	}

	return copy(dst, p), nil
}

// readFrom reads r to EOF into the spool: straight into its memory
// chunks, then, once spilled, through buf into the file.
func (s *spool) readFrom(r io.Reader, buf []byte) (int64, error) {
	var n int64

	for {
		dst, err := s.space()
		if err != nil {
			return n, err
		}

		if dst == nil {
			k, err := io.CopyBuffer(onlyWriter{s}, onlyReader{r}, buf)

			return n + k, err
		}

		k, err := r.Read(dst)
		n += int64(k)
		s.grew(k)

		if errors.Is(err, io.EOF) {
			return n, nil
		}

		if err != nil {
			return n, err
		}
	}
}

// grew makes k more written bytes readable.
func (s *spool) grew(k int) {
	if k <= 0 {
		return
	}

	s.mu.Lock()
	s.n += int64(k)
	s.mu.Unlock()
	s.cond.Broadcast()
}

// space returns the free part of the last memory chunk, adding a chunk
// when it is full, or nil once the spool writes to its file. Only the
// worker changes n, mem and f, so they are read here without the lock;
// the reader only reads bytes below n.
func (s *spool) space() ([]byte, error) {
	if s.spilled >= 0 {
		return nil, nil
	}

	if s.n < int64(len(s.mem))*chunk {
		return s.mem[len(s.mem)-1][s.n%chunk:], nil
	}

	b := s.pool.get()
	if b == nil && s.waitMem {
		b = s.pool.wait(s.reading)
	}

	if b != nil {
		s.mu.Lock()
		s.mem = append(s.mem, b)
		s.mu.Unlock()

		return b, nil
	}

	s.mu.Lock()
	gone := s.gone
	s.mu.Unlock()

	if gone {
		return nil, errAbandoned
	}

	f, own, err := s.spill()
	if err != nil {
		return nil, err
	}

	s.mu.Lock()
	s.f, s.own, s.spilled = f, own, s.n
	s.mu.Unlock()

	return nil, nil
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
func (s *spool) reader() *spoolReader {
	s.mu.Lock()
	s.read = true
	s.mu.Unlock()
	s.pool.wake()

	return &spoolReader{s: s}
}

// reading reports whether reader was called (or abandon).
func (s *spool) reading() bool {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.read
}

// abandon fails the spool's further writes (no waiting for memory): nobody
// will read it.
func (s *spool) abandon() {
	s.mu.Lock()
	s.read, s.gone = true, true
	s.mu.Unlock()
	s.pool.wake()
}

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
	v, done, err := r.next(p)

	if len(v) > 0 && &v[0] != &p[0] {
		copy(p, v)
	}

	if done != nil {
		r.s.pool.put(done)
	}

	return len(v), err
}

// writeTo writes the rest of the spool to w: memory and inline bytes as
// they are, file bytes through buf.
func (r *spoolReader) writeTo(w io.Writer, buf []byte) (int64, error) {
	var n int64

	for {
		v, done, err := r.next(buf)
		if errors.Is(err, io.EOF) {
			return n, nil
		}

		if err != nil {
			return n, err
		}

		k, err := w.Write(v)
		n += int64(k)

		if done != nil {
			r.s.pool.put(done)
		}

		if err != nil {
			return n, err
		}
	}
}

// next waits for and returns the next at most len(buf) bytes: a view of
// the spool's memory (or inline data), or bytes read from its file into
// buf. A memory chunk the view finishes is returned as done, to be put back
// in the pool once the view is used.
func (r *spoolReader) next(buf []byte) (v, done []byte, err error) {
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

		return nil, nil, err
	}

	if r.off >= n {
		s.mu.Unlock()

		return nil, nil, io.EOF
	}

	m := min(int64(len(buf)), n-r.off)

	switch {
	case s.data != nil:
		v = s.data[r.off : r.off+m]
	case s.spilled < 0 || r.off < s.spilled:
		// Spills start at a chunk boundary: the chunk is all memory.
		i, lo := int(r.off/chunk), r.off%chunk
		m = min(m, chunk-lo)
		v = s.mem[i][lo : lo+m]

		if (lo+m)%chunk == 0 {
			done, s.mem[i] = s.mem[i], nil
		}
	default:
		f, base := s.f, s.spilled
		s.mu.Unlock()

		k, err := f.ReadAt(buf[:m], r.off-base)
		if errors.Is(err, io.EOF) && k > 0 {
			err = nil
		}

		r.off += int64(k)

		return buf[:k], nil, err
	}

	s.mu.Unlock()
	r.off += int64(len(v))

	return v, done, nil
}
