package registry

import (
	"io"
	"net/http"
	"strconv"
	"sync"

	"github.com/kiln-dev/kiln/access"
)

// Transport returns a RoundTripper that serves requests by calling h in
// process, as kiln itself (access.Internal): the embedded registry's access
// rules let kiln read and write what no anonymous client may. Response
// bodies stream through a pipe, so a multi-GiB blob is never held in memory.
func Transport(h http.Handler) http.RoundTripper { return inproc{h} }

type inproc struct{ h http.Handler }

func (t inproc) RoundTrip(req *http.Request) (*http.Response, error) {
	pr, pw := io.Pipe()
	w := &pipeWriter{header: http.Header{}, body: pw, ready: make(chan struct{})}

	// The handler must see a server-side request: no RequestURI is an
	// outgoing request, and the body must be readable by the handler.
	sreq := req.Clone(access.Internal(req.Context()))
	sreq.RequestURI = req.URL.RequestURI()

	if sreq.Body == nil {
		sreq.Body = http.NoBody
	}

	go func() {
		defer func() {
			w.WriteHeader(http.StatusOK) // a handler that wrote nothing still answered 200
			pw.Close()
		}()

		t.h.ServeHTTP(w, sreq)
	}()

	select {
	case <-w.ready:
	case <-req.Context().Done():
		pr.CloseWithError(req.Context().Err())

		return nil, req.Context().Err()
	}

	resp := &http.Response{
		Status:        http.StatusText(w.status),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.snapshot,
		Body:          pr,
		ContentLength: -1,
		Request:       req,
	}

	if req.Method == http.MethodHead {
		pr.Close()
		resp.Body = http.NoBody
	}

	if cl := w.snapshot.Get("Content-Length"); cl != "" {
		if n, err := strconv.ParseInt(cl, 10, 64); err == nil {
			resp.ContentLength = n
		}
	}

	return resp, nil
}

type pipeWriter struct {
	header   http.Header
	snapshot http.Header
	body     *io.PipeWriter
	status   int
	once     sync.Once
	ready    chan struct{}
}

func (w *pipeWriter) Header() http.Header { return w.header }

func (w *pipeWriter) WriteHeader(code int) {
	w.once.Do(func() {
		w.status = code
		w.snapshot = w.header.Clone()
		close(w.ready)
	})
}

func (w *pipeWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)

	return w.body.Write(p)
}

// Flush is a no-op: every Write already reaches the reader.
func (w *pipeWriter) Flush() {}
