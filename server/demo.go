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
	"go.yaml.in/yaml/v4"

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
	// demoPolicy is a trust policy for clients of the demo (kiln cache
	// create --mirror <kiln>/kiln-demo), next to the key it names.
	demoPolicy = "trust-policy.yaml"
)

// demoVersions are seeded, newest last.
var demoVersions = []string{"v1.12.0", "v1.13.0"}

// demoRule is the trust-policy rule of the demo key, given as key (a
// policy key entry: its PEM, or the path of its file).
func demoRule(key map[string]any) map[string]any {
	patterns := []string{}
	for p := demoNamespace; len(patterns) < 5; p += "/*" {
		patterns = append(patterns, p+"/*")
	}

	key["name"] = "kiln-demo"

	return map[string]any{
		"name":         "kiln-demo",
		"repositories": patterns,
		"keys":         []any{key},
	}
}

// writeDemoPolicy writes the demo's trust policy beside its key, so that a
// client of the demo (kiln cache create, kiln mirror) has nothing to guess.
// It is rewritten on every start: it is derived, not configuration.
func writeDemoPolicy(dir string) error {
	data, err := yaml.Marshal(map[string]any{"rules": []any{demoRule(map[string]any{"path": demoPubKey})}})
	if err != nil {
		return err
	}

	return writeFileAtomic(filepath.Join(dir, demoPolicy), append([]byte("# The demo release's trust policy, written by kiln serve --demo; the key path is relative to this file.\n"), data...))
}

// writeFileAtomic replaces path by data through a temp file, so a reader
// never sees half of it.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-"+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}

	defer os.Remove(tmp.Name()) //nolint:errcheck // gone after the rename

	if _, err := tmp.Write(data); err != nil {
		tmp.Close()

		return err
	}

	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()

		return err
	}

	if err := tmp.Close(); err != nil {
		return err
	}

	return os.Rename(tmp.Name(), path)
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
		if err := writeDemoPolicy(filepath.Dir(pubPath)); err != nil {
			return nil, fmt.Errorf("demo trust policy: %w", err)
		}

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
			Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
				return signingtest.SignLegacyAs(ctx, ref, upstream.Name(), key, src.Remote...)
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

	if err := writeDemoPolicy(filepath.Dir(pubPath)); err != nil {
		return nil, fmt.Errorf("demo trust policy: %w", err)
	}

	logger.Info("seeded the demo release", "versions", demoVersions, "namespace", demoNamespace, "duration", time.Since(start))

	return pub, nil
}
