package imagecache

import (
	"errors"
	"io"
	"os"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// directAlign is the alignment O_DIRECT wants of buffers, offsets and
// lengths: the logical block size, which is at most the page size on the
// file systems an image cache is written to.
const directAlign = 4096

// alignedChunk returns a chunk-sized buffer at an aligned address.
func alignedChunk() []byte {
	b := make([]byte, chunk+directAlign)

	off := int(uintptr(unsafe.Pointer(&b[0])) & (directAlign - 1))
	if off != 0 {
		off = directAlign - off
	}

	return b[off : off+chunk : off+chunk]
}

func aligned(b []byte) bool { return uintptr(unsafe.Pointer(&b[0]))&(directAlign-1) == 0 }

// outFile is a new output file. When the output is to be synced, whole
// chunks are written with O_DIRECT: they go from the buffer to the device
// without first allocating page cache, which costs more than the copy, and
// leave the final syncfs only the tail and the metadata to write. Where the
// file system refuses O_DIRECT, and for unsynced output, it writes through
// the page cache (starting writeback as it goes when synced).
type outFile struct {
	f      *os.File
	pool   *chunks
	buf    []byte // staging for direct writes, aligned
	n      int
	off    int64 // bytes written
	direct bool
	wb     *writeback // buffered and synced
}

// createOut creates path, which must not exist.
func createOut(path string, sync bool, pool *chunks) (*outFile, error) {
	const flags = os.O_CREATE | os.O_EXCL | os.O_WRONLY

	if sync {
		f, err := os.OpenFile(path, flags|unix.O_DIRECT, 0o644)
		if err == nil {
			return &outFile{f: f, pool: pool, buf: pool.get(), direct: true}, nil
		}

		if !errors.Is(err, unix.EINVAL) {
			return nil, err
		}
	}

	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		return nil, err
	}

	o := &outFile{f: f}
	if sync {
		o.wb = &writeback{f: f}
	}

	return o, nil
}

func (o *outFile) Write(p []byte) (int, error) {
	if !o.direct {
		if o.wb != nil {
			return o.wb.Write(p)
		}

		return o.f.Write(p)
	}

	// A whole aligned chunk (the layer's) needs no staging.
	if o.n == 0 && len(p) == len(o.buf) && aligned(p) {
		k, err := o.f.Write(p)
		if !errors.Is(err, unix.EINVAL) {
			o.off += int64(k)

			return k, err
		}
	}

	n := len(p)

	for len(p) > 0 {
		k := copy(o.buf[o.n:], p)
		o.n += k
		p = p[k:]

		if o.n == len(o.buf) {
			if err := o.flush(); err != nil {
				return 0, err
			}
		}
	}

	return n, nil
}

// flush writes the staged bytes: directly while they are whole blocks, else
// (the tail, or a file system that takes the flag but not the write)
// through the page cache.
func (o *outFile) flush() error {
	if o.n == 0 {
		return nil
	}

	err := o.put(o.buf[:o.n])
	o.n = 0

	return err
}

// put writes b at the end of the file: directly while it is whole blocks
// and the file system takes it, else through the page cache.
func (o *outFile) put(b []byte) error {
	if o.direct && len(b)%directAlign == 0 {
		k, err := o.f.Write(b)
		if !errors.Is(err, unix.EINVAL) {
			o.off += int64(k)

			return err
		}
	}

	if o.direct {
		if err := o.buffered(); err != nil {
			return err
		}
	}

	k, err := o.wb.Write(b)
	o.off += int64(k)

	return err
}

// buffered turns O_DIRECT off for the rest of the file.
func (o *outFile) buffered() error {
	fd := int(o.f.Fd())

	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err == nil {
		_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_DIRECT)
	}

	if err != nil {
		return err
	}

	o.direct = false
	o.wb = &writeback{f: o.f, off: o.off, started: o.off}

	return nil
}

// Close writes the tail, starts its writeback when synced, and closes.
func (o *outFile) Close() error {
	var err error

	if o.direct {
		err = o.flush()
	}

	if o.buf != nil {
		o.pool.put(o.buf)
		o.buf = nil
	}

	if o.wb != nil && err == nil {
		o.wb.kick()
	}

	if cerr := o.f.Close(); err == nil {
		err = cerr
	}

	return err
}

// writebackEvery is how often writeback asks the kernel to start writing.
const writebackEvery = 32 << 20

// writeback writes to f and, every writebackEvery bytes, asks the kernel to
// start writing them to disk (sync_file_range, which does not wait). The
// final syncfs then finds little left to flush: the disk works while the
// network does, instead of after it.
type writeback struct {
	f            *os.File
	off, started int64
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)

	if w.off-w.started >= writebackEvery {
		w.kick()
	}

	return n, err
}

// kick starts writeback of what was written since the last kick. It is a
// hint: file systems that refuse it are synced at the end all the same.
func (w *writeback) kick() {
	if w.off > w.started {
		unix.SyncFileRange(int(w.f.Fd()), w.started, w.off-w.started, unix.SYNC_FILE_RANGE_WRITE) //nolint:errcheck // a hint
		w.started = w.off
	}
}

// readFrom copies r to the end of the file. Direct output is read into
// aligned chunks, each written on a goroutine while the next is read: the
// network and the hash need not wait for the device, and no copy into
// staging is made. Other output goes through buf.
func (o *outFile) readFrom(r io.Reader, buf []byte) (int64, error) {
	var spare []byte
	if o.direct && o.n == 0 {
		spare = o.pool.get()
	}

	if spare == nil {
		return io.CopyBuffer(onlyWriter{o}, onlyReader{r}, buf)
	}

	free := make(chan []byte, 2)
	free <- o.buf
	free <- spare

	full := make(chan []byte, 1)
	werr := make(chan error, 1)

	var failed atomic.Bool

	go func() {
		var err error

		for b := range full {
			if err == nil {
				if err = o.put(b); err != nil {
					failed.Store(true)
				}
			}

			free <- b
		}

		werr <- err
	}()

	var (
		n    int64
		rerr error
		last []byte // the buffer holding the tail, kept as staging
	)

	for !failed.Load() {
		b := <-free

		k, err := io.ReadFull(r, b)
		n += int64(k)

		if err == nil {
			full <- b

			continue
		}

		if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			last, o.n = b, k
		} else {
			rerr = err

			free <- b
		}

		break
	}

	close(full)

	err := <-werr
	if err == nil {
		err = rerr
	}

	if last == nil {
		last = <-free
		o.n = 0
	}

	o.buf = last

	for len(free) > 0 {
		o.pool.put(<-free)
	}

	return n, err
}
