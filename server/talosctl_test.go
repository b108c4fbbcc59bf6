package server

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

// TestTalosctl: the factory's talosctl routes over the demo release, whose
// talosctl-all carries five binaries.
func TestTalosctl(t *testing.T) {
	ts := startServer(t, Config{DataDir: t.TempDir(), Demo: true})

	resp, body := ts.do(t, "GET", "/talosctl/1.13.0", "")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("list = %d %s %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}

	var urls []string
	if err := json.Unmarshal([]byte(body), &urls); err != nil {
		t.Fatal(err)
	}

	want := []string{"talosctl-darwin-amd64", "talosctl-darwin-arm64", "talosctl-linux-amd64", "talosctl-linux-arm64", "talosctl-windows-amd64.exe"}
	if len(urls) != len(want) {
		t.Fatalf("list = %v, want %v", urls, want)
	}

	for i, u := range urls {
		if !strings.HasSuffix(u, "/talosctl/v1.13.0/"+want[i]) || !strings.HasPrefix(u, "http://") {
			t.Errorf("url %d = %q, want an absolute URL ending in /talosctl/v1.13.0/%s", i, u, want[i])
		}
	}

	// Each URL downloads, through the same path on this server.
	path := urls[2][strings.Index(urls[2], "/talosctl/"):]

	resp, body = ts.do(t, "GET", path, "")
	if resp.StatusCode != 200 || !strings.Contains(body, "talosctl v1.13.0 talosctl-linux-amd64") ||
		resp.Header.Get("Content-Disposition") != `attachment; filename="talosctl-linux-amd64"` || resp.Header.Get("ETag") == "" {
		t.Fatalf("download = %d %v (%d bytes)", resp.StatusCode, resp.Header, len(body))
	}

	// A second download is served from the store, and Range works.
	r2, part := ts.doWith(t, "GET", path, "", http.Header{"Range": {"bytes=0-3"}})
	if r2.StatusCode != http.StatusPartialContent || part != body[:4] {
		t.Fatalf("range = %d %q", r2.StatusCode, part)
	}

	resp, _ = ts.do(t, "HEAD", "/talosctl/v1.13.0/talosctl-windows-amd64.exe", "")
	if resp.StatusCode != 200 || resp.ContentLength <= 0 {
		t.Fatalf("HEAD = %d, length %d", resp.StatusCode, resp.ContentLength)
	}

	for _, tc := range []struct {
		path string
		code int
		text string
	}{
		{"/talosctl/v1.13.0/talosctl-plan9-amd64", 404, `has no "talosctl-plan9-amd64"`},
		{"/talosctl/v1.13.0/imager", 404, `has no "imager"`},
		{"/talosctl/v1.99.0/talosctl-linux-amd64", 404, "v1.99.0"},
		{"/talosctl/v1.99.0", 404, "v1.99.0"},
		{"/talosctl/latest", 400, "latest"},
	} {
		resp, body := ts.do(t, "GET", tc.path, "")
		if resp.StatusCode != tc.code || !strings.Contains(body, tc.text) {
			t.Errorf("GET %s = %d %q, want %d naming %q", tc.path, resp.StatusCode, body, tc.code, tc.text)
		}
	}
}
