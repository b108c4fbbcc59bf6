package server

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// seedRegistry pushes a synthetic v1.13.0 into <dir>/registry, signed by
// key (or unsigned when key is nil), as `kiln mirror` would leave it.
func seedRegistry(t *testing.T, dir string, key *signingtest.Key) {
	t.Helper()

	seedRegistryAs(t, dir, key, func(upstream name.Repository) string { return upstream.Name() })
}

// seedRegistryAs is seedRegistry whose signatures claim claim(upstream).
func seedRegistryAs(t *testing.T, dir string, key *signingtest.Key, claim func(upstream name.Repository) string) {
	t.Helper()

	ctx := context.Background()

	reg, err := registry.NewEmbedded(ctx, filepath.Join(dir, "registry"))
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()

	host, _ := name.NewRegistry(embeddedHost, name.Insecure)
	inproc := remote.WithTransport(registry.Transport(reg))

	opts := demo.Options{Version: "v1.13.0", Registry: host, Remote: []remote.Option{inproc}}
	if key != nil {
		opts.Sign = func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
			return signingtest.SignLegacyAs(ctx, ref, claim(upstream), key, inproc)
		}
	}

	if _, err := demo.Push(ctx, opts); err != nil {
		t.Fatal(err)
	}
}

func writePolicy(t testing.TB, dir string, key *signingtest.Key) string {
	t.Helper()

	keyPath := filepath.Join(dir, "release.pub")
	if err := os.WriteFile(keyPath, key.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("rules:\n  - name: releases\n    repositories: ['siderolabs/*']\n    keys:\n      - name: release\n        path: release.pub\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	return policy
}

func TestReleasesVerified(t *testing.T) {
	dir := t.TempDir()
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	seedRegistry(t, dir, key)

	ts := startServer(t, Config{DataDir: dir, TrustPolicy: writePolicy(t, t.TempDir(), key), ExternalURL: "http://kiln.lan:8080"})

	resp, body := ts.do(t, "GET", "/versions", "")
	if resp.StatusCode != 200 || body != `["v1.13.0"]`+"\n" {
		t.Fatalf("/versions = %d %q", resp.StatusCode, body)
	}

	resp, body = ts.do(t, "GET", "/version/v1.13.0/extensions/official", "")

	var exts []map[string]string
	if err := json.Unmarshal([]byte(body), &exts); err != nil || resp.StatusCode != 200 || len(exts) < 3 {
		t.Fatalf("extensions = %d %s", resp.StatusCode, body)
	}

	for _, e := range exts {
		if !strings.HasPrefix(e["ref"], "kiln.lan:8080/siderolabs/") || !strings.HasPrefix(e["digest"], "sha256:") || e["name"] == "" {
			t.Errorf("extension entry %v: ref must point into the local mirror", e)
		}
	}

	resp, body = ts.do(t, "GET", "/version/1.13.0/overlays/official", "")
	if resp.StatusCode != 200 || !strings.Contains(body, `"image":"siderolabs/sbc-raspberrypi"`) || !strings.Contains(body, `"ref":"kiln.lan:8080/siderolabs/sbc-raspberrypi:`) {
		t.Fatalf("overlays = %d %s", resp.StatusCode, body)
	}

	for path, want := range map[string]string{
		"/version/v1.14.0/extensions/official": "404 version v1.14.0 is not available\n",
		"/version/next/overlays/official":      "400 invalid Talos version \"next\": want vMAJOR.MINOR.PATCH\n",
	} {
		resp, body := ts.do(t, "GET", path, "")
		if got := strings.Fields(resp.Status)[0] + " " + body; got != want {
			t.Errorf("GET %s = %q, want %q", path, got, want)
		}
	}
}

func TestReleasesRefused(t *testing.T) {
	trusted := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	other := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)

	for name, tc := range map[string]struct {
		signer *signingtest.Key
		policy bool
		reason string
	}{
		"unsigned":  {nil, true, "no signatures found"},
		"wrong key": {other, true, "no signature verifies against the policy"},
		"no policy": {trusted, false, "no trust policy is configured"},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			seedRegistry(t, dir, tc.signer)

			cfg := Config{DataDir: dir}
			if tc.policy {
				cfg.TrustPolicy = writePolicy(t, t.TempDir(), trusted)
			}

			ts := startServer(t, cfg)

			resp, body := ts.do(t, "GET", "/version/v1.13.0/extensions/official", "")
			if resp.StatusCode != 412 || !strings.Contains(body, "untrusted artifact") ||
				!strings.Contains(body, "siderolabs/extensions@sha256:") || !strings.Contains(body, tc.reason) {
				t.Fatalf("GET extensions = %d %q, want 412 naming the image, digest and %q", resp.StatusCode, body, tc.reason)
			}

			resp, body = ts.do(t, "GET", "/v1/versions/v1.13.0/overlays", "")
			if resp.StatusCode != 412 || !strings.Contains(body, "siderolabs/overlays@sha256:") {
				t.Fatalf("gateway overlays = %d %q, want 412", resp.StatusCode, body)
			}
		})
	}
}

func TestDemo(t *testing.T) {
	dir := t.TempDir()
	ts := startServer(t, Config{DataDir: dir, Demo: true})

	resp, body := ts.do(t, "GET", "/versions", "")
	if resp.StatusCode != 200 || body != `["v1.12.0","v1.13.0"]`+"\n" {
		t.Fatalf("/versions = %d %q", resp.StatusCode, body)
	}

	resp, body = ts.do(t, "GET", "/version/v1.13.0/extensions/official", "")
	if resp.StatusCode != 200 || !strings.Contains(body, "/kiln-demo/siderolabs/gvisor:") {
		t.Fatalf("demo extensions = %d %s", resp.StatusCode, body)
	}

	// The demo key trusts the demo namespace only.
	cfg := Config{DataDir: t.TempDir(), Demo: true}
	ctx := context.Background()

	src, embedded, err := newSource(ctx, withDefaults(cfg), slogDiscard())
	if err != nil {
		t.Fatal(err)
	}
	defer embedded.Close()

	demoPolicy, err := demo.Policy(signingtest.MustGenerateKey(t, signingtest.ECDSAP256).PublicKeyPEM())
	if err != nil {
		t.Fatal(err)
	}

	v, err := newVerifier(cfg, src.Remote, nil, demoPolicy, slogDiscard())
	if err != nil {
		t.Fatal(err)
	}

	ref, _ := name.NewDigest("kiln.internal/siderolabs/imager@sha256:" + strings.Repeat("a", 64))
	if _, err := v.Verify(ctx, ref); err == nil || !strings.Contains(err.Error(), "no trust policy matches repository") {
		t.Fatalf("demo key applied outside the demo namespace: %v", err)
	}
}

// TestSignedIdentityScope: release images must be signed as their upstream
// repository, Kubernetes images in an image cache need not (Kubernetes
// signs under the names of other registries than registry.k8s.io).
func TestSignedIdentityScope(t *testing.T) {
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	policyDir := t.TempDir()

	if err := os.WriteFile(filepath.Join(policyDir, "release.pub"), key.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}

	policy := filepath.Join(policyDir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("rules:\n  - name: all\n    repositories: ['*', '*/*', '*/*/*']\n    keys:\n      - path: release.pub\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	for name, tc := range map[string]struct {
		claim      func(upstream name.Repository) string
		kernel     int
		imageCache bool
	}{
		"kubernetes signed elsewhere": {func(u name.Repository) string {
			if u.RegistryStr() == "registry.k8s.io" {
				return "us-west2-docker.pkg.dev/k8s-artifacts-prod/images/" + u.RepositoryStr()
			}

			return u.Name()
		}, 200, true},
		"imager signed as installer-base": {func(u name.Repository) string {
			if u.RepositoryStr() == "siderolabs/imager" {
				return "ghcr.io/siderolabs/installer-base"
			}

			return u.Name()
		}, 412, true},
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			seedRegistryAs(t, dir, key, tc.claim)

			ts := startServer(t, Config{DataDir: dir, TrustPolicy: policy})

			if resp, _ := ts.do(t, "POST", "/schematics", "{}"); resp.StatusCode != 201 {
				t.Fatal(resp.Status)
			}

			resp, body := ts.do(t, "GET", "/image/"+emptyID+"/v1.13.0/kernel-amd64", "")
			if resp.StatusCode != tc.kernel || (tc.kernel == 412 && !strings.Contains(body, "signed as ghcr.io/siderolabs/installer-base, not as ghcr.io/siderolabs/imager")) {
				t.Fatalf("kernel = %d %.300q, want %d", resp.StatusCode, body, tc.kernel)
			}

			resp, body = ts.do(t, "POST", "/v1/imagecaches", `{"kubernetesForTalos":"v1.13.0","platforms":["linux/amd64"]}`)
			if ok := resp.StatusCode == 200 && strings.Contains(body, `"cacheId"`); ok != tc.imageCache {
				t.Fatalf("image cache of the Kubernetes images = %d %.500s", resp.StatusCode, body)
			}
		})
	}
}
