package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/signing"
)

// newVerifier returns the checker of the trust policy: the configured file,
// with first's rules (the demo's) before its own. With no policy at all
// nothing is trusted: kiln never uses an artifact whose signature it has
// not checked.
//
// remoteOpts reach the registry the verified images are in (and so their
// signatures): the source's options for serving, plain HTTP for an import.
// rootSource holds the Sigstore trusted root that came with the mirror
// (policy rules with `trustedRoot: mirror`): the registry kiln serves from,
// or the layout it imports; it is read again (at most every
// signing.MirrorRootRefresh once found), so a root mirrored in later is
// used, and checked against the policy's TUF root before use.
func newVerifier(cfg Config, remoteOpts []remote.Option, rootSource mirror.Endpoint, first *signing.Policy, logger *slog.Logger) (signing.Checker, error) {
	var policy *signing.Policy

	if cfg.TrustPolicy != "" {
		p, err := signing.LoadPolicy(cfg.TrustPolicy)
		if err != nil {
			return nil, fmt.Errorf("trust policy: %w", err)
		}

		policy = p
	}

	if first != nil {
		p, err := policy.Prepend(first)
		if err != nil {
			return nil, fmt.Errorf("trust policy %s: %w", cfg.TrustPolicy, err)
		}

		policy = p
	}

	if policy == nil {
		logger.Warn("no trust policy: every artifact will be refused until --trust-policy is set")

		return signing.CheckFunc(denyAll), nil
	}

	vopts := []signing.Option{signing.WithRemoteOptions(remoteOpts...), signing.WithLogger(logger)}
	if rootSource != nil {
		vopts = append(vopts, signing.WithMirrorRoot(mirror.CarriedRoot(rootSource)))
	}

	v, err := signing.NewVerifier(policy, vopts...)
	if err != nil {
		return nil, fmt.Errorf("trust policy: %w", err)
	}

	return v, nil
}

// denyAll refuses every artifact: there is no trust policy.
func denyAll(_ context.Context, ref name.Digest) error {
	return &signing.RefusalError{
		Image:  ref.Context().String(),
		Digest: ref.DigestStr(),
		Reason: "no trust policy is configured (set --trust-policy)",
		Err:    errors.New("no trust policy"),
	}
}
