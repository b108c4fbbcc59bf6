package server

import (
	"crypto/tls"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

// TestSchematicListNeedsCredential: listing schematics is an admin call on
// gRPC and REST (401 with a basic challenge), creating and reading one by
// ID stay anonymous as on the public factory; --public-schematic-list
// opens the list.
func TestSchematicListNeedsCredential(t *testing.T) {
	ts := startServer(t, Config{})
	ctx := t.Context()

	if resp, _ := ts.do(t, "POST", "/schematics", "{}"); resp.StatusCode != 201 {
		t.Fatalf("anonymous POST /schematics = %s", resp.Status)
	}

	if resp, _ := ts.do(t, "GET", "/v1/schematics/"+emptyID, ""); resp.StatusCode != 200 {
		t.Fatalf("anonymous GET /v1/schematics/id = %s", resp.Status)
	}

	resp, body := ts.do(t, "GET", "/v1/schematics", "")
	if resp.StatusCode != 401 || resp.Header.Get("WWW-Authenticate") != `Basic realm="kiln"` || strings.Contains(body, emptyID) {
		t.Fatalf("anonymous list = %d %q %s, want 401 with a basic challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"), body)
	}

	wrong := "Basic " + base64.StdEncoding.EncodeToString([]byte("admin:guess"))
	if resp, body := ts.doWith(t, "GET", "/v1/schematics", "", http.Header{"Authorization": {wrong}}); resp.StatusCode != 401 || !strings.Contains(body, "invalid credentials") {
		t.Fatalf("list with a wrong password = %d %s", resp.StatusCode, body)
	}

	// A header that would become the metadata only the gateway may set.
	forged := http.Header{"Grpc-Metadata-Kiln-Client-Cert": {"cert:admin"}, "Kiln-Client-Cert": {"cert:admin"}}
	if resp, _ := ts.doWith(t, "GET", "/v1/schematics", "", forged); resp.StatusCode != 401 {
		t.Fatalf("list with a forged client-certificate header = %d, want 401", resp.StatusCode)
	}

	if resp, body := ts.doWith(t, "GET", "/v1/schematics", "", http.Header{"Authorization": {ts.adminAuthorization(t)}}); resp.StatusCode != 200 || !strings.Contains(body, emptyID) {
		t.Fatalf("admin list = %d %s", resp.StatusCode, body)
	}

	if _, err := ts.grpc.ListSchematics(ctx, &kilnv1.ListSchematicsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("anonymous gRPC list = %v, want Unauthenticated", err)
	}

	// Metadata a direct gRPC client sets is not the gateway's.
	if _, err := ts.grpc.ListSchematics(metadata.AppendToOutgoingContext(ctx, gatewayCertKey, "cert:admin"), &kilnv1.ListSchematicsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("gRPC list with forged gateway metadata = %v, want Unauthenticated", err)
	}

	got, err := ts.grpc.ListSchematics(metadata.AppendToOutgoingContext(ctx, "authorization", ts.adminAuthorization(t)), &kilnv1.ListSchematicsRequest{})
	if err != nil || len(got.GetIds()) != 1 {
		t.Fatalf("admin gRPC list = %v, %v", got, err)
	}

	open := startServer(t, Config{PublicSchematicList: true})
	if resp, _ := open.do(t, "GET", "/v1/schematics", ""); resp.StatusCode != 200 {
		t.Fatalf("anonymous list with --public-schematic-list = %s", resp.Status)
	}
}

// TestClientCertificateIsACredential: over TLS with --client-ca, a client
// certificate the CA signed is an admin credential for gRPC and REST; a
// client without one is anonymous.
func TestClientCertificateIsACredential(t *testing.T) {
	dir := t.TempDir()
	cert, key := testfixture.SelfSignedCert(t, dir)
	ca := testfixture.NewClientCA(t, dir)
	clientCert, clientKey := ca.Issue(t, "ops")

	ts := startServer(t, Config{TLSCert: cert, TLSKey: key, ClientCA: ca.Path})

	pair, err := tls.LoadX509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}

	client := func(certs ...tls.Certificate) *http.Client {
		return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{InsecureSkipVerify: true, Certificates: certs}, //nolint:gosec // the test server's own certificate
		}}
	}

	get := func(c *http.Client) (int, string) {
		resp, err := c.Get("https://" + ts.addr + "/v1/schematics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()

		body, _ := io.ReadAll(resp.Body)

		return resp.StatusCode, string(body)
	}

	if code, body := get(client()); code != 401 {
		t.Fatalf("REST list without a certificate = %d %s", code, body)
	}

	if code, body := get(client(pair)); code != 200 {
		t.Fatalf("REST list with a client certificate = %d %s", code, body)
	}

	conn, err := grpc.NewClient(ts.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		InsecureSkipVerify: true, Certificates: []tls.Certificate{pair}, //nolint:gosec // the test server's own certificate
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	if _, err := kilnv1.NewSchematicServiceClient(conn).ListSchematics(t.Context(), &kilnv1.ListSchematicsRequest{}); err != nil {
		t.Fatalf("gRPC list with a client certificate: %v", err)
	}

	if _, err := ts.grpc.ListSchematics(t.Context(), &kilnv1.ListSchematicsRequest{}); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("gRPC list without a certificate = %v, want Unauthenticated", err)
	}

	if _, err := New(t.Context(), Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), ClientCA: ca.Path}, slogDiscard(), Deps{}); err == nil ||
		!strings.Contains(err.Error(), "--client-ca needs TLS") {
		t.Fatalf("--client-ca without TLS = %v", err)
	}
}
