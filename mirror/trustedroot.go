package mirror

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/signing"
)

// The Sigstore trusted root kiln mirror carries is an OCI artifact in every
// kind of endpoint, so it travels through registries, layouts and archives
// like the images: repository TrustedRootRepository (under the registry's
// namespace), tag TrustedRootTag, an image manifest with the empty config
// and two layers, trusted_root.json and the TUF metadata that vouches for
// it (see signing.CarriedRoot). It is not signed by cosign: the far side
// checks it against a TUF root instead.
const (
	TrustedRootRepository = "kiln/sigstore-trusted-root"
	TrustedRootTag        = "latest"

	TrustedRootArtifactType = "application/vnd.dev.kiln.sigstore-trusted-root.v1+json"
	TrustedRootMediaType    = "application/vnd.dev.sigstore.trustedroot.v0.1+json"
	TUFEvidenceMediaType    = "application/vnd.dev.kiln.tuf-evidence.v1+json"

	emptyConfigMediaType = "application/vnd.oci.empty.v1+json"
)

// maxTrustedRootBlob bounds each blob of the artifact read into memory.
const maxTrustedRootBlob = 4 << 20

// TrustedRoot is the Sigstore trusted root carried with a mirror: the
// trusted_root.json bytes and the TUF metadata document that vouches for
// them, both opaque to this package.
type TrustedRoot struct {
	JSON []byte // trusted_root.json
	TUF  []byte // signing.CarriedRoot.TUFJSON
}

type trustedRootManifest struct {
	SchemaVersion int             `json:"schemaVersion"`
	MediaType     types.MediaType `json:"mediaType"`
	ArtifactType  string          `json:"artifactType"`
	Config        v1.Descriptor   `json:"config"`
	Layers        []v1.Descriptor `json:"layers"`
}

func blobDescriptor(mt types.MediaType, b []byte, title string) v1.Descriptor {
	h := sha256.Sum256(b)
	d := v1.Descriptor{MediaType: mt, Size: int64(len(b)), Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h[:])}}

	if title != "" {
		d.Annotations = map[string]string{"org.opencontainers.image.title": title}
	}

	return d
}

// artifact returns the manifest and its blobs by digest.
func (tr *TrustedRoot) artifact() (manifestData, map[v1.Hash][]byte, error) {
	empty := []byte("{}")
	blobs := map[v1.Hash][]byte{}
	m := trustedRootManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		ArtifactType:  TrustedRootArtifactType,
		Config:        blobDescriptor(emptyConfigMediaType, empty, ""),
		Layers: []v1.Descriptor{
			blobDescriptor(TrustedRootMediaType, tr.JSON, "trusted_root.json"),
			blobDescriptor(TUFEvidenceMediaType, tr.TUF, "tuf-metadata.json"),
		},
	}
	m.Config.Data = nil
	blobs[m.Config.Digest] = empty
	blobs[m.Layers[0].Digest] = tr.JSON
	blobs[m.Layers[1].Digest] = tr.TUF

	raw, err := json.Marshal(m)
	if err != nil {
		return manifestData{}, nil, err
	}

	h := sha256.Sum256(raw)

	return manifestData{Raw: raw, MediaType: types.OCIManifestSchema1, Digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h[:])}}, blobs, nil
}

// writeTrustedRoot stores tr in dst and tags it, skipping what dst has.
func writeTrustedRoot(ctx context.Context, dst destination, tr *TrustedRoot) (bool, error) {
	m, blobs, err := tr.artifact()
	if err != nil {
		return false, err
	}

	for d, b := range blobs {
		has, err := dst.hasBlob(ctx, TrustedRootRepository, d)
		if err != nil {
			return false, fmt.Errorf("trusted root: %w", err)
		}

		if has {
			continue
		}

		desc := v1.Descriptor{Digest: d, Size: int64(len(b))}
		if err := dst.putBlob(ctx, TrustedRootRepository, desc, func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(b)), nil
		}); err != nil {
			return false, fmt.Errorf("trusted root: %w", err)
		}
	}

	wrote, err := dst.putManifest(ctx, TrustedRootRepository, m, TrustedRootTag, true)
	if err != nil {
		return false, fmt.Errorf("trusted root: %w", err)
	}

	return wrote, nil
}

// ReadTrustedRoot reads the Sigstore trusted root an endpoint carries (as
// written by Copy with Options.TrustedRoot); nil and no error when it has
// none. Each blob's digest and size is checked. Do not call it on the
// Upstream registries: it would ask ghcr.io.
func ReadTrustedRoot(ctx context.Context, ep Endpoint) (*TrustedRoot, error) {
	src, err := ep.openSource(ctx)
	if err != nil {
		return nil, err
	}
	defer src.Close()

	m, err := src.manifest(ctx, TrustedRootRepository, TrustedRootTag)
	if errors.Is(err, ErrNotFound) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("trusted root in %s: %w", ep, err)
	}

	var man trustedRootManifest
	if err := json.Unmarshal(m.Raw, &man); err != nil {
		return nil, fmt.Errorf("trusted root in %s: manifest: %w", ep, err)
	}

	if man.ArtifactType != TrustedRootArtifactType {
		return nil, fmt.Errorf("trusted root in %s: artifact type %q, want %q", ep, man.ArtifactType, TrustedRootArtifactType)
	}

	tr := &TrustedRoot{}

	for _, l := range man.Layers {
		var into *[]byte

		switch l.MediaType {
		case TrustedRootMediaType:
			into = &tr.JSON
		case TUFEvidenceMediaType:
			into = &tr.TUF
		default:
			continue
		}

		if l.Size < 0 || l.Size > maxTrustedRootBlob {
			return nil, fmt.Errorf("trusted root in %s: layer %s of %d bytes", ep, l.Digest, l.Size)
		}

		b, err := readBlob(ctx, src, l)
		if err != nil {
			return nil, fmt.Errorf("trusted root in %s: %w", ep, err)
		}

		*into = b
	}

	if tr.JSON == nil || tr.TUF == nil {
		return nil, fmt.Errorf("trusted root in %s: trusted_root.json or its TUF metadata is missing", ep)
	}

	return tr, nil
}

func readBlob(ctx context.Context, src source, d v1.Descriptor) ([]byte, error) {
	rc, err := src.blob(ctx, TrustedRootRepository, d.Digest)
	if err != nil {
		return nil, err
	}
	defer rc.Close()

	var buf bytes.Buffer
	if err := copyVerified(&buf, rc, d.Digest, d.Size); err != nil {
		return nil, err
	}

	return buf.Bytes(), nil
}

// CarriedRoot returns a function reading the trusted root that came with
// the mirror at ep, for signing.WithMirrorRoot: nil (no error) when ep
// holds none.
func CarriedRoot(ep Endpoint) func(ctx context.Context) (*signing.CarriedRoot, error) {
	return func(ctx context.Context) (*signing.CarriedRoot, error) {
		tr, err := ReadTrustedRoot(ctx, ep)
		if err != nil || tr == nil {
			return nil, err
		}

		return signing.ParseCarriedRoot(tr.JSON, tr.TUF)
	}
}
