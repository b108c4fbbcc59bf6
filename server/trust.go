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
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/signing"
)

// newVerifier returns the verifier of the trust policy: the configured file,
// with the demo rule first in demo mode. With no policy at all nothing is
// trusted: kiln never uses an artifact whose signature it has not checked.
//
// remoteOpts reach the registry the verified images are in (and so their
// signatures): the source's options for serving, plain HTTP for an import.
// rootSource holds the Sigstore trusted root that came with the mirror
// (policy rules with `trustedRoot: mirror`): the registry kiln serves from,
// or the layout it imports; it is read again (at most every
// signing.MirrorRootRefresh once found), so a root mirrored in later is
// used, and checked against the policy's TUF root before use.
func newVerifier(cfg Config, remoteOpts []remote.Option, rootSource mirror.Endpoint, demoKey []byte, logger *slog.Logger) (artifacts.Verifier, error) {
	var rules []any

	var tufRoot string

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
			Rules   []any  `yaml:"rules"`
			TUFRoot string `yaml:"tufRoot"`
		}

		if err := yaml.Unmarshal(data, &file); err != nil {
			return nil, fmt.Errorf("trust policy %s: %w", cfg.TrustPolicy, err)
		}

		rules = append(rules, file.Rules...)
		tufRoot = file.TUFRoot
		baseDir = filepath.Dir(cfg.TrustPolicy)
	}

	if len(rules) == 0 {
		logger.Warn("no trust policy: every artifact will be refused until --trust-policy is set")

		return denyAll{}, nil
	}

	doc := map[string]any{"rules": rules}
	if tufRoot != "" {
		doc["tufRoot"] = tufRoot
	}

	data, err := yaml.Marshal(doc)
	if err != nil {
		return nil, fmt.Errorf("trust policy: %w", err)
	}

	policy, err := signing.ParsePolicy(data, baseDir)
	if err != nil {
		return nil, fmt.Errorf("trust policy %s: %w", cfg.TrustPolicy, err)
	}

	vopts := []signing.Option{signing.WithRemoteOptions(remoteOpts...), signing.WithLogger(logger)}
	if rootSource != nil {
		vopts = append(vopts, signing.WithMirrorRoot(func(ctx context.Context) (*signing.CarriedRoot, error) {
			tr, err := mirror.ReadTrustedRoot(ctx, rootSource)
			if err != nil || tr == nil {
				return nil, err
			}

			return signing.ParseCarriedRoot(tr.JSON, tr.TUF)
		}))
	}

	v, err := signing.NewVerifier(policy, vopts...)
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
