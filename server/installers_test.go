package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"os"
	"path/filepath"
	"testing"

	"github.com/sigstore/sigstore/pkg/cryptoutils"

	"github.com/kiln-dev/kiln/signing"
)

// TestSigningKeyPub: the key is made on first start, private (0600), served
// as the public factory serves its own, and kept across restarts.
func TestSigningKeyPub(t *testing.T) {
	dir := t.TempDir()

	get := func() string {
		ts := startServer(t, Config{DataDir: dir})
		defer ts.stop()

		resp, body := ts.do(t, "GET", "/oci/cosign/signing-key.pub", "")
		if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-pem-file" {
			t.Fatalf("GET /oci/cosign/signing-key.pub = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
		}

		pub, err := cryptoutils.UnmarshalPEMToPublicKey([]byte(body))
		if err != nil {
			t.Fatalf("served key: %v\n%s", err, body)
		}

		if k, ok := pub.(*ecdsa.PublicKey); !ok || k.Curve != elliptic.P256() {
			t.Fatalf("served key is %T, want ECDSA P-256", pub)
		}

		return body
	}

	first := get()

	st, err := os.Stat(filepath.Join(dir, signing.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	if st.Mode().Perm() != 0o600 {
		t.Errorf("signing key mode %04o, want 0600", st.Mode().Perm())
	}

	s, err := signing.LoadSigner(filepath.Join(dir, signing.SigningKeyFile), nil)
	if err != nil {
		t.Fatal(err)
	}

	if string(s.PublicKeyPEM()) != first {
		t.Error("served key is not the public half of the key file")
	}

	if again := get(); again != first {
		t.Error("a restart served another key")
	}
}
