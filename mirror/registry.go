package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/kiln-dev/kiln/internal/regerr"
)

// registryStore reads and writes a registry through ggcr's remote package.
type registryStore struct {
	r Registry
}

var (
	_ source      = registryStore{}
	_ destination = registryStore{}
)

func (s registryStore) opts(ctx context.Context) []remote.Option {
	return append(append([]remote.Option{}, s.r.Options...), remote.WithContext(ctx))
}

func (s registryStore) ref(repo, ref string) (name.Reference, error) {
	rp, err := s.r.repo(repo)
	if err != nil {
		return nil, err
	}

	if strings.HasPrefix(ref, "sha256:") {
		return rp.Digest(ref), nil
	}

	return rp.Tag(ref), nil
}

func (s registryStore) manifest(ctx context.Context, repo, ref string) (manifestData, error) {
	r, err := s.ref(repo, ref)
	if err != nil {
		return manifestData{}, err
	}

	desc, err := remote.Get(r, s.opts(ctx)...)
	if err != nil {
		if regerr.IsNotFound(err) {
			return manifestData{}, fmt.Errorf("%s: %w", r, ErrNotFound)
		}

		return manifestData{}, fmt.Errorf("%s: %w", r, err)
	}

	return manifestData{Raw: desc.Manifest, MediaType: desc.MediaType, Digest: desc.Digest}, nil
}

func (s registryStore) blob(ctx context.Context, repo string, d v1.Hash) (io.ReadCloser, error) {
	rp, err := s.r.repo(repo)
	if err != nil {
		return nil, err
	}

	l, err := remote.Layer(rp.Digest(d.String()), s.opts(ctx)...)
	if err != nil {
		return nil, fmt.Errorf("blob %s@%s: %w", rp, d, err)
	}

	rc, err := l.Compressed() // ggcr checks the digest at EOF
	if err != nil {
		if regerr.IsNotFound(err) {
			return nil, fmt.Errorf("blob %s@%s: %w", rp, d, ErrNotFound)
		}

		return nil, fmt.Errorf("blob %s@%s: %w", rp, d, err)
	}

	return rc, nil
}

func (s registryStore) referrers(ctx context.Context, repo string, d v1.Hash) ([]v1.Descriptor, error) {
	rp, err := s.r.repo(repo)
	if err != nil {
		return nil, err
	}

	idx, err := remote.Referrers(rp.Digest(d.String()), s.opts(ctx)...)
	if err != nil {
		if regerr.IsNotFound(err) {
			return nil, nil
		}

		return nil, fmt.Errorf("referrers of %s@%s: %w", rp, d, err)
	}

	im, err := idx.IndexManifest()
	if err != nil {
		return nil, fmt.Errorf("referrers of %s@%s: %w", rp, d, err)
	}

	return im.Manifests, nil
}

func (s registryStore) reference(repo string, d v1.Hash) (name.Digest, bool) {
	rp, err := s.r.repo(repo)
	if err != nil {
		return name.Digest{}, false
	}

	return rp.Digest(d.String()), true
}

func (s registryStore) hasBlob(ctx context.Context, repo string, d v1.Hash) (bool, error) {
	rp, err := s.r.repo(repo)
	if err != nil {
		return false, err
	}

	l, err := remote.Layer(rp.Digest(d.String()), s.opts(ctx)...)
	if err != nil {
		return false, err
	}

	ex, ok := l.(interface{ Exists() (bool, error) })
	if !ok {
		return false, nil
	}

	found, err := ex.Exists()
	if err != nil {
		if regerr.IsNotFound(err) {
			return false, nil
		}

		return false, fmt.Errorf("blob %s@%s: %w", rp, d, err)
	}

	return found, nil
}

func (s registryStore) putBlob(ctx context.Context, repo string, desc v1.Descriptor, open opener) error {
	rp, err := s.r.repo(repo)
	if err != nil {
		return err
	}

	if err := remote.WriteLayer(rp, &streamLayer{desc: desc, open: open}, s.opts(ctx)...); err != nil {
		return fmt.Errorf("blob %s@%s: %w", rp, desc.Digest, err)
	}

	return nil
}

func (s registryStore) hasManifest(ctx context.Context, repo string, d v1.Hash) (bool, error) {
	r, err := s.ref(repo, d.String())
	if err != nil {
		return false, err
	}

	if _, err := remote.Head(r, s.opts(ctx)...); err != nil {
		if regerr.IsNotFound(err) {
			return false, nil
		}

		return false, fmt.Errorf("%s: %w", r, err)
	}

	return true, nil
}

func (s registryStore) putManifest(ctx context.Context, repo string, m manifestData, tag string, _ bool) (bool, error) {
	ref := m.Digest.String()
	if tag != "" {
		ref = tag
	}

	r, err := s.ref(repo, ref)
	if err != nil {
		return false, err
	}

	desc, err := remote.Head(r, s.opts(ctx)...)
	if err == nil && desc.Digest == m.Digest {
		return false, nil
	}

	if err != nil && !regerr.IsNotFound(err) {
		return false, fmt.Errorf("%s: %w", r, err)
	}

	// ggcr also maintains the referrers fallback tag when the registry has
	// no referrers API and m has a subject.
	if err := remote.Put(r, rawManifest{m}, s.opts(ctx)...); err != nil {
		return false, fmt.Errorf("manifest %s (%s): %w", r, m.Digest, err)
	}

	return true, nil
}

func (registryStore) commit(context.Context) error { return nil }
func (registryStore) Close() error                 { return nil }

// rawManifest is a remote.Taggable that sends the manifest bytes unchanged.
type rawManifest struct{ m manifestData }

func (r rawManifest) RawManifest() ([]byte, error)        { return r.m.Raw, nil }
func (r rawManifest) MediaType() (types.MediaType, error) { return r.m.MediaType, nil }

// streamLayer is a v1.Layer over a blob stream, for remote.WriteLayer.
type streamLayer struct {
	desc v1.Descriptor
	open opener
}

var _ v1.Layer = (*streamLayer)(nil)

func (l *streamLayer) Digest() (v1.Hash, error) { return l.desc.Digest, nil }
func (l *streamLayer) DiffID() (v1.Hash, error) {
	return v1.Hash{}, errors.New("diff id of a copied blob: not known")
}
func (l *streamLayer) Compressed() (io.ReadCloser, error) { return l.open() }
func (l *streamLayer) Uncompressed() (io.ReadCloser, error) {
	return nil, errors.New("copied blob: not uncompressed")
}
func (l *streamLayer) Size() (int64, error) { return l.desc.Size, nil }
func (l *streamLayer) MediaType() (types.MediaType, error) {
	if l.desc.MediaType == "" {
		return types.OCILayer, nil
	}

	return l.desc.MediaType, nil
}
