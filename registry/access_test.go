package registry_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/internal/testfixture"
	"github.com/kiln-dev/kiln/registry"
)

// accessFixture is an embedded registry under access rules, served over
// HTTP (or HTTPS with a client CA), with the admin password.
type accessFixture struct {
	host     string
	password string
	inproc   remote.Option
}

func startWithAccess(t *testing.T, anonymousReads bool, srvTLS *tls.Config) *accessFixture {
	t.Helper()

	files := access.Files{Dir: t.TempDir()}
	if _, err := files.EnsureAdmin(); err != nil {
		t.Fatal(err)
	}

	password, err := access.ReadPassword(files.Password())
	if err != nil {
		t.Fatal(err)
	}

	authn, err := access.NewAuthenticator(files.HTPasswd())
	if err != nil {
		t.Fatal(err)
	}

	reg, err := registry.NewEmbedded(t.Context(), t.TempDir(), registry.WithAccess(registry.Access{Authenticator: authn, AnonymousReads: anonymousReads}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })

	srv := httptest.NewUnstartedServer(reg)
	if srvTLS != nil {
		srv.TLS = srvTLS
		srv.StartTLS()
	} else {
		srv.Start()
	}
	t.Cleanup(srv.Close)

	return &accessFixture{
		host:     strings.TrimPrefix(strings.TrimPrefix(srv.URL, "http://"), "https://"),
		password: password,
		inproc:   remote.WithTransport(registry.Transport(reg)),
	}
}

func statusOf(err error) int {
	var te *transport.Error
	if errors.As(err, &te) {
		return te.StatusCode
	}

	return 0
}

// TestAccess: anonymous clients pull but cannot push, tag or delete (401
// with a basic challenge, which crane, skopeo and containerd answer with
// credentials); the admin credential can; kiln in process can do anything;
// --auth-reads makes pulls need credentials too.
func TestAccess(t *testing.T) {
	f := startWithAccess(t, true, nil)
	admin := remote.WithAuth(&authn.Basic{Username: access.AdminUser, Password: f.password})
	wrong := remote.WithAuth(&authn.Basic{Username: access.AdminUser, Password: "guess"})

	repo, _ := name.NewRepository(f.host+"/siderolabs/imager", name.Insecure)
	img, _ := random.Image(1024, 1)
	d, _ := img.Digest()

	// Anonymous push: refused, nothing written.
	if err := remote.Write(repo.Tag("v1.13.0"), img); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("anonymous push = %v, want 401", err)
	}

	if _, err := remote.Head(repo.Tag("v1.13.0")); err == nil {
		t.Fatal("the refused push is visible")
	}

	// The challenge names basic auth, so clients know what to send.
	resp, err := http.Post("http://"+f.host+"/v2/siderolabs/imager/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	if resp.StatusCode != http.StatusUnauthorized || resp.Header.Get("WWW-Authenticate") != `Basic realm="kiln"` {
		t.Fatalf("anonymous upload = %d %q, want 401 with a basic challenge", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}

	if err := remote.Write(repo.Tag("v1.13.0"), img, wrong); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("push with a wrong password = %v, want 401", err)
	}

	if err := remote.Write(repo.Tag("v1.13.0"), img, admin); err != nil {
		t.Fatalf("admin push: %v", err)
	}

	// Anonymous pull and catalog work; a wrong password does not.
	if got, err := remote.Head(repo.Tag("v1.13.0")); err != nil || got.Digest != d {
		t.Fatalf("anonymous pull = %v, %v", got, err)
	}

	if _, err := remote.Catalog(t.Context(), repo.Registry); err != nil {
		t.Fatalf("anonymous catalog: %v", err)
	}

	if _, err := remote.Head(repo.Tag("v1.13.0"), wrong); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("pull with a wrong password = %v, want 401", err)
	}

	// /v2/ itself challenges a client without credentials (docker and
	// skopeo decide from it whether to send theirs), and checks those sent.
	for _, tc := range []struct {
		user, password string
		want           int
	}{{"", "", 401}, {access.AdminUser, "guess", 401}, {access.AdminUser, f.password, 200}} {
		req, _ := http.NewRequest(http.MethodGet, "http://"+f.host+"/v2/", nil)
		if tc.user != "" {
			req.SetBasicAuth(tc.user, tc.password)
		}

		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()

		if resp.StatusCode != tc.want || (tc.want == 401 && resp.Header.Get("WWW-Authenticate") != access.Challenge) {
			t.Errorf("GET /v2/ as %q = %d %q, want %d", tc.user, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), tc.want)
		}
	}

	// Empty basic credentials, which skopeo sends when it has none, are
	// anonymous: a pull works, a push does not.
	empty := remote.WithAuth(&authn.Basic{})
	req, _ := http.NewRequest(http.MethodGet, "http://"+f.host+"/v2/siderolabs/imager/manifests/v1.13.0", nil)
	req.SetBasicAuth("", "")
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json,application/vnd.docker.distribution.manifest.v2+json")

	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 200 {
		t.Fatalf("pull with empty basic credentials = %v, %v; want 200", resp, err)
	} else {
		resp.Body.Close()
	}

	if err := remote.Write(repo.Tag("v1.99.0"), img, empty); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("push with empty credentials = %v, want 401", err)
	}

	// Tag and delete are writes.
	desc, _ := remote.Get(repo.Tag("v1.13.0"))
	if err := remote.Tag(repo.Tag("v1.14.0"), desc); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("anonymous tag = %v, want 401", err)
	}

	if err := remote.Delete(repo.Digest(d.String())); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("anonymous delete = %v, want 401", err)
	}

	if err := remote.Tag(repo.Tag("v1.14.0"), desc, admin); err != nil {
		t.Fatalf("admin tag: %v", err)
	}

	// kiln itself, in process, needs nothing.
	inRepo, _ := name.NewRepository("kiln.internal/siderolabs/imager", name.Insecure)
	if err := remote.Write(inRepo.Tag("v1.15.0"), img, f.inproc); err != nil {
		t.Fatalf("in-process push: %v", err)
	}

	if err := remote.Delete(inRepo.Digest(d.String()), admin, f.inproc); err != nil {
		t.Fatalf("in-process delete: %v", err)
	}

	t.Run("auth reads", func(t *testing.T) {
		f := startWithAccess(t, false, nil)
		admin := remote.WithAuth(&authn.Basic{Username: access.AdminUser, Password: f.password})
		repo, _ := name.NewRepository(f.host+"/siderolabs/imager", name.Insecure)

		if err := remote.Write(repo.Tag("v1.13.0"), img, admin); err != nil {
			t.Fatal(err)
		}

		if _, err := remote.Head(repo.Tag("v1.13.0")); statusOf(err) != http.StatusUnauthorized {
			t.Fatalf("anonymous pull = %v, want 401", err)
		}

		if _, err := remote.Catalog(t.Context(), repo.Registry); statusOf(err) != http.StatusUnauthorized {
			t.Fatalf("anonymous catalog = %v, want 401", err)
		}

		if got, err := remote.Head(repo.Tag("v1.13.0"), admin); err != nil || got.Digest != d {
			t.Fatalf("admin pull = %v, %v", got, err)
		}

		inRepo, _ := name.NewRepository("kiln.internal/siderolabs/imager", name.Insecure)
		if _, err := remote.Head(inRepo.Tag("v1.13.0"), f.inproc); err != nil {
			t.Fatalf("in-process pull: %v", err)
		}
	})
}

// TestAccessClientCertificate: over TLS with a client CA, a certificate the
// CA signed is a credential; without one the client is anonymous.
func TestAccessClientCertificate(t *testing.T) {
	dir := t.TempDir()
	ca := testfixture.NewClientCA(t, dir)
	certPath, keyPath := ca.Issue(t, "mirror-bot")

	caPEM, err := os.ReadFile(ca.Path)
	if err != nil {
		t.Fatal(err)
	}

	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)

	f := startWithAccess(t, true, &tls.Config{ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven, MinVersion: tls.VersionTLS12})

	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}

	client := func(certs ...tls.Certificate) remote.Option {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = &tls.Config{InsecureSkipVerify: true, Certificates: certs} //nolint:gosec // the test server's own certificate

		return remote.WithTransport(tr)
	}

	repo, _ := name.NewRepository(f.host + "/siderolabs/imager")
	img, _ := random.Image(1024, 1)

	if err := remote.Write(repo.Tag("v1.13.0"), img, client()); statusOf(err) != http.StatusUnauthorized {
		t.Fatalf("push without a certificate = %v, want 401", err)
	}

	if err := remote.Write(repo.Tag("v1.13.0"), img, client(pair)); err != nil {
		t.Fatalf("push with a client certificate: %v", err)
	}

	other := testfixture.NewClientCA(t, t.TempDir())
	otherCert, otherKey := other.Issue(t, "intruder")

	otherPair, err := tls.LoadX509KeyPair(otherCert, otherKey)
	if err != nil {
		t.Fatal(err)
	}

	if err := remote.Write(repo.Tag("v1.14.0"), img, client(otherPair)); err == nil {
		t.Fatal("a certificate of another CA was accepted")
	}
}
