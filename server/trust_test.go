package server

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
	"github.com/kiln-dev/kiln/signing/signingtest/localsigstore"
)

var sideroID = localsigstore.Identity{Subject: "releasemgr-svc@talos-production.iam.gserviceaccount.com", Issuer: "https://accounts.google.com"}

// keylessLayout writes an OCI layout of a release signed like Sidero's by a
// local Sigstore, carrying (or not) that Sigstore's trusted root fetched
// from a local TUF repository, and a policy trusting the identity with the
// trusted root that came with the mirror. It returns the layout and policy.
func keylessLayout(t *testing.T, carry bool) (string, string) {
	t.Helper()
	ctx := context.Background()

	ss, err := localsigstore.New()
	if err != nil {
		t.Fatal(err)
	}

	trJSON, err := ss.TrustedRootJSON()
	if err != nil {
		t.Fatal(err)
	}

	tuf := localsigstore.NewTUFRepository(t, map[string][]byte{signing.TrustedRootTarget: trJSON})

	reg, err := name.NewRegistry(signingtest.NewRegistry(t))
	if err != nil {
		t.Fatal(err)
	}

	if _, err := demo.Push(ctx, demo.Options{Version: "v1.13.0", Registry: reg, Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
		return ss.SignLikeSideroAs(ctx, ref, upstream.Name(), sideroID)
	}}); err != nil {
		t.Fatal(err)
	}

	plan, err := mirror.NewPlan(ctx, mirror.Registry{Mirror: release.Mirror{Registry: reg}}, mirror.Selection{Versions: []release.Version{release.MustParseVersion("v1.13.0")}})
	if err != nil {
		t.Fatal(err)
	}

	opts := mirror.Options{}

	if carry {
		c, err := signing.FetchTrustedRoot(ctx, signing.TUFOptions{URL: tuf.URL, Root: tuf.Root1()})
		if err != nil {
			t.Fatal(err)
		}

		tj, err := c.TUFJSON()
		if err != nil {
			t.Fatal(err)
		}

		opts.TrustedRoot = &mirror.TrustedRoot{JSON: c.TrustedRoot, TUF: tj}
	}

	layout := filepath.Join(t.TempDir(), "layout")
	if _, err := mirror.Copy(ctx, plan, mirror.Layout{Dir: layout}, opts); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tuf-root.json"), tuf.Root1(), 0o644); err != nil {
		t.Fatal(err)
	}

	policy := filepath.Join(dir, "policy.yaml")
	body := "tufRoot: tuf-root.json\nrules:\n  - name: siderolabs\n    repositories: ['siderolabs/*']\n    keyless:\n      trustedRoot: mirror\n" +
		"      identities:\n        - subject: " + sideroID.Subject + "\n          issuer: " + sideroID.Issuer + "\n"

	if err := os.WriteFile(policy, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}

	return layout, policy
}

// TestServeWithTheMirrorsTrustedRoot: kiln serve imports an OCI layout
// whose keyless signatures verify only with the trusted root that came with
// it, and serves the release, verifying again from its embedded registry,
// where the import put the root.
func TestServeWithTheMirrorsTrustedRoot(t *testing.T) {
	layout, policy := keylessLayout(t, true)
	ts := startServer(t, Config{TrustPolicy: policy, Source: SourceConfig{Layout: layout}})

	resp, body := ts.do(t, "GET", "/version/v1.13.0/extensions/official", "")
	if resp.StatusCode != 200 || !strings.Contains(body, "siderolabs/gvisor:") {
		t.Fatalf("extensions = %d %s", resp.StatusCode, body)
	}

	// The root is in the embedded registry for later verifications.
	src, embedded, err := newSource(context.Background(), withDefaults(Config{DataDir: ts.dir}), slogDiscard())
	if err != nil {
		t.Fatal(err)
	}
	defer embedded.Close()

	if tr, err := mirror.ReadTrustedRoot(context.Background(), mirror.Registry{Mirror: release.Mirror{Registry: src.Registry}, Options: src.Remote}); err != nil || tr == nil {
		t.Fatalf("trusted root in the embedded registry: %v, %v", tr, err)
	}
}

// TestServeWithoutTheMirrorsTrustedRoot: the same layout without the
// trusted root is refused at import, saying why.
func TestServeWithoutTheMirrorsTrustedRoot(t *testing.T) {
	layout, policy := keylessLayout(t, false)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()

	logger := slog.New(slog.DiscardHandler)
	cfg := withDefaults(Config{DataDir: t.TempDir(), TrustPolicy: policy, Source: SourceConfig{Layout: layout}}).WithListener(lis.Addr(), logger)

	_, err = Build(context.Background(), cfg, logger)
	if err == nil || !strings.Contains(err.Error(), "no trusted root came with the mirror") {
		t.Fatalf("Build = %v, want a refusal saying no trusted root came with the mirror", err)
	}
}
