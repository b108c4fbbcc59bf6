package server

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// sendfileServerEnv makes the test binary a kiln that serves until its
// stdin closes (TestDownloadsUseSendfile runs it under strace).
const sendfileServerEnv = "KILN_SERVER_SENDFILE_HELPER"

func TestSendfileServerHelper(t *testing.T) {
	if os.Getenv(sendfileServerEnv) == "" {
		t.Skip("run by TestDownloadsUseSendfile")
	}

	// With the write timeout of a real server: its writer wraps the response.
	ts := startServer(t, Config{Demo: true, WriteTimeout: time.Minute})
	fmt.Println(ts.addr)
	io.Copy(io.Discard, os.Stdin) //nolint:errcheck // until the test is done
}

// Downloads, whole and ranged, go from the cached file to the socket with
// sendfile(2), through every wrapper of the response writer: the bytes
// served are counted in the sendfile calls strace sees, but for the first
// 512 of each response, which net/http writes itself.
func TestDownloadsUseSendfile(t *testing.T) {
	testfixture.RequireTool(t, "strace")

	straceBin, err := exec.LookPath("strace")
	if err != nil {
		t.Fatal(err)
	}

	trace := filepath.Join(t.TempDir(), "strace.out")

	cmd := exec.Command(straceBin, "-f", "-qq", "-yy", "--seccomp-bpf", "-e", "trace=sendfile", "-e", "signal=none", "-o", trace,
		os.Args[0], "-test.run=^TestSendfileServerHelper$", "-test.count=1")
	cmd.Env = append(os.Environ(), sendfileServerEnv+"=1")
	cmd.Stderr = os.Stderr

	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}

	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}

	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() }) //nolint:errcheck // ended below, or by now

	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatal("the server under strace did not start")
	}

	ts := &testServer{addr: strings.TrimSpace(lines.Text()), http: &http.Client{}}
	url := "/image/" + emptyID + "/v1.13.0/metal-amd64.iso" // 16 MiB in the demo

	if resp, _ := ts.do(t, "POST", "/schematics", "{}"); resp.StatusCode != 201 {
		t.Fatal(resp.Status)
	}

	_, full := ts.do(t, "GET", url, "")    // built, then served
	resp, warm := ts.do(t, "GET", url, "") // from the cache

	if len(full) < 1<<20 || warm != full || resp.Header.Get("X-Kiln-Cache") != "hit" {
		t.Fatalf("downloads: %d and %d bytes, X-Kiln-Cache %q", len(full), len(warm), resp.Header.Get("X-Kiln-Cache"))
	}

	from, to := 1000, len(full)-1000
	resp, part := ts.doWith(t, "GET", url, "", http.Header{"Range": {"bytes=" + strconv.Itoa(from) + "-" + strconv.Itoa(to-1)}})

	if resp.StatusCode != http.StatusPartialContent || part != full[from:to] {
		t.Fatalf("Range = %d, %d bytes", resp.StatusCode, len(part))
	}

	ts.http.CloseIdleConnections()

	// pid sendfile(9<TCP:[127.0.0.1:41235->127.0.0.1:53210]>, 11</.../assets/xx/key>, NULL, 1048064) = 1048064
	call := regexp.MustCompile(`sendfile\(\d+<TCP:\[[^\]]*\]>, \d+<(/[^>]*/assets/[^>]*)>, [^)]*\) = (\d+)`)

	// The ISO is written at offsets, with holes, whose zeros go from memory
	// (deadlineWriter.ReadFrom): what must go by sendfile is its data, read
	// from its extents while the helper (and its data directory) lives.
	out, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}

	first := call.FindStringSubmatch(string(out))
	if first == nil {
		t.Fatalf("no sendfile from a cached asset:\n%s", out)
	}

	data := dataBytes(t, first[1], 0, int64(len(full)))*2 + dataBytes(t, first[1], int64(from), int64(to))

	stdin.Close()

	if err := cmd.Wait(); err != nil {
		t.Fatalf("server under strace: %v", err)
	}

	if out, err = os.ReadFile(trace); err != nil {
		t.Fatal(err)
	}

	var calls, sent int

	for _, m := range call.FindAllStringSubmatch(string(out), -1) {
		n, _ := strconv.Atoi(m[2])
		calls++
		sent += n
	}

	served := 2*len(full) + len(part)
	if want := int(data) - 3*512; sent < want || sent > served {
		t.Fatalf("%d sendfile calls from cached assets to sockets sent %d bytes; served %d, of them %d of data, want at least %d:\n%s",
			calls, sent, served, data, want, out)
	}

	t.Logf("%d sendfile calls sent %d of the %d bytes served (2 whole downloads and a range; %d bytes of data, the rest holes)", calls, sent, served, data)
}

// dataBytes is how many bytes of [from, to) in the file at path are data,
// not holes (SEEK_DATA, SEEK_HOLE).
func dataBytes(t *testing.T, path string, from, to int64) int64 {
	t.Helper()

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()

	var n int64

	for off := from; off < to; {
		start, err := f.Seek(off, 3) // SEEK_DATA
		if err != nil || start >= to {
			break
		}

		end, err := f.Seek(start, 4) // SEEK_HOLE
		if err != nil {
			t.Fatal(err)
		}

		n += min(end, to) - start
		off = end
	}

	return n
}

// A file download goes past net/http's buffer (sendfile), yet keeps the
// write timeout of each piece: a client that stops reading is dropped, and
// the handler's later writes fail as they do on the buffered path.
func TestSendfileDownloadStalledClient(t *testing.T) {
	const timeout = 300 * time.Millisecond

	huge, err := os.Create(filepath.Join(t.TempDir(), "huge"))
	if err != nil {
		t.Fatal(err)
	}
	defer huge.Close()

	if err := huge.Truncate(1 << 40); err != nil { // sparse: no space used
		t.Fatal(err)
	}

	dl := deadlines{read: timeout, write: timeout}
	stalled := make(chan error, 1)

	srv := &http.Server{ReadHeaderTimeout: timeout, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w, r, done := dl.wrap(w, r, false)
		defer done()

		http.ServeContent(&statusRecorder{ResponseWriter: w}, r, "", time.Time{}, huge)

		_, err := w.Write([]byte{0})
		stalled <- err
	})}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}

	go srv.Serve(lis) //nolint:errcheck

	t.Cleanup(func() { srv.Close() })

	c := dial(t, lis.Addr().String())
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n") //nolint:errcheck
	bufio.NewReader(c).Peek(1)                             //nolint:errcheck // the response started; then read no more

	select {
	case err := <-stalled:
		if err == nil {
			t.Fatal("the server kept writing to a client that read nothing")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a stalled download was not dropped")
	}
}
