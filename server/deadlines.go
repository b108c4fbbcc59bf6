package server

import (
	"errors"
	"io"
	"net/http"
	"strings"
	"syscall"
	"time"
)

// Per-request deadlines, set through http.ResponseController on the
// connection (HTTP/1) or the stream (HTTP/2), instead of the http.Server's
// ReadTimeout and WriteTimeout: those bound a whole request, and would cut
// a multi-gigabyte download on a slow link or a gRPC build stream.
//
//   - A request body of a bounded route (a schematic, a gateway call) must
//     arrive whole within the read timeout.
//   - A streamed body (a registry upload under /v2/, a gRPC stream) must
//     make progress: each read gets the read timeout anew.
//   - Each write to the client must complete within the write timeout: a
//     slow client is served however long it takes, a stalled one is
//     dropped.
//
// Once a body is read to its end the read deadline is lifted: the HTTP/1
// server then watches the connection for the client hanging up, and a
// deadline left behind would cancel the request as if it had.
type deadlines struct {
	read, write time.Duration
}

// wrap installs the deadlines on a request and its response writer. done
// must run when the handler returns.
func (d deadlines) wrap(w http.ResponseWriter, r *http.Request, streamed bool) (http.ResponseWriter, *http.Request, func()) {
	rc := http.NewResponseController(w)

	if d.read > 0 && r.Body != nil && r.Body != http.NoBody {
		rc.SetReadDeadline(time.Now().Add(d.read)) //nolint:errcheck // unsupported only on writers that have no connection
		r.Body = &deadlineBody{ReadCloser: r.Body, rc: rc, timeout: d.read, rolling: streamed}
	}

	if d.write <= 0 {
		return w, r, func() {}
	}

	dw := &deadlineWriter{ResponseWriter: w, rc: rc, timeout: d.write, h2: r.ProtoMajor >= 2}

	// The server flushes what the handler left buffered after it returns:
	// that write too must not wait forever.
	return dw, r, func() { rc.SetWriteDeadline(time.Now().Add(d.write)) } //nolint:errcheck // see above
}

// isStreamed tells which requests have bodies of unbounded size or duration.
func isStreamed(r *http.Request) bool {
	return isGRPC(r) || strings.HasPrefix(r.URL.Path, "/v2/")
}

func isGRPC(r *http.Request) bool {
	return r.ProtoMajor == 2 && strings.HasPrefix(r.Header.Get("Content-Type"), "application/grpc")
}

type deadlineBody struct {
	io.ReadCloser

	rc      *http.ResponseController
	timeout time.Duration
	rolling bool
	done    bool
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	if b.done {
		return b.ReadCloser.Read(p)
	}

	if b.rolling {
		b.rc.SetReadDeadline(time.Now().Add(b.timeout)) //nolint:errcheck // as in wrap
	}

	n, err := b.ReadCloser.Read(p)

	switch {
	case err == nil:
	case errors.Is(err, io.EOF):
		b.done = true
		b.rc.SetReadDeadline(time.Time{}) //nolint:errcheck // as in wrap
	case isTimeout(err):
		// The deadline stays: the server discards what is left of the
		// body before it answers, and must not wait for it forever.
		b.done = true
		err = &bodyTimeoutError{timeout: b.timeout, err: err}
	}

	return n, err
}

// bodyTimeoutError is a request body that did not arrive in time.
type bodyTimeoutError struct {
	timeout time.Duration
	err     error
}

func (e *bodyTimeoutError) Error() string {
	return "the request body did not arrive within the read timeout (" + e.timeout.String() + "): " + e.err.Error()
}

func (e *bodyTimeoutError) Unwrap() error { return e.err }

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }

	return errors.As(err, &te) && te.Timeout()
}

// deadlineWriter gives each write and flush the write timeout. On HTTP/2 a
// stream's write deadline is a timer that resets the stream when it fires,
// written or not, so it is lifted again after each write: a build that
// streams no progress for a while must not be cut.
type deadlineWriter struct {
	http.ResponseWriter

	rc      *http.ResponseController
	timeout time.Duration
	h2      bool
	last    time.Time
	// failed is the error of a file sent past the server's buffer (see
	// ReadFrom): later writes fail with it, as they would have through
	// that buffer, which keeps a write error.
	failed error
}

func (w *deadlineWriter) arm() {
	now := time.Now()

	// On HTTP/1 the deadline only matters while a write waits, so it is
	// moved at most a few times per timeout rather than on every write.
	if w.h2 || now.Sub(w.last) > w.timeout/8 {
		w.rc.SetWriteDeadline(now.Add(w.timeout)) //nolint:errcheck // as in wrap
		w.last = now
	}
}

func (w *deadlineWriter) disarm() {
	if w.h2 {
		w.rc.SetWriteDeadline(time.Time{}) //nolint:errcheck // as in wrap
	}
}

func (w *deadlineWriter) Write(p []byte) (int, error) {
	if w.failed != nil {
		return 0, w.failed
	}

	w.arm()
	defer w.disarm()

	return w.ResponseWriter.Write(p)
}

// Flush is what gRPC's handler transport requires of its writer.
func (w *deadlineWriter) Flush() {
	w.FlushError() //nolint:errcheck // http.Flusher has no error
}

// FlushError is what http.ResponseController calls.
func (w *deadlineWriter) FlushError() error {
	w.arm()
	defer w.disarm()

	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Unwrap lets http.ResponseController reach the connection.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// sendfilePiece is how much of a file ReadFrom sends per write deadline: a
// client slower than this per write timeout counts as stalled.
const sendfilePiece = 1 << 20

// ReadFrom keeps file downloads (http.ServeContent) on sendfile: the
// server's own writer hands a file to the connection's ReadFrom, which a
// wrapper without ReadFrom hides. The file goes in pieces, each under the
// write timeout as a Write is, passed on as an *io.LimitedReader directly
// around the file: the one wrapper net's sendfile looks through.
func (w *deadlineWriter) ReadFrom(r io.Reader) (int64, error) {
	src, limit := r, int64(-1)
	if lr, ok := r.(*io.LimitedReader); ok {
		src, limit = lr.R, lr.N
	}

	rf, ok := w.ResponseWriter.(io.ReaderFrom)
	if _, file := src.(syscall.Conn); !ok || !file || w.h2 || w.failed != nil {
		return io.Copy(writeOnly{w}, r)
	}

	if lr, ok := r.(*io.LimitedReader); ok {
		defer func() { lr.N = limit }()
	}

	holes, sparse := src.(holeReporter)
	seeker, _ := src.(io.Seeker)

	var off int64
	if sparse && seeker != nil {
		var err error
		if off, err = seeker.Seek(0, io.SeekCurrent); err != nil {
			sparse = false
		}
	}

	var total int64

	for limit != 0 {
		piece := int64(sendfilePiece)
		if limit > 0 {
			piece = min(piece, limit)
		}

		if hole := int64(0); sparse && seeker != nil {
			if hole = min(holes.HoleAt(off), piece); hole > 0 {
				// The hole's zeros from memory, the file moved past them.
				w.arm()
				n, err := w.ResponseWriter.Write(zeroPiece[:hole])
				w.disarm()

				if err == nil {
					_, err = seeker.Seek(off+int64(n), io.SeekStart)
				}

				total, off = total+int64(n), off+int64(n)
				if limit > 0 {
					limit -= int64(n)
				}

				if err != nil {
					w.failed = err

					return total, err
				}

				continue
			}
		}

		w.arm()
		n, err := rf.ReadFrom(&io.LimitedReader{R: src, N: piece})
		w.disarm()

		off += n

		total += n
		if limit > 0 {
			limit -= n
		}

		if err != nil {
			w.failed = err

			return total, err
		}

		if n < piece {
			return total, nil
		}
	}

	return total, nil
}

// holeReporter is a file with holes (a cached sparse disk image): ReadFrom
// sends a hole's zeros from memory rather than have sendfile read them.
type holeReporter interface {
	HoleAt(off int64) int64
}

// zeroPiece is what a hole's bytes are sent from; nothing writes to it.
var zeroPiece [sendfilePiece]byte

// writeOnly hides a writer's ReadFrom from io.Copy.
type writeOnly struct{ io.Writer }
