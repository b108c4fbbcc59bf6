package server

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/access"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/storage"
)

func TestImageRoute(t *testing.T) {
	ts := startServer(t, Config{Demo: true})
	url := "/image/" + emptyID + "/v1.13.0/kernel-amd64"

	if resp, _ := ts.do(t, "POST", "/schematics", "{}"); resp.StatusCode != 201 {
		t.Fatal(resp.Status)
	}

	// HEAD before any build answers without building.
	resp, _ := ts.do(t, "HEAD", url, "")
	if resp.StatusCode != 200 || resp.Header.Get("X-Kiln-Cache") != "miss" || resp.Header.Get("ETag") != "" {
		t.Fatalf("cold HEAD = %d cache %q etag %q", resp.StatusCode, resp.Header.Get("X-Kiln-Cache"), resp.Header.Get("ETag"))
	}

	resp, full := ts.do(t, "GET", url, "")
	if resp.StatusCode != 200 || len(full) == 0 || !strings.HasPrefix(full, "MZ") {
		t.Fatalf("GET = %d, %d bytes", resp.StatusCode, len(full))
	}

	etag := resp.Header.Get("ETag")
	for h, want := range map[string]string{
		"Content-Type":        "application/octet-stream",
		"Content-Disposition": `attachment; filename="kernel-amd64"`,
		"Accept-Ranges":       "bytes",
	} {
		if got := resp.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}

	// The ETag is the chunk digest of the bytes (storage.ETagOf), not their
	// sha256: a raw disk's holes are never hashed.
	if want, _ := storage.ETagOf(strings.NewReader(full)); etag != `"`+want+`"` {
		t.Fatalf("ETag = %q, want %q", etag, want)
	}

	// A half download resumes with identical bytes.
	half := len(full) / 2

	req, _ := http.NewRequest("GET", "http://"+ts.addr+url, nil)
	req.Header.Set("Range", "bytes="+strconv.Itoa(half)+"-")
	req.Header.Set("If-Range", etag)

	rresp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}

	rest, _ := io.ReadAll(rresp.Body)
	rresp.Body.Close()

	if rresp.StatusCode != http.StatusPartialContent || !bytes.Equal([]byte(full[:half]+string(rest)), []byte(full)) {
		t.Fatalf("Range resume = %d, %d bytes; the joined halves differ from the whole", rresp.StatusCode, len(rest))
	}

	// Conditional GET.
	req, _ = http.NewRequest("GET", "http://"+ts.addr+url, nil)
	req.Header.Set("If-None-Match", etag)

	cresp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	cresp.Body.Close()

	if cresp.StatusCode != http.StatusNotModified {
		t.Fatalf("If-None-Match = %d, want 304", cresp.StatusCode)
	}

	// Now HEAD answers from the cache.
	resp, _ = ts.do(t, "HEAD", url+"?filename=my-kernel", "")
	if resp.StatusCode != 200 || resp.Header.Get("ETag") != etag || resp.Header.Get("Content-Length") != strconv.Itoa(len(full)) ||
		resp.Header.Get("Content-Disposition") != `attachment; filename="my-kernel"` {
		t.Fatalf("warm HEAD = %d etag %q length %q disposition %q", resp.StatusCode, resp.Header.Get("ETag"),
			resp.Header.Get("Content-Length"), resp.Header.Get("Content-Disposition"))
	}

	for path, want := range map[string]string{
		"/image/aaaaaaaaaaaa/v1.13.0/kernel-amd64":        "404 schematic ID \"aaaaaaaaaaaa\" not found\n",
		"/image/" + emptyID + "/v1.13.0/metal-amd64.ssd":  "400 error parsing profile from path: invalid profile path: \"metal-amd64.ssd\"; valid paths: kernel-<arch>, ",
		"/image/" + emptyID + "/v1.99.0/kernel-amd64":     "404 version v1.99.0 is not available\n",
		"/image/" + emptyID + "/v1.13.0/aws-amd64.raw.xz": "501 platform aws (only metal) is not supported yet\n",
	} {
		resp, body := ts.do(t, "GET", path, "")
		if got := strconv.Itoa(resp.StatusCode) + " " + body; got != want && !(strings.HasSuffix(want, ", ") && strings.HasPrefix(got, want)) {
			t.Errorf("GET %s = %q, want %q", path, got, want)
		}
	}
}

func TestImageServiceBuild(t *testing.T) {
	ts := startServer(t, Config{Demo: true})
	ctx := context.Background()

	if _, err := ts.grpc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{Yaml: "{}"}}); err != nil {
		t.Fatal(err)
	}

	client := kilnv1.NewImageServiceClient(ts.conn)

	for round, wantHit := range []bool{false, true} {
		stream, err := client.Build(ctx, &kilnv1.BuildRequest{SchematicId: emptyID, Version: "1.13.0", Path: "kernel-arm64"})
		if err != nil {
			t.Fatal(err)
		}

		var (
			done   *kilnv1.Done
			hit    bool
			phases []string
		)

		for {
			ev, err := stream.Recv()
			if err == io.EOF {
				break
			}

			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}

			switch e := ev.GetEvent().(type) {
			case *kilnv1.BuildResponse_Done:
				done = e.Done
			case *kilnv1.BuildResponse_CacheHit:
				hit = true
			case *kilnv1.BuildResponse_Progress:
				phases = append(phases, e.Progress.GetPhase())
			}
		}

		if done == nil || done.GetSize() == 0 || len(done.GetSha256()) != 64 || !strings.HasSuffix(done.GetUrl(), "/image/"+emptyID+"/v1.13.0/kernel-arm64") {
			t.Fatalf("round %d: done = %v", round, done)
		}

		// The content's sha256 (computed when first asked for), not the ETag.
		resp, body := ts.do(t, "GET", "/image/"+emptyID+"/v1.13.0/kernel-arm64", "")
		if sum := sha256.Sum256([]byte(body)); done.GetSha256() != hex.EncodeToString(sum[:]) || resp.Header.Get("ETag") == `"`+done.GetSha256()+`"` {
			t.Fatalf("round %d: sha256 %s, ETag %s, download's sha256 %x", round, done.GetSha256(), resp.Header.Get("ETag"), sum)
		}

		if hit != wantHit || len(phases) == 0 {
			t.Errorf("round %d: cache hit %v (want %v), phases %v", round, hit, wantHit, phases)
		}
	}

	u, err := client.GetBootAssetURL(ctx, &kilnv1.GetBootAssetURLRequest{SchematicId: emptyID, Version: "v1.13.0", Path: "metal-amd64.iso"})
	if err != nil || !strings.HasSuffix(u.GetUrl(), "/image/"+emptyID+"/v1.13.0/metal-amd64.iso") {
		t.Fatalf("GetBootAssetURL = %v, %v", u, err)
	}

	// The gateway streams the same events as JSON lines.
	resp, body := ts.do(t, "POST", "/v1/images:build", `{"schematicId":"`+emptyID+`","version":"v1.13.0","path":"kernel-arm64"}`)
	if resp.StatusCode != 200 || !strings.Contains(body, `"cacheHit":true`) || !strings.Contains(body, `"sha256"`) {
		t.Fatalf("gateway build = %d %s", resp.StatusCode, body)
	}
}

func TestPXEAndCmdline(t *testing.T) {
	ts := startServer(t, Config{Demo: true, ExternalURL: "https://kiln.example", ExternalPXEURL: "http://10.0.0.5:8080"})

	resp, body := ts.do(t, "POST", "/schematics", "customization: {extraKernelArgs: [console=ttyS0, kiln.test=1], meta: [{key: 0xa, value: foo}]}")
	if resp.StatusCode != 201 {
		t.Fatal(body)
	}

	id := body[7:71]

	resp, line := ts.do(t, "GET", "/image/"+id+"/v1.13.0/cmdline-metal-amd64", "")
	want := "talos.platform=metal console=ttyS0 init_on_alloc=1 slab_nomerge pti=on consoleblank=0 nvme_core.io_timeout=4294967295 " +
		"printk.devkmsg=on selinux=1 module.sig_enforce=1 proc_mem.force_override=never talos.environment=INSTALLER_META_BASE64=MHhhPWZvbw== kiln.test=1"

	if resp.StatusCode != 200 || line != want {
		t.Fatalf("cmdline = %d\n%q\nwant\n%q", resp.StatusCode, line, want)
	}

	for _, path := range []string{"metal-amd64", "metal-x86_64"} {
		resp, script := ts.do(t, "GET", "/pxe/"+id+"/v1.13.0/"+path, "")
		kernel := "kernel http://10.0.0.5:8080/image/" + id + "/v1.13.0/kernel-amd64 " + want
		initrd := "initrd --name initramfs-amd64.xz http://10.0.0.5:8080/image/" + id + "/v1.13.0/initramfs-amd64.xz"
		wantScript := "#!ipxe\n\nimgfree\niseq ${platform} efi && goto efi ||\n" + kernel + "\n" + initrd + "\nboot\n" +
			":efi\n" + kernel + " initrd=initramfs-amd64.xz\n" + initrd + "\nboot\n"

		if resp.StatusCode != 200 || script != wantScript {
			t.Errorf("PXE %s = %d\n%s\nwant\n%s", path, resp.StatusCode, script, wantScript)
		}
	}
}

func TestImageCacheService(t *testing.T) {
	ts := startServer(t, Config{Demo: true})
	ctx := context.Background()
	client := kilnv1.NewImageCacheServiceClient(ts.conn)

	var id string

	for round, wantHit := range []bool{false, true} {
		stream, err := client.Create(ctx, &kilnv1.CreateRequest{KubernetesForTalos: "v1.13.0", Platforms: []string{"linux/amd64"}})
		if err != nil {
			t.Fatal(err)
		}

		var (
			done *kilnv1.CacheDone
			hit  bool
		)

		for {
			ev, err := stream.Recv()
			if err == io.EOF {
				break
			}

			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}

			if d := ev.GetDone(); d != nil {
				done = d
			}

			hit = hit || ev.GetCacheHit()
		}

		if done == nil || len(done.GetCacheId()) != 64 || done.GetImages() == 0 || hit != wantHit {
			t.Fatalf("round %d: done %v, cache hit %v", round, done, hit)
		}

		if id != "" && done.GetCacheId() != id {
			t.Fatalf("the same request gave cache IDs %s and %s", id, done.GetCacheId())
		}

		id = done.GetCacheId()
	}

	resp, body := ts.do(t, "GET", "/imagecache/"+id+".tar", "")
	if resp.StatusCode != 200 || !strings.Contains(body, "oci-layout") || !strings.Contains(body, "index.json") {
		t.Fatalf("download = %d, %d bytes", resp.StatusCode, len(body))
	}

	if resp, body := ts.do(t, "GET", "/imagecache/"+strings.Repeat("0", 64)+".tar", ""); resp.StatusCode != 404 || strings.Contains(body, "schematic") {
		t.Fatalf("unknown cache = %d %q", resp.StatusCode, body)
	}

	stream, err := client.Create(ctx, &kilnv1.CreateRequest{Images: []string{"registry.k8s.io/not-mirrored:v1"}})
	for err == nil {
		_, err = stream.Recv()
	}

	if st := status.Convert(err); st.Code() != codes.NotFound || !strings.Contains(st.Message(), "registry.k8s.io/not-mirrored:v1") {
		t.Fatalf("missing image: %v %q", st.Code(), st.Message())
	}
}

// TestStreamsValidateFirst: what can be refused before a build or an image
// cache starts is answered with its own status, on gRPC before any message
// and on the gateway as the HTTP status, not as a 200 whose last line is
// the error.
func TestStreamsValidateFirst(t *testing.T) {
	ts := startServer(t, Config{Demo: true})

	if resp, _ := ts.do(t, "POST", "/schematics", "{}"); resp.StatusCode != 201 {
		t.Fatal(resp.Status)
	}

	// An unsigned image where the demo key is trusted: present, but refused.
	unsigned, err := random.Image(1024, 1)
	if err != nil {
		t.Fatal(err)
	}

	ref, err := name.NewTag(ts.addr+"/kiln-demo/docker.io/acme/unsigned:1.0", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}

	password, err := access.ReadPassword(filepath.Join(ts.dir, "auth", "admin-password"))
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.Write(ref, unsigned, remote.WithAuth(&authn.Basic{Username: access.AdminUser, Password: password})); err != nil {
		t.Fatal(err)
	}

	build := func(schematicID, version, path string) string {
		return `{"schematicId":"` + schematicID + `","version":"` + version + `","path":"` + path + `"}`
	}

	for _, tc := range []struct {
		route, body string
		code        codes.Code
		status      int
		message     string
	}{
		{"/v1/images:build", build(strings.Repeat("0", 64), "v1.13.0", "kernel-amd64"), codes.NotFound, 404, "not found"},
		{"/v1/images:build", build(emptyID, "v1.99.0", "kernel-amd64"), codes.NotFound, 404, "version v1.99.0 is not available"},
		{"/v1/images:build", build(emptyID, "banana", "kernel-amd64"), codes.InvalidArgument, 400, "banana"},
		{"/v1/images:build", build(emptyID, "v1.13.0", "metal-amd64.ssd"), codes.InvalidArgument, 400, `invalid profile path: "metal-amd64.ssd"`},
		{"/v1/images:build", build(emptyID, "v1.13.0", "aws-amd64.raw.xz"), codes.Unimplemented, 501, "platform aws"},
		{"/v1/imagecaches", `{"images":["registry.k8s.io/not-mirrored:v1"]}`, codes.NotFound, 404, "registry.k8s.io/not-mirrored:v1"},
		{"/v1/imagecaches", `{"images":["docker.io/acme/unsigned:1.0"]}`, codes.FailedPrecondition, 412, "acme/unsigned"},
		{"/v1/imagecaches", `{}`, codes.InvalidArgument, 400, "no images"},
	} {
		resp, body := ts.do(t, "POST", tc.route, tc.body)

		var got struct {
			Error struct {
				Code    codes.Code `json:"code"`
				Message string     `json:"message"`
			} `json:"error"`
		}

		if err := json.Unmarshal([]byte(body), &got); err != nil || resp.StatusCode != tc.status || got.Error.Code != tc.code ||
			!strings.Contains(got.Error.Message, tc.message) {
			t.Errorf("POST %s %s = %d %s; want %d, code %s, a message with %q", tc.route, tc.body, resp.StatusCode, body, tc.status, tc.code, tc.message)
		}
	}

	// gRPC: the status comes before any message.
	stream, err := kilnv1.NewImageServiceClient(ts.conn).Build(t.Context(), &kilnv1.BuildRequest{SchematicId: emptyID, Version: "v1.99.0", Path: "kernel-amd64"})
	if err != nil {
		t.Fatal(err)
	}

	if ev, err := stream.Recv(); status.Code(err) != codes.NotFound {
		t.Errorf("Build of a missing version: first Recv = %v, %v; want NotFound before any event", ev, err)
	}

	cstream, err := kilnv1.NewImageCacheServiceClient(ts.conn).Create(t.Context(), &kilnv1.CreateRequest{Images: []string{"docker.io/acme/unsigned:1.0"}})
	if err != nil {
		t.Fatal(err)
	}

	if ev, err := cstream.Recv(); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("image cache of an unsigned image: first Recv = %v, %v; want FailedPrecondition before any event", ev, err)
	}
}

// TestUnsupportedIsNotAnError: a 501 is a client asking for what kiln does
// not build yet, logged below ERROR; an internal failure still is ERROR.
func TestUnsupportedIsNotAnError(t *testing.T) {
	var logs syncLog

	ts := startServerLogged(t, Config{Demo: true}, slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})))

	if resp, _ := ts.do(t, "POST", "/schematics", "{}"); resp.StatusCode != 201 {
		t.Fatal(resp.Status)
	}

	for _, path := range []string{"/image/" + emptyID + "/v1.13.0/aws-amd64.raw.xz", "/pxe/" + emptyID + "/v1.13.0/aws-amd64"} {
		if resp, _ := ts.do(t, "GET", path, ""); resp.StatusCode != http.StatusNotImplemented {
			t.Fatalf("GET %s = %s, want 501", path, resp.Status)
		}
	}

	if out := logs.String(); strings.Contains(out, `"level":"ERROR"`) || !strings.Contains(out, "aws-amd64.raw.xz") {
		t.Errorf("a 501 was logged at ERROR (or not at all):\n%s", out)
	}
}

// syncLog is a log sink the server writes from many goroutines.
type syncLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncLog) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.b.Write(p)
}

func (s *syncLog) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()

	return s.b.String()
}

// TestBuildProgressCountsRequestedExtensions: the initramfs progress names
// the extensions the schematic asked for, not the schematic's own virtual one.
func TestBuildProgressCountsRequestedExtensions(t *testing.T) {
	ts := startServer(t, Config{Demo: true})

	created, err := ts.grpc.CreateSchematic(t.Context(), &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{
		Yaml: "customization: {systemExtensions: {officialExtensions: [siderolabs/gvisor]}}",
	}})
	if err != nil {
		t.Fatal(err)
	}

	stream, err := kilnv1.NewImageServiceClient(ts.conn).Build(t.Context(), &kilnv1.BuildRequest{SchematicId: created.GetId(), Version: "v1.13.0", Path: "initramfs-amd64.xz"})
	if err != nil {
		t.Fatal(err)
	}

	var assemble []string

	for {
		ev, err := stream.Recv()
		if err == io.EOF {
			break
		}

		if err != nil {
			t.Fatal(err)
		}

		if p := ev.GetProgress(); p.GetPhase() == "assemble" {
			assemble = append(assemble, p.GetMessage())
		}
	}

	if len(assemble) != 1 || !strings.HasPrefix(assemble[0], "initramfs with 1 extension ") {
		t.Errorf("assemble events %q, want one saying the initramfs has 1 extension", assemble)
	}
}

// TestGatewayHeaders: gateway responses carry no gRPC transport metadata
// (grpc-gateway forwards every header as Grpc-Metadata-*, content-type
// application/grpc among them).
func TestGatewayHeaders(t *testing.T) {
	ts := startServer(t, Config{Demo: true})

	for _, tc := range []struct{ method, path, body string }{
		{"GET", "/v1/versions", ""},
		{"GET", "/v1/schematics/" + emptyID, ""},
		{"POST", "/v1/schematics", `{"yaml":"{}"}`},
		{"POST", "/v1/images:build", `{"schematicId":"` + emptyID + `","version":"v1.13.0","path":"cmdline-metal-amd64"}`},
		{"POST", "/v1/images:build", `{"schematicId":"` + emptyID + `","version":"v1.99.0","path":"cmdline-metal-amd64"}`},
	} {
		resp, body := ts.do(t, tc.method, tc.path, tc.body)

		for h := range resp.Header {
			if strings.HasPrefix(h, "Grpc-") {
				t.Errorf("%s %s = %d %q: header %s: %s", tc.method, tc.path, resp.StatusCode, body, h, resp.Header.Get(h))
			}
		}
	}
}
