package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/builder"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/schematic"
)

func repeatList(prefix, item string, n int) string {
	var b strings.Builder

	b.WriteString(prefix)

	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}

		b.WriteString(fmt.Sprintf(item, i))
	}

	b.WriteString("]")

	return b.String()
}

// Each schematic limit is refused with 400 naming it, on the public route
// and on gRPC; what is within them is taken, a large embedded machine
// configuration included.
func TestSchematicLimits(t *testing.T) {
	ts := startServer(t, Config{})
	// A 3 MiB body parsed under the race detector on two loaded cores took
	// over the default 10 s in CI; this test is about answers, not speed.
	ts.http.Timeout = 2 * time.Minute

	// A machine configuration of 100,000 lines, as a block scalar and as a
	// JSON string: one scalar, whatever its size.
	var cfg strings.Builder
	for i := 0; cfg.Len() < 3<<20; i++ {
		fmt.Fprintf(&cfg, "machine:\n  - key%d: [a, b, {c: d}]\n", i)
	}

	block := "customization:\n  embeddedMachineConfiguration: |\n    " + strings.ReplaceAll(strings.TrimSuffix(cfg.String(), "\n"), "\n", "\n    ") + "\n  extraKernelArgs: [a, b]\n"
	jsonBody, _ := json.Marshal(map[string]any{"customization": map[string]any{"embeddedMachineConfiguration": cfg.String(), "extraKernelArgs": []string{"a", "b"}}})

	for name, body := range map[string]string{"block scalar": block, "JSON string": string(jsonBody)} {
		t.Run("large machine configuration as a "+name, func(t *testing.T) {
			sc, err := schematic.Parse([]byte(body))
			if err != nil {
				t.Fatal(err)
			}

			want, _ := sc.ID()

			resp, out := ts.do(t, "POST", "/schematics", body)
			if resp.StatusCode != 201 || !strings.Contains(out, want) {
				t.Fatalf("POST = %d %.300s, want 201 with %s", resp.StatusCode, out, want)
			}
		})
	}

	aliasBomb := "overlay: {image: a, name: b, options: {a: &a " + repeatList("[", "x%d", 300) + ", b: [" + strings.Repeat("*a, ", 299) + "*a]}}\n"

	deep := strings.Repeat("[", 100) + strings.Repeat("]", 100)

	for _, tc := range []struct {
		name, body string
		status     int
		want       string
	}{
		{"300,000 kernel args", "customization:\n  extraKernelArgs:\n" + strings.Repeat("    - a=bbbbbbbb\n", 300_000)[:4<<20-100], 400, "more than 65536 YAML nodes"},
		{"flow of 1,000,000 ints", "overlay: {image: a, name: b, options: {k: [" + strings.Repeat("1,", 1_000_000) + "1]}}", 400, "more than 65536 YAML nodes"},
		{"kernel args", repeatList("customization: {extraKernelArgs: [", "a%d", 1025) + "}", 400, "customization.extraKernelArgs has 1025 entries; the limit is 1024"},
		{"meta", repeatList("customization: {meta: [", "{key: 1, value: v%d}", 257) + "}", 400, "customization.meta has 257 entries; the limit is 256"},
		{"extensions", repeatList("customization: {systemExtensions: {officialExtensions: [", "siderolabs/e%d", 257) + "}}", 400, "officialExtensions has 257 entries; the limit is 256"},
		{"image cache images", repeatList("customization: {imageCache: {images: [", "r/i%d:1", 1025) + "}}", 400, "customization.imageCache.images has 1025 entries; the limit is 1024"},
		{"overlay options depth", "overlay: {image: a, name: b, options: {k: " + strings.Repeat("{k: ", 20) + "1" + strings.Repeat("}", 20) + "}}", 400, "overlay.options is nested more than 16 levels deep (the limit)"},
		{"overlay options size", repeatList("overlay: {image: a, name: b, options: {k: [", "%d", 5000) + "}}", 400, "overlay.options has 5002 values; the limit is 4096"},
		{"alias bomb", aliasBomb, 400, "more than 65536 YAML nodes"},
		{"nesting", deep, 400, "levels deep"},
		{"over 4 MiB", "customization: {embeddedMachineConfiguration: '" + strings.Repeat("x", 4<<20) + "'}", 413, "larger than 4 MiB (the limit, --max-schematic-size)"},
		{"two documents", "customization: {}\n---\ncustomization: {extraKernelArgs: [a]}\n", 400, "more than one YAML document"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, out := ts.do(t, "POST", "/schematics", tc.body)
			if resp.StatusCode != tc.status || !strings.Contains(out, tc.want) {
				t.Errorf("POST = %d %.300q, want %d with %q", resp.StatusCode, out, tc.status, tc.want)
			}

			if len(tc.body) > 4<<20 {
				return
			}

			_, err := ts.grpc.CreateSchematic(t.Context(), &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{Yaml: tc.body}})
			if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), tc.want) {
				t.Errorf("CreateSchematic = %v, want InvalidArgument with %q", err, tc.want)
			}
		})
	}

	t.Run("typed fields", func(t *testing.T) {
		args := make([]string, 1025)
		for i := range args {
			args[i] = "a"
		}

		_, err := ts.grpc.CreateSchematic(t.Context(), &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Schematic{
			Schematic: &kilnv1.Schematic{Customization: &kilnv1.Customization{ExtraKernelArgs: args}},
		}})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "extraKernelArgs has 1025 entries") {
			t.Errorf("typed CreateSchematic = %v", err)
		}
	})
}

// A smaller --max-schematic-size holds on every surface.
func TestSchematicSizeFlag(t *testing.T) {
	ts := startServer(t, Config{Schematic: SchematicLimits{MaxBytes: 64 << 10}})
	big := "customization: {embeddedMachineConfiguration: '" + strings.Repeat("x", 70<<10) + "'}"

	resp, out := ts.do(t, "POST", "/schematics", big)
	if resp.StatusCode != 413 || !strings.Contains(out, "larger than 64 KiB") {
		t.Errorf("POST = %d %q", resp.StatusCode, out)
	}

	body, _ := json.Marshal(map[string]string{"yaml": big})

	resp, out = ts.do(t, "POST", "/v1/schematics", string(body))
	if resp.StatusCode != 413 && resp.StatusCode != 400 {
		t.Errorf("POST /v1/schematics = %d %q", resp.StatusCode, out)
	}

	if resp, out := ts.do(t, "POST", "/schematics", "customization: {extraKernelArgs: [a]}"); resp.StatusCode != 201 {
		t.Errorf("small POST = %d %q", resp.StatusCode, out)
	}
}

// The HTTP status of a resource error depends on why: a full build queue
// is worth retrying soon (503 with Retry-After), a full disk is not (507).
func TestResourceStatuses(t *testing.T) {
	for _, tc := range []struct {
		err    error
		status int
		retry  string
	}{
		{&builder.BusyError{Running: 2, Queued: 32, RetryAfter: 10 * time.Second}, 503, "10"},
		{fmt.Errorf("build: %w", &os.PathError{Op: "write", Path: "/data/assets/tmp/x", Err: syscall.ENOSPC}), 507, ""},
		{fmt.Errorf("build: %w", &os.PathError{Op: "write", Path: "/data/x", Err: syscall.EDQUOT}), 507, ""},
	} {
		st := status.Convert(toStatus(tc.err))
		code, retry := httpStatusOf(st)

		if st.Code() != codes.ResourceExhausted || code != tc.status || retry != tc.retry {
			t.Errorf("%v: %s, HTTP %d Retry-After %q; want ResourceExhausted, %d %q", tc.err, st.Code(), code, retry, tc.status, tc.retry)
		}

		if strings.Contains(st.Message(), "/data") {
			t.Errorf("%v: the message shows a server path: %s", tc.err, st.Message())
		}
	}
}

// Client input echoed in errors is clipped, ?filename= is a plain name
// quoted as RFC 6266 says, GET says whether it built, CORS is on the
// factory's routes only.
func TestSmallHTTPFixes(t *testing.T) {
	ts := startServer(t, Config{Demo: true})

	if resp, _ := ts.do(t, "POST", "/schematics", "{}"); resp.StatusCode != 201 {
		t.Fatal(resp.Status)
	}

	t.Run("long ID", func(t *testing.T) {
		long := strings.Repeat("a", 60_000)

		for _, path := range []string{"/image/" + long + "/v1.13.0/kernel-amd64", "/schematics/" + long, "/image/" + emptyID + "/v" + long + "/kernel-amd64"} {
			resp, out := ts.do(t, "GET", path, "")
			if resp.StatusCode != 404 && resp.StatusCode != 400 || len(out) > 300 {
				t.Errorf("GET %.40s... = %d, %d bytes: %.200q", path, resp.StatusCode, len(out), out)
			}
		}
	})

	t.Run("X-Kiln-Cache", func(t *testing.T) {
		url := "/image/" + emptyID + "/v1.13.0/cmdline-metal-amd64"

		for _, want := range []string{"miss", "hit"} {
			resp, _ := ts.do(t, "GET", url, "")
			if resp.StatusCode != 200 || resp.Header.Get("X-Kiln-Cache") != want {
				t.Errorf("GET = %d, X-Kiln-Cache %q, want %q", resp.StatusCode, resp.Header.Get("X-Kiln-Cache"), want)
			}
		}
	})

	t.Run("filename", func(t *testing.T) {
		base := "/image/" + emptyID + "/v1.13.0/cmdline-metal-amd64?filename="

		for name, want := range map[string]string{
			"my.txt":      `attachment; filename="my.txt"`,
			`a"b.txt`:     `attachment; filename="a\"b.txt"`,
			"crème.txt":   `attachment; filename="cr_me.txt"; filename*=UTF-8''cr%C3%A8me.txt`,
			"a b;c=d.txt": `attachment; filename="a b;c=d.txt"`,
		} {
			resp, _ := ts.do(t, "GET", base+url.QueryEscape(name), "")
			if resp.StatusCode != 200 || resp.Header.Get("Content-Disposition") != want {
				t.Errorf("filename %q: %d %q, want %q", name, resp.StatusCode, resp.Header.Get("Content-Disposition"), want)
			}
		}

		for _, name := range []string{"../etc/passwd", `a\b`, "a\r\nSet-Cookie: x=y", "a\x00b", "..", strings.Repeat("x", 256)} {
			resp, out := ts.do(t, "GET", base+url.QueryEscape(name), "")
			if resp.StatusCode != 400 || !strings.Contains(out, "is not a plain file name") {
				t.Errorf("filename %q: %d %q, want 400", name, resp.StatusCode, out)
			}
		}
	})

	t.Run("CORS", func(t *testing.T) {
		for path, allowed := range map[string]bool{
			"/schematics": true, "/versions": true, "/image/" + emptyID + "/v1.13.0/kernel-amd64": true,
			"/v2/": false, "/v2/kiln-demo/siderolabs/imager/manifests/v1.13.0": false, "/v1/versions": false,
		} {
			req, _ := http.NewRequest(http.MethodOptions, "http://"+ts.addr+path, nil)
			req.Header.Set("Origin", "https://example.com")
			req.Header.Set("Access-Control-Request-Method", "GET")

			resp, err := ts.http.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()

			if got := resp.Header.Get("Access-Control-Allow-Origin") != ""; got != allowed {
				t.Errorf("preflight %s: Access-Control-Allow-Origin %q (status %d), want allowed=%v", path, resp.Header.Get("Access-Control-Allow-Origin"), resp.StatusCode, allowed)
			}

			if !allowed && resp.StatusCode == http.StatusNoContent {
				t.Errorf("preflight %s answered 204", path)
			}
		}
	})
}
