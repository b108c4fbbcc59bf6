package server

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing/signingtest"
	"github.com/kiln-dev/kiln/testrelease"
)

// The demo release lives under its own namespace of the embedded registry
// and is trusted through its own key, for that namespace only: the demo key
// applies to nothing a user mirrors.
const (
	demoNamespace = "kiln-demo"
	demoDir       = "demo"
	demoPubKey    = "cosign.pub"
)

// demoVersions are seeded, newest last.
var demoVersions = []string{"v1.12.0", "v1.13.0"}

// demoRule is the trust-policy rule of the demo key.
func demoRule(pubPEM []byte) map[string]any {
	patterns := []string{}
	for p := demoNamespace; len(patterns) < 5; p += "/*" {
		patterns = append(patterns, p+"/*")
	}

	return map[string]any{
		"name":         "kiln-demo",
		"repositories": patterns,
		"keys":         []any{map[string]any{"name": "kiln-demo", "pem": string(pubPEM)}},
	}
}

// seedDemo pushes the signed synthetic release into the embedded registry
// unless it is already there, and returns the demo public key. The private
// key is thrown away after signing: only the demo release is ever signed
// with it.
func seedDemo(ctx context.Context, src *artifacts.Source, dataDir string, logger *slog.Logger) ([]byte, error) {
	pubPath := filepath.Join(dataDir, demoDir, demoPubKey)

	tags, err := src.Tags(ctx, release.ImagerRepo)
	if err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}

	pub, err := os.ReadFile(pubPath)
	if err == nil && len(release.Versions(tags, nil)) > 0 {
		return pub, nil
	}

	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("demo: %w", err)
	}

	key, err := signingtest.GenerateKey(signingtest.ECDSAP256)
	if err != nil {
		return nil, fmt.Errorf("demo key: %w", err)
	}

	start := time.Now()

	for _, v := range demoVersions {
		_, err := testrelease.Push(ctx, testrelease.Options{
			Version:   v,
			Registry:  src.Registry,
			Namespace: demoNamespace,
			Remote:    src.Remote,
			Sign: func(ctx context.Context, ref name.Digest) error {
				return signingtest.SignLegacy(ctx, ref, key, src.Remote...)
			},
		})
		if err != nil {
			return nil, fmt.Errorf("demo release %s: %w", v, err)
		}
	}

	pub = key.PublicKeyPEM()

	if err := os.MkdirAll(filepath.Dir(pubPath), 0o755); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}

	if err := os.WriteFile(pubPath, pub, 0o644); err != nil {
		return nil, fmt.Errorf("demo: %w", err)
	}

	logger.Info("seeded the demo release", "versions", demoVersions, "namespace", demoNamespace, "duration", time.Since(start))

	return pub, nil
}
