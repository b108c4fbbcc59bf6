package server

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/access"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/storage"
)

const (
	emptyID = "376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba"
	argsID  = "9cba8e32753f91a16c1837ab8abf356af021706ef284aef07380780177d9a06c"
	metaID  = "d308a2a5ee2277bed5fbaa104fcbc8d59122abfa737df987a95b4ca763459a7f"
)

// testServer serves a fresh kiln on 127.0.0.1 until the test ends.
type testServer struct {
	addr string
	dir  string
	http *http.Client
	grpc kilnv1.SchematicServiceClient
	conn *grpc.ClientConn
	// stop shuts the server down (once); the test's cleanup does too.
	stop func()
	srv  *Server
}

func startServer(t testing.TB, cfg Config) *testServer {
	t.Helper()

	return startServerLogged(t, cfg, slog.New(slog.DiscardHandler))
}

// startServerLogged is startServer logging to logger.
func startServerLogged(t testing.TB, cfg Config, logger *slog.Logger) *testServer {
	t.Helper()

	if cfg.DataDir == "" {
		cfg.DataDir = t.TempDir()
	}

	cfg.Listen = "127.0.0.1:0"
	cfg.ShutdownTimeout = 5 * time.Second

	ctx, cancel := context.WithCancel(context.Background())

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		t.Fatal(err)
	}

	cfg = cfg.WithListener(lis.Addr(), logger)

	deps, err := Build(ctx, cfg, logger)
	if err != nil {
		t.Fatal(err)
	}

	srv, err := New(ctx, cfg, logger, deps)
	if err != nil {
		t.Fatal(err)
	}

	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, lis) }()

	ts := &testServer{addr: lis.Addr().String(), dir: cfg.DataDir, http: &http.Client{Timeout: 10 * time.Second}, srv: srv}

	var once sync.Once

	ts.stop = func() {
		once.Do(func() {
			// A connection the client opened but never used counts as busy for
			// 5 s on the server side; closing them keeps shutdown quick.
			ts.http.CloseIdleConnections()
			cancel()

			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}

	t.Cleanup(ts.stop)

	creds := insecure.NewCredentials()
	if cfg.TLSCert != "" {
		creds = credentials.NewTLS(&tls.Config{InsecureSkipVerify: true}) //nolint:gosec // self-signed test certificate
	}

	ts.conn, err = grpc.NewClient(ts.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}

	t.Cleanup(func() { ts.conn.Close() })
	ts.grpc = kilnv1.NewSchematicServiceClient(ts.conn)

	return ts
}

func (ts *testServer) do(t testing.TB, method, path, body string) (*http.Response, string) {
	t.Helper()

	return ts.doWith(t, method, path, body, nil)
}

// adminAuthorization is the Authorization header of the admin credential
// the server made in its data directory.
func (ts *testServer) adminAuthorization(t *testing.T) string {
	t.Helper()

	password, err := access.ReadPassword(filepath.Join(ts.dir, "auth", "admin-password"))
	if err != nil {
		t.Fatal(err)
	}

	return "Basic " + base64.StdEncoding.EncodeToString([]byte(access.AdminUser+":"+password))
}

// doWith is do with request headers.
func (ts *testServer) doWith(t testing.TB, method, path, body string, header http.Header) (*http.Response, string) {
	t.Helper()

	req, err := http.NewRequest(method, "http://"+ts.addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}

	for k, v := range header {
		req.Header[k] = v
	}

	resp, err := ts.http.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()

	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}

	return resp, string(data)
}

func TestPublicRoutes(t *testing.T) {
	ts := startServer(t, Config{})

	for _, tc := range []struct {
		name, method, path, body string
		status                   int
		contentType, want        string
	}{
		{"create", "POST", "/schematics", "customization:\n  extraKernelArgs: [noapic, nolapic]\n", 201, "application/json",
			`{"id":"` + argsID + `","schematic":"customization:\n    extraKernelArgs:\n        - noapic\n        - nolapic\n"}` + "\n"},
		{"create json again", "POST", "/schematics", `{"customization":{"extraKernelArgs":["noapic","nolapic"]}}`, 201, "application/json",
			`{"id":"` + argsID + `","schematic":"customization:\n    extraKernelArgs:\n        - noapic\n        - nolapic\n"}` + "\n"},
		{"get", "GET", "/schematics/" + argsID, "", 200, "application/yaml",
			"customization:\n    extraKernelArgs:\n        - noapic\n        - nolapic\n"},
		{"get unknown", "GET", "/schematics/" + emptyID, "", 404, "text/plain; charset=utf-8", "schematic not found\n"},
		{"get malformed", "GET", "/schematics/xyz", "", 404, "text/plain; charset=utf-8", "schematic not found\n"},
		{"create unknown field", "POST", "/schematics", "something: 1\n", 400, "text/plain; charset=utf-8",
			"yaml: construct errors: line 1: field something not found in type schematic.Schematic\n"},
		{"create owner", "POST", "/schematics", "owner: bob\n", 400, "text/plain; charset=utf-8",
			"owner is not supported: this factory has no authentication, remove the owner field\n"},
		{"create empty", "POST", "/schematics", "", 400, "text/plain; charset=utf-8", "schematic is empty\n"},
		{"create bootloader auto", "POST", "/schematics", "customization: {bootloader: auto}\n", 400, "text/plain; charset=utf-8",
			"yaml: construct errors: line 1: auto does not belong to BootloaderKind values\n"},
		{"create unstorable", "POST", "/schematics", `{"customization": {"extraKernelArgs": [" a\n"]}}`, 400, "text/plain; charset=utf-8",
			"schematic cannot be stored: its canonical YAML does not read back (a limit of the YAML library, for multi-line strings that start with a space, a tab or an empty line): go-yaml load error in parser (while parsing a block collection) at L3.C9-L4.C12: did not find expected '-' indicator\n"},
		{"create yaml 1.1 word", "POST", "/schematics", `{"customization": {"extraKernelArgs": ["pti=on", "no"]}}`, 201, "application/json",
			`{"id":"b6c41970686e770b1a47ee20af014b12ffac29c837f364639ed4a77364ac571d","schematic":"customization:\n    extraKernelArgs:\n        - pti=on\n        - 'no'\n"}` + "\n"},
		{"healthz", "GET", "/healthz", "", 200, "text/plain; charset=utf-8", "ok\n"},
		{"readyz", "GET", "/readyz", "", 200, "text/plain; charset=utf-8", "ok\n"},
		{"unknown route", "GET", "/nothing", "", 404, "text/plain; charset=utf-8", "404 page not found\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := ts.do(t, tc.method, tc.path, tc.body)

			if resp.StatusCode != tc.status || body != tc.want {
				t.Errorf("%s %s = %d %q, want %d %q", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.want)
			}

			if got := resp.Header.Get("Content-Type"); got != tc.contentType {
				t.Errorf("Content-Type = %q, want %q", got, tc.contentType)
			}

			if got := resp.Header.Get("Server"); !strings.Contains(got, "Image Factory") || strings.Contains(got, "Enterprise") {
				t.Errorf("Server = %q, want it to say Image Factory (and not Enterprise, which makes Omni send owners)", got)
			}

			if resp.Header.Get("X-Request-ID") == "" {
				t.Error("no X-Request-ID")
			}
		})
	}

	t.Run("request id is echoed", func(t *testing.T) {
		req, _ := http.NewRequest("GET", "http://"+ts.addr+"/healthz", nil)
		req.Header.Set("X-Request-ID", "abc-123")

		resp, err := ts.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()

		if got := resp.Header.Get("X-Request-ID"); got != "abc-123" {
			t.Errorf("X-Request-ID = %q, want abc-123", got)
		}
	})

	t.Run("body too large", func(t *testing.T) {
		resp, _ := ts.do(t, "POST", "/schematics", "customization: {embeddedMachineConfiguration: '"+strings.Repeat("x", defaultSchematicMax)+"'}")
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Errorf("status = %d, want 413", resp.StatusCode)
		}
	})
}

func TestGRPC(t *testing.T) {
	ts := startServer(t, Config{})
	ctx := context.Background()

	raw, err := ts.grpc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{Yaml: "customization: {meta: [{key: 0xa, value: foo}]}"}})
	if err != nil || raw.GetId() != metaID || !raw.GetCreated() {
		t.Fatalf("CreateSchematic(yaml) = %v, %v; want %s, created", raw, err, metaID)
	}

	typed, err := ts.grpc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Schematic{
		Schematic: &kilnv1.Schematic{Customization: &kilnv1.Customization{Meta: []*kilnv1.MetaValue{{Key: 10, Value: "foo"}}}},
	}})
	if err != nil || typed.GetId() != metaID || typed.GetCreated() {
		t.Fatalf("CreateSchematic(typed, same) = %v, %v; want %s, not created", typed, err, metaID)
	}

	got, err := ts.grpc.GetSchematic(ctx, &kilnv1.GetSchematicRequest{Id: metaID})
	if err != nil || got.GetYaml() != "customization:\n    meta:\n        - key: 10\n          value: foo\n" || got.GetSchematic().GetCustomization().GetMeta()[0].GetValue() != "foo" {
		t.Fatalf("GetSchematic = %v, %v", got, err)
	}

	for name, tc := range map[string]struct {
		call func() error
		code codes.Code
		msg  string
	}{
		"unknown id": {func() error {
			_, err := ts.grpc.GetSchematic(ctx, &kilnv1.GetSchematicRequest{Id: emptyID})
			return err
		}, codes.NotFound, "schematic not found"},
		"malformed id": {func() error {
			_, err := ts.grpc.GetSchematic(ctx, &kilnv1.GetSchematicRequest{Id: "../x"})
			return err
		}, codes.NotFound, "schematic not found"},
		"bad yaml": {func() error {
			_, err := ts.grpc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{Yaml: "something: 1\n"}})
			return err
		}, codes.InvalidArgument, "yaml: construct errors: line 1: field something not found in type schematic.Schematic"},
		"bootloader auto": {func() error {
			_, err := ts.grpc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{Yaml: "customization: {bootloader: auto}\n"}})
			return err
		}, codes.InvalidArgument, "yaml: construct errors: line 1: auto does not belong to BootloaderKind values"},
		"no source": {func() error {
			_, err := ts.grpc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{})
			return err
		}, codes.InvalidArgument, "a schematic is required: set yaml or schematic"},
		"meta key out of range": {func() error {
			_, err := ts.grpc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Schematic{
				Schematic: &kilnv1.Schematic{Customization: &kilnv1.Customization{Meta: []*kilnv1.MetaValue{{Key: 300}}}},
			}})
			return err
		}, codes.InvalidArgument, "customization.meta[0].key 300 is out of range 0-255"},
		"bad page token": {func() error {
			_, err := ts.grpc.ListSchematics(metadata.AppendToOutgoingContext(ctx, "authorization", ts.adminAuthorization(t)), &kilnv1.ListSchematicsRequest{PageToken: "nope"})
			return err
		}, codes.InvalidArgument, `page_token "nope" is not one this server returned`},
		"list without a credential": {func() error {
			_, err := ts.grpc.ListSchematics(ctx, &kilnv1.ListSchematicsRequest{})
			return err
		}, codes.Unauthenticated, "this call needs the admin credential: basic auth as admin with the password kiln wrote to <data-dir>/auth/admin-password (or a client certificate of --client-ca)"},
	} {
		t.Run(name, func(t *testing.T) {
			st := status.Convert(tc.call())
			if st.Code() != tc.code || st.Message() != tc.msg {
				t.Errorf("error = %v %q, want %v %q", st.Code(), st.Message(), tc.code, tc.msg)
			}
		})
	}

	t.Run("health", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(ts.conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "kiln.v1.SchematicService"})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("health = %v, %v", resp, err)
		}
	})
}

func TestTypedMatchesYAML(t *testing.T) {
	ts := startServer(t, Config{})
	ctx := context.Background()

	yamlForm := `overlay: {image: siderolabs/sbc-raspberrypi, name: rpi_generic, options: {configTxtAppend: "dtoverlay=x", n: 3, f: 0.5, l: [1, a]}}
customization:
  embeddedMachineConfiguration: "machine: {}"
  extraKernelArgs: [console=ttyS0]
  meta: [{key: 12, value: v}]
  systemExtensions: {officialExtensions: [siderolabs/gvisor]}
  bootloader: sd-boot
  secureboot: {enrollKeys: force, includeWellKnownCertificates: true}
  diskImage: {sectorSize: 4096}
  imageCache: {kubernetes: true, images: [docker.io/library/nginx:1.27], platforms: [linux/amd64]}
`

	fromYAML, err := ts.grpc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{Yaml: yamlForm}})
	if err != nil {
		t.Fatal(err)
	}

	// The typed form the server returned must create the same ID.
	fromTyped, err := ts.grpc.CreateSchematic(ctx, &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Schematic{Schematic: fromYAML.GetSchematic()}})
	if err != nil {
		t.Fatal(err)
	}

	if fromTyped.GetId() != fromYAML.GetId() || fromTyped.GetYaml() != fromYAML.GetYaml() {
		t.Errorf("typed round trip changed the schematic:\n%s\n%s", fromYAML.GetYaml(), fromTyped.GetYaml())
	}
}

func TestGateway(t *testing.T) {
	ts := startServer(t, Config{})

	resp, body := ts.do(t, "POST", "/v1/schematics", `{"schematic":{"customization":{"extraKernelArgs":["noapic","nolapic"]}}}`)
	if resp.StatusCode != 200 || !strings.Contains(body, argsID) {
		t.Fatalf("POST /v1/schematics = %d %s", resp.StatusCode, body)
	}

	resp, body = ts.do(t, "POST", "/v1/schematics", `{"yaml":"{}"}`)
	if resp.StatusCode != 200 || !strings.Contains(body, emptyID) {
		t.Fatalf("POST /v1/schematics yaml = %d %s", resp.StatusCode, body)
	}

	resp, body = ts.do(t, "GET", "/v1/schematics/"+argsID, "")

	var got struct {
		ID        string `json:"id"`
		Schematic struct {
			Customization struct {
				ExtraKernelArgs []string `json:"extraKernelArgs"`
			} `json:"customization"`
		} `json:"schematic"`
	}

	if err := json.Unmarshal([]byte(body), &got); err != nil || resp.StatusCode != 200 || got.ID != argsID ||
		strings.Join(got.Schematic.Customization.ExtraKernelArgs, " ") != "noapic nolapic" {
		t.Fatalf("GET /v1/schematics/id = %d %s", resp.StatusCode, body)
	}

	admin := http.Header{"Authorization": {ts.adminAuthorization(t)}}
	resp, body = ts.doWith(t, "GET", "/v1/schematics?pageSize=1", "", admin)

	var page struct {
		IDs  []string `json:"ids"`
		Next string   `json:"nextPageToken"`
	}

	if err := json.Unmarshal([]byte(body), &page); err != nil || resp.StatusCode != 200 || len(page.IDs) != 1 || page.Next != page.IDs[0] {
		t.Fatalf("GET /v1/schematics?pageSize=1 = %d %s (%v)", resp.StatusCode, body, err)
	}

	resp, body = ts.doWith(t, "GET", "/v1/schematics?pageToken="+page.Next, "", admin)
	if resp.StatusCode != 200 || strings.Contains(body, page.Next) || !strings.Contains(body, "ids") {
		t.Fatalf("second page = %d %s", resp.StatusCode, body)
	}

	for _, tc := range []struct {
		method, path, body string
		status             int
		msg                string
	}{
		{"GET", "/v1/schematics/" + metaID, "", 404, "schematic not found"},
		{"POST", "/v1/schematics", `{"yaml":"owner: x"}`, 400, "owner is not supported"},
		{"POST", "/v1/schematics", `{"bogus":1}`, 400, "bogus"},
	} {
		resp, body := ts.do(t, tc.method, tc.path, tc.body)
		if resp.StatusCode != tc.status || !strings.Contains(body, tc.msg) {
			t.Errorf("%s %s = %d %s, want %d with %q", tc.method, tc.path, resp.StatusCode, body, tc.status, tc.msg)
		}
	}
}

func TestConcurrentCreates(t *testing.T) {
	ts := startServer(t, Config{})

	var wg sync.WaitGroup

	errs := make(chan string, 64)

	for i := range 64 {
		wg.Go(func() {
			body := `{"customization":{"extraKernelArgs":["noapic","nolapic"]}}`
			if i%2 == 0 {
				body = "customization: {extraKernelArgs: [noapic, nolapic]}"
			}

			req, _ := http.NewRequest("POST", "http://"+ts.addr+"/schematics", strings.NewReader(body))

			resp, err := ts.http.Do(req)
			if err != nil {
				errs <- err.Error()

				return
			}

			data, _ := io.ReadAll(resp.Body)
			resp.Body.Close()

			if resp.StatusCode != 201 || !strings.Contains(string(data), argsID) {
				errs <- string(data)
			}
		})
	}

	wg.Wait()
	close(errs)

	for e := range errs {
		t.Error(e)
	}

	entries, err := os.ReadDir(filepath.Join(ts.dir, "schematics", argsID[:2]))
	if err != nil || len(entries) != 1 {
		t.Fatalf("store holds %v (%v), want exactly one file", entries, err)
	}
}

func TestSurvivesRestart(t *testing.T) {
	dir := t.TempDir()

	first := startServer(t, Config{DataDir: dir})
	if resp, body := first.do(t, "POST", "/schematics", "{}"); resp.StatusCode != 201 {
		t.Fatalf("create = %d %s", resp.StatusCode, body)
	}

	// Two kilns on one data directory would clean each other's scratch.
	if _, err := Build(t.Context(), withDefaults(Config{DataDir: dir}), slogDiscard()); err == nil || !strings.Contains(err.Error(), "another kiln is using the data directory") {
		t.Fatalf("a second kiln on the same data directory: %v", err)
	}

	first.stop()

	ts := startServer(t, Config{DataDir: dir})
	if resp, body := ts.do(t, "GET", "/schematics/"+emptyID, ""); resp.StatusCode != 200 || body != "customization: {}\n" {
		t.Fatalf("after restart GET = %d %q", resp.StatusCode, body)
	}
}

func TestTLS(t *testing.T) {
	dir := t.TempDir()
	cert, key := testfixture.SelfSignedCert(t, dir)
	ts := startServer(t, Config{TLSCert: cert, TLSKey: key})

	// gRPC over TLS, negotiated by ALPN on the same port.
	if _, err := ts.grpc.CreateSchematic(context.Background(), &kilnv1.CreateSchematicRequest{Source: &kilnv1.CreateSchematicRequest_Yaml{Yaml: "{}"}}); err != nil {
		t.Fatalf("gRPC over TLS: %v", err)
	}

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}} //nolint:gosec // test certificate

	resp, err := client.Get("https://" + ts.addr + "/schematics/" + emptyID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	if resp.StatusCode != 200 {
		t.Fatalf("HTTPS GET = %d", resp.StatusCode)
	}
}

func TestCodeOf(t *testing.T) {
	for _, tc := range []struct {
		err  error
		code codes.Code
	}{
		{nil, codes.OK},
		{context.Canceled, codes.Canceled},
		{fmt.Errorf("wrapped: %w", context.DeadlineExceeded), codes.DeadlineExceeded},
		{fmt.Errorf("schematic x: %w", storage.ErrNotFound), codes.NotFound},
		{errSchematicNotFound, codes.NotFound},
		{&invalidArgumentError{"x"}, codes.InvalidArgument},
		{fmt.Errorf("deep: %w", &invalidArgumentError{"x"}), codes.InvalidArgument},
		{status.Error(codes.Unavailable, "x"), codes.Unavailable},
		{fmt.Errorf("disk: %w", storage.ErrCorrupt), codes.Internal},
		{io.ErrUnexpectedEOF, codes.Internal},
	} {
		if got := codeOf(tc.err); got != tc.code {
			t.Errorf("codeOf(%v) = %v, want %v", tc.err, got, tc.code)
		}
	}

	if st := status.Convert(toStatus(io.ErrUnexpectedEOF)); st.Message() != "internal server error" {
		t.Errorf("internal error leaked its detail: %q", st.Message())
	}

	for code, want := range map[codes.Code]int{codes.InvalidArgument: 400, codes.NotFound: 404, codes.Internal: 500, codes.Canceled: 499, codes.Unavailable: 503} {
		if got := httpStatus(code); got != want {
			t.Errorf("httpStatus(%v) = %d, want %d", code, got, want)
		}
	}
}

// TestRootAndLifecycle: / points a person at the README and the routes
// (there is no UI), other unknown paths stay 404, and the log says when kiln
// has stopped.
func TestRootAndLifecycle(t *testing.T) {
	var logs syncLog

	t.Run("serve", func(t *testing.T) {
		ts := startServerLogged(t, Config{}, slog.New(slog.NewJSONHandler(&logs, nil)))

		resp, body := ts.do(t, "GET", "/", "")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/plain; charset=utf-8" {
			t.Fatalf("GET / = %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}

		for _, want := range []string{"README", "POST /schematics", "/image/", "/pxe/", "/v2/", "/v1/", "gRPC"} {
			if !strings.Contains(body, want) {
				t.Errorf("GET / does not mention %q:\n%s", want, body)
			}
		}

		if resp, _ := ts.do(t, "HEAD", "/", ""); resp.StatusCode != 200 {
			t.Errorf("HEAD / = %d", resp.StatusCode)
		}

		if resp, _ := ts.do(t, "GET", "/nope", ""); resp.StatusCode != 404 {
			t.Errorf("GET /nope = %d", resp.StatusCode)
		}
	})

	out := logs.String()
	if i, j := strings.Index(out, `"msg":"shutting down"`), strings.Index(out, `"msg":"kiln stopped"`); i < 0 || j < i {
		t.Errorf("no \"kiln stopped\" line after \"shutting down\":\n%s", out)
	}
}
