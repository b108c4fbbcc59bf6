package server

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/signing"
)

// importLayout copies every tagged image of an OCI image-layout directory
// (as `kiln mirror --to oci:DIR` writes it) with its signatures into the
// embedded registry, verifying each image first. It is incremental: what
// the registry already has is skipped, so a restart copies nothing. It
// returns, for each Talos version the layout holds, the digests of its
// release images by mirror path: what its release lock must record.
func importLayout(ctx context.Context, dir string, src *artifacts.Source, v signing.Checker, logger *slog.Logger) (map[string]map[string]string, error) {
	refs, err := mirror.TaggedImages(ctx, mirror.Layout{Dir: dir})
	if err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}

	if len(refs) == 0 {
		return nil, fmt.Errorf("OCI layout %s holds no tagged images", dir)
	}

	plan, err := mirror.NewPlan(ctx, mirror.Layout{Dir: dir}, mirror.Selection{Images: refs})
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}

	dst := mirror.Registry{Mirror: src.Mirror, Options: src.Remote}

	// The Sigstore trusted root that came with the layout goes along, so
	// that the verifier of what is served finds it in the registry.
	root, err := mirror.ReadTrustedRoot(ctx, mirror.Layout{Dir: dir})
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}

	stats, err := mirror.Copy(ctx, plan, dst, mirror.Options{Verifier: v, Logger: logger, TrustedRoot: root})
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}

	logger.Info("imported the OCI layout into the embedded registry", "dir", dir, "stats", stats.String())

	return plan.ReleaseDigests(), nil
}
