//go:build cosigncli

package signing_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// TestSignerCosignVerifies: what kiln's Signer writes, `cosign verify`
// accepts offline with its public key, both formats; another key fails.
func TestSignerCosignVerifies(t *testing.T) {
	c := newCosign(t)
	ctx := context.Background()
	host := signingtest.NewRegistry(t)
	repo, _ := name.NewRepository(host + "/cli/metal-installer")

	s, _, err := signing.LoadOrCreateSigner(filepath.Join(c.dir, "data", signing.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	other, _, err := signing.LoadOrCreateSigner(filepath.Join(c.dir, "other", signing.SigningKeyFile))
	if err != nil {
		t.Fatal(err)
	}

	pub, otherPub := filepath.Join(c.dir, "kiln.pub"), filepath.Join(c.dir, "other.pub")
	if err := os.WriteFile(pub, s.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	if err := os.WriteFile(otherPub, other.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	d, err := signingtest.PushRandomImage(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}

	if err := s.SignLegacy(ctx, d); err != nil {
		t.Fatal(err)
	}

	if _, err := c.run(t, "verify", "--offline", "--key", pub, "--insecure-ignore-tlog", "--insecure-ignore-sct", d.String()); err != nil {
		t.Errorf("cosign verify rejected kiln's signature: %v", err)
	}

	if _, err := c.run(t, "verify", "--offline", "--key", otherPub, "--insecure-ignore-tlog", d.String()); err == nil {
		t.Error("cosign verify accepted another key")
	}

	// The bundle alone, on another image: cosign v2 reads new-format
	// bundles with a trusted root, which a key signature does not use.
	d2, err := signingtest.PushRandomImage(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}

	if err := s.SignBundle(ctx, d2); err != nil {
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

	if _, err := c.run(t, "verify", "--offline", "--key", pub, "--insecure-ignore-tlog", "--new-bundle-format",
		"--trusted-root", trPath, d2.String()); err != nil {
		t.Errorf("cosign verify rejected kiln's bundle: %v", err)
	}

	if _, err := c.run(t, "verify", "--offline", "--key", otherPub, "--insecure-ignore-tlog", "--new-bundle-format",
		"--trusted-root", trPath, d2.String()); err == nil {
		t.Error("cosign verify accepted kiln's bundle with another key")
	}
}

// TestCosignKeyFileSigns: a key made by `cosign generate-key-pair` (given
// to kiln instead of its own) signs what cosign verifies with its .pub.
func TestCosignKeyFileSigns(t *testing.T) {
	c := newCosign(t)
	ctx := context.Background()
	host := signingtest.NewRegistry(t)
	repo, _ := name.NewRepository(host + "/cli/installer")

	if _, err := c.run(t, "generate-key-pair", "--output-key-prefix", "k"); err != nil {
		t.Fatal(err)
	}

	s, err := signing.LoadSigner(filepath.Join(c.dir, "k.key"), []byte(""))
	if err != nil {
		t.Fatal(err)
	}

	d, err := signingtest.PushRandomImage(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}

	if err := s.Sign(ctx, d); err != nil {
		t.Fatal(err)
	}

	// With a bundle attached, cosign v2 verifies the bundle rather than the
	// .sig and wants a trusted root even for a key (cmd/cosign/cli/verify:
	// "trusted root is required when using new bundle format"); offline,
	// an empty one does (`cosign trusted-root create`).
	out, err := c.run(t, "verify", "--offline", "--key", "k.pub", "--insecure-ignore-tlog", d.String())
	if err == nil || !strings.Contains(out, "trusted root is required") {
		t.Errorf("cosign v2 verified a bundle offline with no trusted root, or failed otherwise (%v): the README's advice is stale", err)
	}

	if _, err := c.run(t, "trusted-root", "create", "--out", "none.json"); err != nil {
		t.Fatal(err)
	}

	if _, err := c.run(t, "verify", "--offline", "--key", "k.pub", "--insecure-ignore-tlog", "--trusted-root", "none.json", d.String()); err != nil {
		t.Errorf("cosign verify rejected a signature by its own key file: %v", err)
	}

	// The .sig alone is what cosign v2 verifies with the key only.
	d2, err := signingtest.PushRandomImage(ctx, repo)
	if err != nil {
		t.Fatal(err)
	}

	if err := s.SignLegacy(ctx, d2); err != nil {
		t.Fatal(err)
	}

	if _, err := c.run(t, "verify", "--offline", "--key", "k.pub", "--insecure-ignore-tlog", d2.String()); err != nil {
		t.Errorf("cosign verify rejected a .sig by its own key file: %v", err)
	}
}
