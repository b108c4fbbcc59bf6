package imagecache

import (
	"bufio"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/artifacts"
)

// zeroTime disables Last-Modified in http.ServeContent.
var zeroTime time.Time

// MirrorResolver fetches upstream references from kiln's mirror: ghcr.io/x
// from <mirror>/x, registry.k8s.io/x from <mirror>/registry.k8s.io/x (see
// release.Mirror.Ref).
type MirrorResolver struct {
	Source *artifacts.Source
}

var _ Resolver = MirrorResolver{}

// Resolve implements Resolver.
func (m MirrorResolver) Resolve(ref string) (name.Reference, []remote.Option, error) {
	r, err := m.Source.Ref(ref)
	if err != nil {
		return nil, nil, err
	}

	return r, m.Source.Remote, nil
}

// Blobs implements LocalBlobs: the mirror's storage, when kiln holds it.
func (m MirrorResolver) Blobs() artifacts.BlobOpener { return m.Source.Blobs }

// DirectResolver fetches each reference from where it names.
type DirectResolver struct {
	NameOptions []name.Option // e.g. name.Insecure (talosctl --insecure)
	Remote      []remote.Option
	// LocalBlobs, when set, is tried for every blob before the registry.
	LocalBlobs artifacts.BlobOpener
}

// Blobs implements LocalBlobs.
func (d DirectResolver) Blobs() artifacts.BlobOpener { return d.LocalBlobs }

// LocalBlobs is a Resolver that can also open blobs from local storage:
// Write reads them from there, verifying each against its digest, and
// falls back to the registry for blobs the storage does not hold.
type LocalBlobs interface {
	Blobs() artifacts.BlobOpener
}

var _ Resolver = DirectResolver{}

// Resolve implements Resolver.
func (d DirectResolver) Resolve(ref string) (name.Reference, []remote.Option, error) {
	r, err := name.ParseReference(ref, d.NameOptions...)
	if err != nil {
		return nil, nil, fmt.Errorf("reference %q: %w", ref, err)
	}

	return r, d.Remote, nil
}

// ReadImages reads an image list as talosctl does for --images -: one
// reference per line; blank lines and "#" comments are skipped.
func ReadImages(r io.Reader) ([]string, error) {
	var refs []string

	s := bufio.NewScanner(r)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}

		refs = append(refs, line)
	}

	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("image list: %w", err)
	}

	return refs, nil
}
