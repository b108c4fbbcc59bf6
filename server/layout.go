package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/release"
)

// importLayout copies every tagged image of an OCI image-layout directory
// (as `kiln mirror --to oci:DIR` writes it) with its signatures into the
// embedded registry, verifying each image first. It is incremental: what
// the registry already has is skipped, so a restart copies nothing. It
// returns, for each Talos version the layout holds, the digests of its
// release images by mirror path: what its release lock must record.
func importLayout(ctx context.Context, dir string, src *artifacts.Source, v artifacts.Verifier, logger *slog.Logger) (map[string]map[string]string, error) {
	refs, err := layoutRefs(dir)
	if err != nil {
		return nil, err
	}

	if len(refs) == 0 {
		return nil, fmt.Errorf("OCI layout %s holds no tagged images", dir)
	}

	plan, err := mirror.NewPlan(ctx, mirror.Layout{Dir: dir}, mirror.Selection{Images: refs})
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", dir, err)
	}

	dst := mirror.Registry{Registry: src.Registry, Namespace: src.Namespace, Options: src.Remote}

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

// layoutRefs lists the upstream references of the layout's tagged images,
// signature tags left out (they travel with their images).
func layoutRefs(dir string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(dir, "index.json"))
	if err != nil {
		return nil, fmt.Errorf("OCI layout: %w", err)
	}

	var index struct {
		Manifests []struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"manifests"`
	}

	if err := json.Unmarshal(data, &index); err != nil {
		return nil, fmt.Errorf("OCI layout %s/index.json: %w", dir, err)
	}

	var refs []string

	for _, m := range index.Manifests {
		pathTag := m.Annotations["org.opencontainers.image.ref.name"]

		i := strings.LastIndex(pathTag, ":")
		if i <= 0 || strings.HasPrefix(pathTag[i+1:], "sha256-") || pathTag[:i] == mirror.TrustedRootRepository {
			continue // signatures travel with their images, the trusted root apart
		}

		refs = append(refs, release.UpstreamPath(pathTag[:i])+":"+pathTag[i+1:])
	}

	slices.Sort(refs)

	return slices.Compact(refs), nil
}
