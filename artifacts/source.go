package artifacts

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/internal/regerr"
	"github.com/kiln-dev/kiln/release"
)

// ErrNotMirrored is returned for a repository or tag the source does not hold.
var ErrNotMirrored = errors.New("not in the mirror")

// Source is a registry holding Talos releases under mirror paths (see
// package release), below an optional namespace: release.Mirror's
// Registry and Namespace, whose Repo and Path it answers with.
type Source struct {
	// Mirror is where kiln reads from: the registry (name.Insecure for
	// plain HTTP) and the namespace, e.g. a Harbor project.
	release.Mirror
	// Remote carries transport, auth and TLS settings.
	Remote []remote.Option
	// PublicHost is the registry as clients must name it in references
	// (the "ref" of catalog entries): kiln's own host for the embedded
	// registry, else the external registry's host.
	PublicHost string
	// Blobs, when set, opens blobs of the registry's storage directly
	// (the embedded registry's): readers that verify digests themselves
	// may take them from there instead of through /v2/.
	Blobs BlobOpener
}

// BlobOpener opens a stored blob by digest; a blob it does not hold is an
// error matching fs.ErrNotExist. The bytes are not verified.
type BlobOpener interface {
	OpenBlob(d v1.Hash) (*os.File, error)
}

// PublicRef is how a client names a mirror path and tag, e.g.
// "10.0.0.5:8080/siderolabs/gvisor:20240826.0".
func (s *Source) PublicRef(path, tag string) string {
	return s.PublicHost + "/" + s.Join(path) + ":" + tag
}

func (s *Source) opts(ctx context.Context) []remote.Option {
	return append([]remote.Option{remote.WithContext(ctx)}, s.Remote...)
}

// Tags lists a repository's tags; a repository the registry does not know
// has none.
func (s *Source) Tags(ctx context.Context, path string) ([]string, error) {
	repo, err := s.Repo(path)
	if err != nil {
		return nil, err
	}

	tags, err := remote.List(repo, s.opts(ctx)...)
	if regerr.IsNotFound(err) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("list tags of %s: %w", repo, err)
	}

	return tags, nil
}

// Resolve returns the digest a tag points at now.
func (s *Source) Resolve(ctx context.Context, path, tag string) (name.Digest, error) {
	repo, err := s.Repo(path)
	if err != nil {
		return name.Digest{}, err
	}

	desc, err := remote.Head(repo.Tag(tag), s.opts(ctx)...)
	if regerr.IsNotFound(err) {
		return name.Digest{}, fmt.Errorf("%s:%s: %w", path, tag, ErrNotMirrored)
	}

	if err != nil {
		return name.Digest{}, fmt.Errorf("resolve %s:%s: %w", repo, tag, err)
	}

	return repo.Digest(desc.Digest.String()), nil
}

// Image returns the image at a digest; for an index, the linux/<arch>
// child.
func (s *Source) Image(ctx context.Context, ref name.Digest, arch string) (v1.Image, error) {
	opts := append(s.opts(ctx), remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}))

	img, err := remote.Image(ref, opts...)
	if regerr.IsNotFound(err) {
		return nil, fmt.Errorf("%s: %w", ref, ErrNotMirrored)
	}

	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", ref, err)
	}

	return img, nil
}
