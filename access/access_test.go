package access_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/bcrypt"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/internal/testfixture"
)

// TestEnsureAdmin: the first start makes the admin credential, owner-only;
// later starts keep it, also when the operator changed it.
func TestEnsureAdmin(t *testing.T) {
	f := access.Files{Dir: filepath.Join(t.TempDir(), "auth")}

	created, err := f.EnsureAdmin()
	if err != nil || !created {
		t.Fatalf("EnsureAdmin = %v, %v; want created", created, err)
	}

	for path, want := range map[string]os.FileMode{f.Dir: 0o700 | os.ModeDir, f.HTPasswd(): 0o600, f.Password(): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}

		if fi.Mode() != want {
			t.Errorf("%s: mode %v, want %v", path, fi.Mode(), want)
		}
	}

	password, err := access.ReadPassword(f.Password())
	if err != nil || len(password) < 40 {
		t.Fatalf("password %q, %v: want 43 characters of base64", password, err)
	}

	htpasswd, _ := os.ReadFile(f.HTPasswd())
	if !strings.HasPrefix(string(htpasswd), "admin:$2") || strings.Contains(string(htpasswd), password) {
		t.Fatalf("htpasswd %q: want a bcrypt entry for admin, not the password", htpasswd)
	}

	created, err = f.EnsureAdmin()
	if err != nil || created {
		t.Fatalf("second EnsureAdmin = %v, %v; want kept", created, err)
	}

	if again, _ := access.ReadPassword(f.Password()); again != password {
		t.Fatal("the second start changed the password")
	}

	a, err := access.NewAuthenticator(f.HTPasswd())
	if err != nil {
		t.Fatal(err)
	}

	req := func(user, pass string) *http.Request {
		r, _ := http.NewRequest(http.MethodGet, "/", nil)
		if user != "" {
			r.SetBasicAuth(user, pass)
		}

		return r
	}

	if u, err := a.Authenticate(req("admin", password)); err != nil || u != "admin" {
		t.Errorf("admin with the password = %q, %v", u, err)
	}

	if _, err := a.Authenticate(req("admin", password+"x")); !errors.Is(err, access.ErrBadCredentials) {
		t.Errorf("a wrong password = %v, want ErrBadCredentials", err)
	}

	if _, err := a.Authenticate(req("root", password)); !errors.Is(err, access.ErrBadCredentials) {
		t.Errorf("an unknown user = %v, want ErrBadCredentials", err)
	}

	if _, err := a.Authenticate(req("", "")); !errors.Is(err, access.ErrNoCredentials) {
		t.Errorf("no credentials = %v, want ErrNoCredentials", err)
	}

	if u, err := a.AuthenticateHeader(t.Context(), req("admin", password).Header.Get("Authorization")); err != nil || u != "admin" {
		t.Errorf("AuthenticateHeader = %q, %v", u, err)
	}

	// A client certificate the handshake verified is a credential; one it
	// did not verify (no client CA configured) is not.
	dir := t.TempDir()
	ca := testfixture.NewClientCA(t, dir)
	certPath, keyPath := ca.Issue(t, "ops")

	pair, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}

	leaf, _ := x509.ParseCertificate(pair.Certificate[0])

	r := req("", "")
	r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{leaf}}

	if _, err := a.Authenticate(r); !errors.Is(err, access.ErrNoCredentials) {
		t.Errorf("an unverified client certificate = %v, want ErrNoCredentials", err)
	}

	r.TLS.VerifiedChains = [][]*x509.Certificate{{leaf}}
	if u, err := a.Authenticate(r); err != nil || u != "cert:ops" {
		t.Errorf("a verified client certificate = %q, %v; want cert:ops", u, err)
	}
}

// TestAuthenticatorRereads: users added to the htpasswd file (htpasswd -B)
// are known without a restart, as distribution's controller rereads it.
func TestAuthenticatorRereads(t *testing.T) {
	f := access.Files{Dir: t.TempDir()}
	if _, err := f.EnsureAdmin(); err != nil {
		t.Fatal(err)
	}

	a, err := access.NewAuthenticator(f.HTPasswd())
	if err != nil {
		t.Fatal(err)
	}

	r, _ := http.NewRequest(http.MethodGet, "/", nil)
	r.SetBasicAuth("ci", "s3cret")

	if _, err := a.Authenticate(r); !errors.Is(err, access.ErrBadCredentials) {
		t.Fatalf("unknown user = %v", err)
	}

	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), 5)
	if err != nil {
		t.Fatal(err)
	}

	entry := "ci:" + string(hash) + "\n"

	old, _ := os.ReadFile(f.HTPasswd())
	if err := os.WriteFile(f.HTPasswd(), append(old, entry...), 0o600); err != nil {
		t.Fatal(err)
	}

	if u, err := a.Authenticate(r); err != nil || u != "ci" {
		t.Fatalf("added user = %q, %v", u, err)
	}
}
