package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// readUntilClosed reads c until the server closes it and says how long
// that took; it gives up after limit.
func readUntilClosed(t *testing.T, c net.Conn, limit time.Duration) (time.Duration, string) {
	t.Helper()

	start := time.Now()
	c.SetReadDeadline(start.Add(limit)) //nolint:errcheck

	data, err := io.ReadAll(c)

	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("the server kept the connection open for %s; read %q", limit, data)
	}

	return time.Since(start), string(data)
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()

	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s", what)
		}
	}
}

func dial(t *testing.T, addr string) net.Conn {
	t.Helper()

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { c.Close() })

	return c
}

// A body that stops arriving is answered 408 and closed within the read
// timeout; idle keep-alive and idle HTTP/2 connections, and connections
// that never send a request, are closed.
func TestConnectionTimeouts(t *testing.T) {
	const timeout = time.Second

	ts := startServer(t, Config{ReadTimeout: timeout, WriteTimeout: timeout, IdleTimeout: timeout})

	t.Run("slow body", func(t *testing.T) {
		c := dial(t, ts.addr)
		io.WriteString(c, "POST /schematics HTTP/1.1\r\nHost: kiln\r\nContent-Length: 1000\r\n\r\ncustomization:") //nolint:errcheck

		took, resp := readUntilClosed(t, c, 10*timeout)
		if !strings.HasPrefix(resp, "HTTP/1.1 408") || !strings.Contains(resp, "read timeout") {
			t.Errorf("slow body answered %q", resp)
		}

		t.Logf("slow body closed after %s (read timeout %s)", took.Round(time.Millisecond), timeout)
	})

	t.Run("idle keep-alive", func(t *testing.T) {
		c := dial(t, ts.addr)
		io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n") //nolint:errcheck

		took, resp := readUntilClosed(t, c, 10*timeout)
		if !strings.HasPrefix(resp, "HTTP/1.1 200") {
			t.Errorf("healthz answered %q", resp)
		}

		t.Logf("idle keep-alive connection closed after %s (idle timeout %s)", took.Round(time.Millisecond), timeout)
	})

	t.Run("silent connection", func(t *testing.T) {
		took, _ := readUntilClosed(t, dial(t, ts.addr), 10*timeout)
		t.Logf("connection that sent nothing closed after %s", took.Round(time.Millisecond))
	})

	t.Run("idle h2c", func(t *testing.T) {
		c := dial(t, ts.addr)
		// The client preface and an empty SETTINGS frame.
		io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00") //nolint:errcheck

		took, frames := readUntilClosed(t, c, 10*timeout)
		if !strings.Contains(frames, "\x07") { // a GOAWAY frame type somewhere
			t.Logf("no GOAWAY seen in %q", frames)
		}

		t.Logf("idle HTTP/2 connection closed after %s (idle timeout %s)", took.Round(time.Millisecond), timeout)
	})
}

// The same over HTTP/2: a stream whose body stalls is answered 408 within
// the read timeout (h2c), and an idle TLS HTTP/2 connection is closed.
func TestHTTP2Timeouts(t *testing.T) {
	const timeout = time.Second

	dir := t.TempDir()
	cert, key := testfixture.SelfSignedCert(t, dir)

	plain := startServer(t, Config{ReadTimeout: timeout, WriteTimeout: timeout, IdleTimeout: timeout})
	secure := startServer(t, Config{ReadTimeout: timeout, WriteTimeout: timeout, IdleTimeout: timeout, TLSCert: cert, TLSKey: key})

	t.Run("slow body over h2c", func(t *testing.T) {
		protocols := new(http.Protocols)
		protocols.SetUnencryptedHTTP2(true)

		client := &http.Client{Transport: &http.Transport{Protocols: protocols}, Timeout: 20 * timeout}
		pr, pw := io.Pipe()

		defer pw.Close()

		go pw.Write([]byte("customization:")) //nolint:errcheck

		start := time.Now()

		resp, err := client.Post("http://"+plain.addr+"/schematics", "application/yaml", pr)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()

		if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("HTTP/%d %d, want HTTP/2 408", resp.ProtoMajor, resp.StatusCode)
		}

		t.Logf("stalled HTTP/2 body answered 408 after %s (read timeout %s)", time.Since(start).Round(time.Millisecond), timeout)
	})

	t.Run("idle TLS h2", func(t *testing.T) {
		c, err := tls.Dial("tcp", secure.addr, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}}) //nolint:gosec // test certificate
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()

		if c.ConnectionState().NegotiatedProtocol != "h2" {
			t.Fatalf("negotiated %q", c.ConnectionState().NegotiatedProtocol)
		}

		io.WriteString(c, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00") //nolint:errcheck

		took, _ := readUntilClosed(t, c, 10*timeout)
		t.Logf("idle HTTP/2 over TLS closed after %s (idle timeout %s)", took.Round(time.Millisecond), timeout)
	})
}

// zeros is size bytes of zeros, seekable, for ServeContent.
type zeros struct{ off, size int64 }

func (z *zeros) Read(p []byte) (int, error) {
	if z.off >= z.size {
		return 0, io.EOF
	}

	n := int(min(int64(len(p)), z.size-z.off))
	clear(p[:n])
	z.off += int64(n)

	return n, nil
}

func (z *zeros) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		z.off = off
	case io.SeekCurrent:
		z.off += off
	case io.SeekEnd:
		z.off = z.size + off
	}

	return z.off, nil
}

// The deadlines are per write, not per response: a download that takes many
// times the timeouts on a slow link is not cut, nor an HTTP/2 stream that
// writes nothing for longer than them (a build streaming progress), while a
// client that stops reading is dropped.
func TestDeadlinesKeepStreams(t *testing.T) {
	const timeout = 300 * time.Millisecond

	dl := deadlines{read: timeout, write: timeout}
	stalled := make(chan error, 1)

	mux := http.NewServeMux()
	mux.HandleFunc("/download/{size}", func(w http.ResponseWriter, r *http.Request) {
		w, r, done := dl.wrap(w, r, false)
		defer done()

		size := int64(8 << 20)
		if r.PathValue("size") == "huge" {
			size = 1 << 40
		}

		rec := &statusRecorder{ResponseWriter: w}
		http.ServeContent(rec, r, "", time.Time{}, &zeros{size: size})

		if size == 1<<40 {
			_, err := w.Write([]byte{0})
			stalled <- err
		}
	})
	mux.HandleFunc("/pauses", func(w http.ResponseWriter, r *http.Request) {
		w, _, done := dl.wrap(w, r, true)
		defer done()

		for i := range 3 {
			io.WriteString(w, strings.Repeat("x", i+1)+"\n") //nolint:errcheck
			http.NewResponseController(w).Flush()            //nolint:errcheck
			time.Sleep(4 * timeout)
		}
	})

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetUnencryptedHTTP2(true)

	srv := &http.Server{Handler: mux, Protocols: protocols, ReadHeaderTimeout: timeout}

	go srv.Serve(lis) //nolint:errcheck

	t.Cleanup(func() { srv.Close() })

	base := "http://" + lis.Addr().String()

	t.Run("slow download", func(t *testing.T) {
		resp, err := http.Get(base + "/download/8MiB")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()

		start := time.Now()
		buf := make([]byte, 256<<10)

		var n int64

		for {
			k, err := resp.Body.Read(buf)
			n += int64(k)

			if err != nil {
				break
			}

			time.Sleep(20 * time.Millisecond) // about 10 MiB/s at most
		}

		took := time.Since(start)
		if n != 8<<20 {
			t.Fatalf("got %d bytes in %s, want 8 MiB", n, took)
		}

		t.Logf("8 MiB read slowly over %s, %.0fx the write timeout", took.Round(time.Millisecond), float64(took)/float64(timeout))
	})

	t.Run("quiet HTTP/2 stream", func(t *testing.T) {
		h2c := &http.Client{Transport: &http.Transport{Protocols: func() *http.Protocols {
			p := new(http.Protocols)
			p.SetUnencryptedHTTP2(true)

			return p
		}()}}

		resp, err := h2c.Get(base + "/pauses")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()

		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.ProtoMajor != 2 || string(body) != "x\nxx\nxxx\n" {
			t.Fatalf("HTTP/%d %q, %v; want three lines over HTTP/2", resp.ProtoMajor, body, err)
		}
	})

	t.Run("stalled client", func(t *testing.T) {
		c := dial(t, lis.Addr().String())
		io.WriteString(c, "GET /download/huge HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck
		bufio.NewReader(c).Peek(1)                                          //nolint:errcheck // the response started; then read no more

		select {
		case err := <-stalled:
			if err == nil {
				t.Fatal("the server kept writing to a client that read nothing")
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a stalled download was not dropped")
		}
	})
}

// With every slot taken by idle connections, a new client still gets in:
// the oldest idle connection is closed for it. With every slot busy, health
// checks still get in and other requests are told to come back.
func TestConnectionCap(t *testing.T) {
	const maxConns = 8

	ts := startServer(t, Config{MaxConnections: maxConns, ReadTimeout: time.Minute})
	lim := ts.srv.conns

	for range 5 * maxConns {
		dial(t, ts.addr)
	}

	for i := range 3 {
		start := time.Now()

		client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

		resp, err := client.Get("http://" + ts.addr + "/healthz")
		if err != nil {
			t.Fatalf("healthz with %d idle connections: %v", 5*maxConns, err)
		}
		resp.Body.Close()

		if resp.StatusCode != 200 {
			t.Fatalf("healthz = %d", resp.StatusCode)
		}

		t.Logf("healthz %d with %d idle connections open against a cap of %d: %s", i, 5*maxConns, maxConns, time.Since(start).Round(time.Microsecond))
	}

	if open := lim.open(); open > maxConns+healthReserve || lim.evicted.Load() == 0 {
		t.Fatalf("%d connections open, %d evicted", open, lim.evicted.Load())
	}

	// Now every slot busy: requests whose bodies are on their way.
	var wg sync.WaitGroup

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()

	var bodies []*io.PipeWriter

	// The health checks' connections close after their answers; until the
	// server has seen them close they count as busy, and the count below
	// would take one for a request.
	waitFor(t, "the health checks' connections to close", func() bool { return lim.open() == lim.idleCount() })

	// One at a time: a connection accepted but not yet in a request counts
	// as idle, and the next one would evict it.
	for i := range maxConns {
		pr, pw := io.Pipe()
		bodies = append(bodies, pw)

		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, "POST", "http://"+ts.addr+"/schematics", pr)
			client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}

			if resp, err := client.Do(req); err == nil {
				resp.Body.Close()
			}
		})

		pw.Write([]byte("customization:")) //nolint:errcheck

		waitFor(t, fmt.Sprintf("request %d to be read", i), func() bool { return lim.open()-lim.idleCount() == i+1 })
	}

	if lim.idleCount() != 0 || lim.open() < maxConns {
		t.Fatalf("every slot should be busy: %d open, %d idle", lim.open(), lim.idleCount())
	}

	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}

	resp, err := client.Get("http://" + ts.addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz with every slot busy: %v %v", resp, err)
	}
	resp.Body.Close()

	resp, err = client.Get("http://" + ts.addr + "/versions")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("GET /versions with every slot busy = %d, want 503 with Retry-After", resp.StatusCode)
	}

	cancel()

	for _, pw := range bodies {
		pw.Close()
	}

	wg.Wait()
}

func TestConnLimitFor(t *testing.T) {
	for nofile, want := range map[uint64]int{1024: 352, 20000: 9840, 1 << 20: 524128, 100: minConnLimit} {
		if got := connLimitFor(nofile); got != want {
			t.Errorf("connLimitFor(%d) = %d, want %d", nofile, got, want)
		}
	}
}

// A gRPC stream that sends nothing for many times the timeouts (a health
// watch, a build between progress messages) is not cut by them.
func TestGRPCStreamOutlivesTimeouts(t *testing.T) {
	const timeout = 300 * time.Millisecond

	ts := startServer(t, Config{ReadTimeout: timeout, WriteTimeout: timeout, IdleTimeout: timeout})

	watch, err := healthpb.NewHealthClient(ts.conn).Watch(t.Context(), &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}

	if first, err := watch.Recv(); err != nil || first.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first health status: %v, %v", first, err)
	}

	time.Sleep(6 * timeout)

	// Shutting down turns health NOT_SERVING: the stream must still be
	// there to say so.
	go ts.stop()

	next, err := watch.Recv()
	if err != nil || next.GetStatus() != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Fatalf("after %s of silence: %v, %v", 6*timeout, next, err)
	}
}

// A cap above what the file-descriptor limit allows is taken, with a
// warning.
func TestConnectionCapAboveFileLimit(t *testing.T) {
	logs := &syncWriter{w: &strings.Builder{}}

	ts := startServerLogged(t, Config{MaxConnections: 1 << 30}, slog.New(slog.NewTextHandler(logs, nil)))
	if resp, _ := ts.do(t, "GET", "/healthz", ""); resp.StatusCode != 200 {
		t.Fatal(resp.Status)
	}

	if !strings.Contains(logs.String(), "above what the file-descriptor limit allows") {
		t.Errorf("no warning:\n%s", logs.String())
	}
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.w.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.w.(*strings.Builder).String()
}
