//go:build cosigncli

// Interoperability with the real cosign CLI. Run with
//
//	COSIGN=/path/to/cosign go test -tags cosigncli ./signing/...
//
// cosign runs with an empty HOME and TUF_ROOT and only ever talks to the
// in-process registry on 127.0.0.1.
package signing_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

type cosignCLI struct {
	bin, dir string
}

func newCosign(t *testing.T) *cosignCLI {
	t.Helper()
	bin := os.Getenv("COSIGN")
	if bin == "" {
		t.Skip("COSIGN is not set")
	}
	return &cosignCLI{bin: bin, dir: t.TempDir()}
}

func (c *cosignCLI) run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Dir = c.dir
	cmd.Env = []string{
		"HOME=" + c.dir,
		"TUF_ROOT=" + filepath.Join(c.dir, "tuf"),
		"COSIGN_PASSWORD=",
		"COSIGN_EXPERIMENTAL=",
		"PATH=/usr/bin:/bin",
	}
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	t.Logf("cosign %s\n%s", strings.Join(args, " "), out.String())
	return out.String(), err
}

func keyPolicy(t *testing.T, pubPath string) *signing.Verifier {
	t.Helper()
	y := "rules:\n  - name: cli\n    repositories: ['*/cli/*']\n    keys:\n      - name: cosign-cli\n        path: " + pubPath + "\n"
	p, err := signing.ParsePolicy([]byte(y), "")
	if err != nil {
		t.Fatal(err)
	}
	v, err := signing.NewVerifier(p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestCosignSignKilnVerifies: what `cosign sign --key` stores, kiln accepts.
func TestCosignSignKilnVerifies(t *testing.T) {
	c := newCosign(t)
	ctx := context.Background()
	host := signingtest.NewRegistry(t)
	if _, err := c.run(t, "generate-key-pair", "--output-key-prefix", "k"); err != nil {
		t.Fatal(err)
	}
	v := keyPolicy(t, filepath.Join(c.dir, "k.pub"))
	repo, _ := name.NewRepository(host + "/cli/imager")

	for _, tc := range []struct {
		name, method string
		extra        []string
	}{
		{"legacy", signing.MethodKeyLegacy, nil},
		{"bundle", signing.MethodKeyBundle, []string{"--new-bundle-format"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := signingtest.PushRandomImage(ctx, repo)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := v.Verify(ctx, d); err == nil {
				t.Fatal("unsigned image verified")
			}
			args := append([]string{"sign", "--key", "k.key", "--tlog-upload=false", "-y"}, tc.extra...)
			if _, err := c.run(t, append(args, d.String())...); err != nil {
				t.Fatal(err)
			}
			// A fresh verifier: the refusal above must not be cached.
			got, err := keyPolicy(t, filepath.Join(c.dir, "k.pub")).Verify(ctx, d)
			if err != nil {
				t.Fatalf("kiln refused cosign's signature: %v", err)
			}
			if got.Method() != tc.method {
				t.Errorf("method %q, want %q", got.Method(), tc.method)
			}
		})
	}
}

// TestSigningtestCosignVerifies: what signingtest stores, `cosign verify`
// accepts, and rejects with another key.
func TestSigningtestCosignVerifies(t *testing.T) {
	c := newCosign(t)
	ctx := context.Background()
	host := signingtest.NewRegistry(t)
	repo, _ := name.NewRepository(host + "/cli/installer")
	for _, kt := range []signingtest.KeyType{signingtest.ECDSAP256, signingtest.Ed25519, signingtest.RSA3072} {
		t.Run(string(kt), func(t *testing.T) {
			k := signingtest.MustGenerateKey(t, kt)
			other := signingtest.MustGenerateKey(t, kt)
			pub := filepath.Join(c.dir, string(kt)+".pub")
			otherPub := filepath.Join(c.dir, string(kt)+"-other.pub")
			if err := os.WriteFile(pub, k.PublicKeyPEM(), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(otherPub, other.PublicKeyPEM(), 0o644); err != nil {
				t.Fatal(err)
			}
			d, err := signingtest.PushRandomImage(ctx, repo)
			if err != nil {
				t.Fatal(err)
			}
			if err := signingtest.SignLegacy(ctx, d, k); err != nil {
				t.Fatal(err)
			}
			if _, err := c.run(t, "verify", "--key", pub, "--insecure-ignore-tlog", d.String()); err != nil {
				t.Errorf("cosign verify rejected signingtest's signature: %v", err)
			}
			if _, err := c.run(t, "verify", "--key", otherPub, "--insecure-ignore-tlog", d.String()); err == nil {
				t.Error("cosign verify accepted the wrong key")
			}
		})
	}
}

// TestSigningtestBundleCosignVerifies: cosign v2 verifies new-format
// bundles only through verify-attestation with a trusted root; signingtest's
// key bundle must pass that too.
func TestSigningtestBundleCosignVerifies(t *testing.T) {
	c := newCosign(t)
	ctx := context.Background()
	host := signingtest.NewRegistry(t)
	repo, _ := name.NewRepository(host + "/cli/bundle")
	k := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	pub := filepath.Join(c.dir, "b.pub")
	if err := os.WriteFile(pub, k.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	kca, err := signingtest.NewKeylessCA()
	if err != nil {
		t.Fatal(err)
	}
	tr, err := kca.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}
	trPath := filepath.Join(c.dir, "trusted_root.json")
	if err := os.WriteFile(trPath, tr, 0o644); err != nil {
		t.Fatal(err)
	}
	d, err := signingtest.PushRandomImage(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}
	if err := signingtest.SignBundle(ctx, d, k); err != nil {
		t.Fatal(err)
	}
	if _, err := c.run(t, "verify-attestation", "--key", pub, "--insecure-ignore-tlog", "--new-bundle-format",
		"--trusted-root", trPath, "--type", signingtest.SignPredicateType, d.String()); err != nil {
		t.Errorf("cosign verify-attestation rejected signingtest's bundle: %v", err)
	}
}
