package signing_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"

	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

func TestLoadOrCreateSigner(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)

	dir := filepath.Join(t.TempDir(), "data")
	path := filepath.Join(dir, signing.SigningKeyFile)

	s, created, err := signing.LoadOrCreateSigner(path)
	if err != nil || !created {
		t.Fatalf("first start: created %v, %v", created, err)
	}

	for p, want := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700 | os.ModeDir} {
		st, err := os.Stat(p)
		if err != nil || st.Mode() != want {
			t.Errorf("%s: mode %v (%v), want %v", p, st.Mode(), err, want)
		}
	}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("key file is not a PKCS#8 PEM:\n%s", b)
	}

	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if e, ok := k.(*ecdsa.PrivateKey); err != nil || !ok || e.Curve != elliptic.P256() {
		t.Fatalf("key is %T (%v), want ECDSA P-256", k, err)
	}

	again, created, err := signing.LoadOrCreateSigner(path)
	if err != nil || created || !bytes.Equal(again.PublicKeyPEM(), s.PublicKeyPEM()) {
		t.Fatalf("second start: created %v, %v, same key %v", created, err, bytes.Equal(again.PublicKeyPEM(), s.PublicKeyPEM()))
	}

	pub, _ := pem.Decode(s.PublicKeyPEM())
	if pub == nil || pub.Type != "PUBLIC KEY" {
		t.Errorf("public key PEM:\n%s", s.PublicKeyPEM())
	}

	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}

	if _, _, err := signing.LoadOrCreateSigner(path); !errors.Is(err, signing.ErrInvalidKey) || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a key others can read: %v", err)
	}

	if err := os.WriteFile(path, []byte("not a key"), 0o600); err != nil {
		t.Fatal(err)
	}

	if _, _, err := signing.LoadOrCreateSigner(path); !errors.Is(err, signing.ErrInvalidKey) {
		t.Errorf("a broken key file: %v", err)
	}

	if ents, _ := os.ReadDir(filepath.Dir(path)); len(ents) != 1 {
		t.Errorf("key directory holds %d files, want the key alone", len(ents))
	}
}

// Kilns starting together on one data directory agree on one key.
func TestLoadOrCreateSignerRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), signing.SigningKeyFile)

	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		keys    = map[string]int{}
		creates int
	)

	for range 8 {
		wg.Add(1)

		go func() {
			defer wg.Done()

			s, created, err := signing.LoadOrCreateSigner(path)
			if err != nil {
				t.Error(err)

				return
			}

			mu.Lock()
			defer mu.Unlock()

			keys[string(s.PublicKeyPEM())]++

			if created {
				creates++
			}
		}()
	}

	wg.Wait()

	if len(keys) != 1 || creates != 1 {
		t.Errorf("%d keys, %d creations; want 1 and 1", len(keys), creates)
	}
}

func TestParseSigner(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	rsaKey, _ := rsa.GenerateKey(rand.Reader, 2048)
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)

	pkcs8 := func(k any) []byte {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}

		return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	}

	sec1, err := x509.MarshalECPrivateKey(p256)
	if err != nil {
		t.Fatal(err)
	}

	der, _ := x509.MarshalPKCS8PrivateKey(p256)

	cosignKey, err := encrypted.Encrypt(der, []byte("hunter2"))
	if err != nil {
		t.Fatal(err)
	}

	want, err := signing.NewSigner(p256)
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name     string
		pem      []byte
		password string
		ok       bool
		err      string
	}{
		{"pkcs8", pkcs8(p256), "", true, ""},
		{"sec1", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), "", true, ""},
		{"cosign", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED SIGSTORE PRIVATE KEY", Bytes: cosignKey}), "hunter2", true, ""},
		{"cosign wrong password", pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED SIGSTORE PRIVATE KEY", Bytes: cosignKey}), "hunter3", false, "wrong password"},
		{"p384", pkcs8(p384), "", false, "ECDSA P-384 key, want an ECDSA P-256 key"},
		{"rsa", pkcs8(rsaKey), "", false, "*rsa.PrivateKey"},
		{"ed25519", pkcs8(edKey), "", false, "ed25519.PrivateKey"},
		{"public", want.PublicKeyPEM(), "", false, `"PUBLIC KEY" is not a private key`},
		{"two blocks", append(pkcs8(p256), pkcs8(p256)...), "", false, "more than one PEM block"},
		{"garbage", []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), "", false, "PRIVATE KEY"},
		{"empty", nil, "", false, "no PEM block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := signing.ParseSigner(tc.pem, []byte(tc.password))
			if tc.ok {
				if err != nil || !bytes.Equal(s.PublicKeyPEM(), want.PublicKeyPEM()) {
					t.Fatalf("ParseSigner: %v", err)
				}

				return
			}

			if !errors.Is(err, signing.ErrInvalidKey) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("error %v, want ErrInvalidKey saying %q", err, tc.err)
			}
		})
	}
}

// TestSignerSignsWhatKilnVerifies: both signature formats verify with
// kiln's verifier and the signer's policy, each on its own; another key's
// policy refuses them.
func TestSignerSignsWhatKilnVerifies(t *testing.T) {
	ctx := context.Background()
	host := signingtest.NewRegistry(t)
	repo, _ := name.NewRepository(host + "/metal-installer/376567988ad370138ad8b2698212367b8edcb69b5fd68c80be1f2ec7d603b4ba")

	s, _, err := signing.LoadOrCreateSigner(filepath.Join(t.TempDir(), signing.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	other, _, err := signing.LoadOrCreateSigner(filepath.Join(t.TempDir(), signing.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		name   string
		sign   func(context.Context, name.Digest, ...remote.Option) error
		method string
	}{
		{"legacy", s.SignLegacy, signing.MethodKeyLegacy},
		{"bundle", s.SignBundle, signing.MethodKeyBundle},
		{"both", s.Sign, signing.MethodKeyLegacy},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := signingtest.PushRandomImage(ctx, repo)
			if err != nil {
				t.Fatal(err)
			}

			if err := tc.sign(ctx, d); err != nil {
				t.Fatal(err)
			}

			p, err := s.Policy("metal-installer/*")
			if err != nil {
				t.Fatal(err)
			}

			v, err := signing.NewVerifier(p)
			if err != nil {
				t.Fatal(err)
			}

			got, err := v.Verify(ctx, d)
			if err != nil {
				t.Fatalf("kiln refused kiln's signature: %v", err)
			}

			if got.Method() != tc.method {
				t.Errorf("method %q, want %q", got.Method(), tc.method)
			}

			op, err := other.Policy("metal-installer/*")
			if err != nil {
				t.Fatal(err)
			}

			ov, err := signing.NewVerifier(op)
			if err != nil {
				t.Fatal(err)
			}

			if _, err := ov.Verify(ctx, d); !errors.Is(err, signing.ErrUntrusted) {
				t.Errorf("another key's policy: %v", err)
			}
		})
	}
}

// TestSignLegacyReplaces: signing again replaces the .sig image, whose one
// payload claims the repository and digest.
func TestSignLegacyReplaces(t *testing.T) {
	ctx := context.Background()
	host := signingtest.NewRegistry(t)
	repo, _ := name.NewRepository(host + "/installer/abc")

	s, _, err := signing.LoadOrCreateSigner(filepath.Join(t.TempDir(), signing.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	d, err := signingtest.PushRandomImage(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}

	for range 2 {
		if err := s.SignLegacy(ctx, d); err != nil {
			t.Fatal(err)
		}
	}

	tag, err := ociremote.SignatureTag(d)
	if err != nil {
		t.Fatal(err)
	}

	sigs, err := ociremote.Signatures(tag)
	if err != nil {
		t.Fatal(err)
	}

	list, err := sigs.Get()
	if err != nil || len(list) != 1 {
		t.Fatalf("%d signatures (%v), want 1", len(list), err)
	}

	payload, err := list[0].Payload()
	if err != nil {
		t.Fatal(err)
	}

	var p struct {
		Critical struct {
			Identity struct {
				DockerReference string `json:"docker-reference"`
			} `json:"identity"`
			Image struct {
				Digest string `json:"docker-manifest-digest"`
			} `json:"image"`
			Type string `json:"type"`
		} `json:"critical"`
	}

	if err := json.Unmarshal(payload, &p); err != nil {
		t.Fatal(err)
	}

	if p.Critical.Identity.DockerReference != repo.Name() || p.Critical.Image.Digest != d.DigestStr() ||
		p.Critical.Type != "cosign container image signature" {
		t.Errorf("payload %s", payload)
	}

	if ann, err := list[0].Annotations(); err != nil || ann["dev.cosignproject.cosign/signature"] == "" {
		t.Errorf("annotations %v (%v)", ann, err)
	}

	// The bundle's statement: cosign's, with the repository named.
	b, err := s.Bundle(d)
	if err != nil {
		t.Fatal(err)
	}

	var bundle struct {
		MediaType            string `json:"mediaType"`
		VerificationMaterial struct {
			PublicKey   struct{ Hint string } `json:"publicKey"`
			TlogEntries []any                 `json:"tlogEntries"`
		} `json:"verificationMaterial"`
		DsseEnvelope struct {
			Payload     []byte `json:"payload"`
			PayloadType string `json:"payloadType"`
		} `json:"dsseEnvelope"`
	}

	if err := json.Unmarshal(b, &bundle); err != nil {
		t.Fatal(err)
	}

	var st struct {
		Type          string `json:"_type"`
		PredicateType string `json:"predicateType"`
		Subject       []struct {
			Name   string            `json:"name"`
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
	}

	if err := json.Unmarshal(bundle.DsseEnvelope.Payload, &st); err != nil {
		t.Fatal(err)
	}

	if bundle.MediaType != "application/vnd.dev.sigstore.bundle.v0.3+json" || bundle.VerificationMaterial.PublicKey.Hint == "" ||
		len(bundle.VerificationMaterial.TlogEntries) != 0 || bundle.DsseEnvelope.PayloadType != "application/vnd.in-toto+json" ||
		st.Type != "https://in-toto.io/Statement/v1" || st.PredicateType != "https://sigstore.dev/cosign/sign/v1" ||
		len(st.Subject) != 1 || st.Subject[0].Name != repo.Name() || "sha256:"+st.Subject[0].Digest["sha256"] != d.DigestStr() {
		t.Errorf("bundle %s\nstatement %s", b, bundle.DsseEnvelope.Payload)
	}

}

// FuzzParseSigner: any bytes are a signer or an ErrInvalidKey, never a
// panic.
func FuzzParseSigner(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.MarshalPKCS8PrivateKey(k)
	sec1, _ := x509.MarshalECPrivateKey(k)

	f.Add(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), []byte(""))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), []byte(""))
	f.Add(pem.EncodeToMemory(&pem.Block{Type: "ENCRYPTED SIGSTORE PRIVATE KEY", Bytes: []byte(`{"kdf":{"name":"scrypt","params":{"N":2,"r":1,"p":1},"salt":"AA=="},"cipher":{"name":"nacl/secretbox","nonce":"AA=="},"ciphertext":"AA=="}`)}), []byte("x"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n\n-----END PRIVATE KEY-----\n"), []byte(""))

	f.Fuzz(func(t *testing.T, data, password []byte) {
		s, err := signing.ParseSigner(data, password)
		if err != nil {
			if !errors.Is(err, signing.ErrInvalidKey) {
				t.Fatalf("error not matching ErrInvalidKey: %v", err)
			}

			return
		}

		if len(s.PublicKeyPEM()) == 0 {
			t.Fatal("signer without a public key")
		}
	})
}
