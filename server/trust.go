package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/signing"
)

// newVerifier returns the verifier of the trust policy: the configured file,
// with the demo rule first in demo mode. With no policy at all nothing is
// trusted: kiln never uses an artifact whose signature it has not checked.
//
// remoteOpts reach the registry the verified images are in (and so their
// signatures): the source's options for serving, plain HTTP for an import.
func newVerifier(cfg Config, remoteOpts []remote.Option, demoKey []byte, logger *slog.Logger) (artifacts.Verifier, error) {
	var rules []any

	baseDir := "."

	if demoKey != nil {
		rules = append(rules, demoRule(map[string]any{"pem": string(demoKey)}))
	}

	if cfg.TrustPolicy != "" {
		data, err := os.ReadFile(cfg.TrustPolicy)
		if err != nil {
			return nil, fmt.Errorf("trust policy: %w", err)
		}

		var file struct {
			Rules []any `yaml:"rules"`
		}

		if err := yaml.Unmarshal(data, &file); err != nil {
			return nil, fmt.Errorf("trust policy %s: %w", cfg.TrustPolicy, err)
		}

		rules = append(rules, file.Rules...)
		baseDir = filepath.Dir(cfg.TrustPolicy)
	}

	if len(rules) == 0 {
		logger.Warn("no trust policy: every artifact will be refused until --trust-policy is set")

		return denyAll{}, nil
	}

	data, err := yaml.Marshal(map[string]any{"rules": rules})
	if err != nil {
		return nil, fmt.Errorf("trust policy: %w", err)
	}

	policy, err := signing.ParsePolicy(data, baseDir)
	if err != nil {
		return nil, fmt.Errorf("trust policy %s: %w", cfg.TrustPolicy, err)
	}

	v, err := signing.NewVerifier(policy, signing.WithRemoteOptions(remoteOpts...), signing.WithLogger(logger))
	if err != nil {
		return nil, fmt.Errorf("trust policy: %w", err)
	}

	return imagecache.VerifierFunc(v.Check), nil
}

type denyAll struct{}

func (denyAll) Verify(_ context.Context, ref name.Digest) error {
	return &signing.RefusalError{
		Image:  ref.Context().String(),
		Digest: ref.DigestStr(),
		Reason: "no trust policy is configured (set --trust-policy)",
		Err:    errors.New("no trust policy"),
	}
}
