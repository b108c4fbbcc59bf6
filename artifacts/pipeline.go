package artifacts

import (
	"context"
	"errors"
	"io"
	"sync"

	"github.com/kiln-dev/kiln/internal/iox"
)

// An extraction is three stages that each cost about the same CPU: reading
// and hashing the layer's compressed bytes, decompressing them and reading
// the tar, writing each file to the store and digesting it as it is
// written. readAhead and pipeCopy run the first and the last on goroutines
// of their own, so that on two cores the first build of a fresh kiln waits
// for about the slowest stage, not for the sum of the three.

// pipeDepth is how many ChunkSize buffers a stage may run ahead.
const pipeDepth = 3

// chunkPool keeps the stages' buffers across the files and layers of an
// extraction and across extractions, rather than leaving them to the
// garbage collector (each file and each layer would take pipeDepth MiB).
type chunkPool struct{ p sync.Pool }

func (c *chunkPool) get() []byte {
	if b, ok := c.p.Get().(*[]byte); ok {
		return *b
	}

	return make([]byte, iox.ChunkSize)
}

func (c *chunkPool) put(b []byte) { c.p.Put(&b) }

type chunk struct {
	buf []byte
	n   int
	err error
}

// readAhead reads r on a goroutine of its own, up to pipeDepth chunks
// ahead of its reader. Close stops the goroutine and waits for it, so that
// r may be closed after it.
type readAhead struct {
	full  chan chunk
	free  chan []byte
	stop  chan struct{}
	done  sync.WaitGroup
	cur   chunk
	off   int
	final error
	pool  *chunkPool
}

func newReadAhead(r io.Reader, pool *chunkPool) *readAhead {
	ra := &readAhead{full: make(chan chunk, pipeDepth), free: make(chan []byte, pipeDepth), stop: make(chan struct{}), pool: pool}

	for range pipeDepth {
		ra.free <- pool.get()
	}

	ra.done.Go(func() {
		defer close(ra.full)

		for {
			var buf []byte

			select {
			case buf = <-ra.free:
			case <-ra.stop:
				return
			}

			n, err := io.ReadFull(r, buf)
			if errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}

			select {
			case ra.full <- chunk{buf: buf, n: n, err: err}:
			case <-ra.stop:
				return
			}

			if err != nil {
				return
			}
		}
	})

	return ra
}

func (ra *readAhead) Read(p []byte) (int, error) {
	for ra.off == ra.cur.n {
		if ra.final != nil {
			return 0, ra.final
		}

		if ra.cur.buf != nil {
			ra.free <- ra.cur.buf
		}

		c, ok := <-ra.full
		if !ok {
			ra.final = io.ErrClosedPipe

			return 0, ra.final
		}

		ra.cur, ra.off = c, 0
		if c.err != nil {
			ra.final = c.err
		}
	}

	n := copy(p, ra.cur.buf[ra.off:ra.cur.n])
	ra.off += n

	return n, nil
}

func (ra *readAhead) Close() error {
	select {
	case <-ra.stop:
		return nil
	default:
		close(ra.stop)
	}

	ra.done.Wait()

	// Every buffer is now in free, full or cur; none is in use.
	for c := range ra.full {
		ra.free <- c.buf
	}

	if ra.cur.buf != nil {
		ra.free <- ra.cur.buf
		ra.cur = chunk{}
	}

	for len(ra.free) > 0 {
		ra.pool.put(<-ra.free)
	}

	return nil
}

// pipeCopy copies r to w as iox.Copy does, w's writes on a goroutine of
// their own, up to pipeDepth chunks behind r's reads.
func pipeCopy(ctx context.Context, w io.Writer, r io.Reader, pool *chunkPool) (int64, error) {
	full := make(chan chunk, pipeDepth)
	free := make(chan []byte, pipeDepth)

	for range pipeDepth {
		free <- pool.get()
	}

	defer func() {
		for len(free) > 0 {
			pool.put(<-free)
		}
	}()

	var (
		wg   sync.WaitGroup
		werr error
	)

	wg.Go(func() {
		for c := range full {
			if werr == nil {
				_, werr = w.Write(c.buf[:c.n])
			}

			free <- c.buf
		}
	})

	var (
		n   int64
		err error
	)

	for {
		if err = ctx.Err(); err != nil {
			break
		}

		buf := <-free

		var m int

		m, err = io.ReadFull(r, buf)
		if m > 0 {
			full <- chunk{buf: buf, n: m}
			n += int64(m)
		} else {
			free <- buf
		}

		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			err = nil

			break
		}

		if err != nil {
			break
		}
	}

	close(full)
	wg.Wait()

	if err == nil {
		err = werr
	}

	return n, err
}
