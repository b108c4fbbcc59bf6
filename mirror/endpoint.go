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

	"github.com/kiln-dev/kiln/release"
)

// ErrNotFound is wrapped by errors about a tag, manifest or blob the source does not have.
var ErrNotFound = errors.New("not found")

// An Endpoint is where a release is copied from or to: a Registry, a Layout
// directory or an Archive file. Repository paths inside an endpoint follow
// release.MirrorPath ("siderolabs/imager", "registry.k8s.io/kube-apiserver").
type Endpoint interface {
	fmt.Stringer

	openSource(ctx context.Context) (source, error)
	openDestination(ctx context.Context) (destination, error)
}

// manifestData is one manifest exactly as stored: its bytes are never re-encoded.
type manifestData struct {
	Raw       []byte
	MediaType types.MediaType
	Digest    v1.Hash
}

func (m manifestData) descriptor() v1.Descriptor {
	return v1.Descriptor{MediaType: m.MediaType, Digest: m.Digest, Size: int64(len(m.Raw))}
}

// opener opens a blob stream; it may be called again to retry. The caller closes the reader.
type opener func() (io.ReadCloser, error)

// source reads from an endpoint. Methods are safe for concurrent use.
type source interface {
	// manifest returns the manifest tagged ref ("v1.13.0") or with digest ref ("sha256:...")
	// in repo; an error wrapping ErrNotFound when there is none.
	manifest(ctx context.Context, repo, ref string) (manifestData, error)
	// blob opens a blob of repo; the caller closes it.
	blob(ctx context.Context, repo string, d v1.Hash) (io.ReadCloser, error)
	// referrers lists the manifests whose subject is repo@d (OCI referrers,
	// including registries' referrers fallback tag sha256-<hex>).
	referrers(ctx context.Context, repo string, d v1.Hash) ([]v1.Descriptor, error)
	// reference is repo@d as a registry reference the Verifier can check,
	// false when the endpoint is not a registry.
	reference(repo string, d v1.Hash) (name.Digest, bool)
	Close() error
}

// destination writes to an endpoint. Methods are safe for concurrent use.
type destination interface {
	hasBlob(ctx context.Context, repo string, d v1.Hash) (bool, error)
	// putBlob stores the blob desc, read from open, and checks its digest;
	// on error nothing of it is visible.
	putBlob(ctx context.Context, repo string, desc v1.Descriptor, open opener) error
	hasManifest(ctx context.Context, repo string, d v1.Hash) (bool, error)
	// putManifest stores m in repo, under tag if tag is not empty. root
	// marks a manifest that must be findable on its own (a tagged image, an
	// image pulled by digest, a referrer), as opposed to a child of an index.
	// Everything m references must already be stored. It does nothing
	// (false) when the destination already has it.
	putManifest(ctx context.Context, repo string, m manifestData, tag string, root bool) (bool, error)
	// commit makes everything written visible (layout index.json, archive
	// rename). Without commit, files may have been added but no new
	// reference to them is visible.
	commit(ctx context.Context) error
	Close() error
}

// Registry is an OCI registry endpoint: repositories live at
// <Registry>/<Namespace>/<mirror path> (release.Mirror).
type Registry struct {
	release.Mirror
	// Options carry TLS, authentication and transport settings.
	Options []remote.Option
	// Upstream maps mirror paths back onto the public registries: a path
	// whose first element is a host ("registry.k8s.io/kube-apiserver") is
	// read from that host, any other from ghcr.io. Registry and Namespace
	// are then ignored. Use it to mirror from the internet. Registry
	// ghcr.io without a Namespace maps paths the same way.
	Upstream bool
}

// Upstream is the public registries as a source (ghcr.io, registry.k8s.io, ...).
func Upstream(opts ...remote.Option) Registry {
	return Registry{Upstream: true, Options: opts}
}

func (r Registry) String() string {
	if r.Upstream {
		return "upstream registries (ghcr.io, registry.k8s.io, ...)"
	}

	return r.Mirror.String()
}

// upstreamLayout reports whether r holds images where upstream does:
// Upstream, or ghcr.io itself without a namespace, which is where Talos's
// own images are but not registry.k8s.io's. A namespace on ghcr.io
// ("ghcr.io/my-org") is someone's mirror, laid out like any other.
func (r Registry) upstreamLayout() bool {
	return r.Upstream || (strings.Trim(r.Namespace, "/") == "" && r.Registry.RegistryStr() == "ghcr.io")
}

// repo is the registry repository of a mirror path.
func (r Registry) repo(path string) (name.Repository, error) {
	if r.upstreamLayout() {
		return release.UpstreamRepo(path)
	}

	return r.Mirror.Repo(path)
}

func (r Registry) openSource(context.Context) (source, error)           { return registryStore{r}, nil }
func (r Registry) openDestination(context.Context) (destination, error) { return registryStore{r}, nil }

// Layout is an OCI image-layout directory (see README.md for how
// repositories and tags are recorded in index.json).
type Layout struct {
	Dir string
}

func (l Layout) String() string { return "oci:" + l.Dir }

// Archive is a single uncompressed tar file holding an OCI image layout
// (see README.md). It is written as <Path>.partial and renamed when complete.
type Archive struct {
	Path string
}

func (a Archive) String() string { return "archive:" + a.Path }

// ParseEndpoint reads an endpoint from the command line:
//
//	oci:<dir>                 an OCI image layout directory
//	archive:<file>, <file>.tar  an archive file
//	upstream                  the public registries (ghcr.io, registry.k8s.io, ...)
//	<host[:port]>[/<namespace>]  a registry
//
// opts apply to registries.
func ParseEndpoint(s string, opts ...remote.Option) (Endpoint, error) {
	switch {
	case s == "":
		return nil, errors.New("empty endpoint")
	case strings.HasPrefix(s, "oci:"):
		return Layout{Dir: strings.TrimPrefix(s, "oci:")}, nil
	case strings.HasPrefix(s, "archive:"):
		return Archive{Path: strings.TrimPrefix(s, "archive:")}, nil
	case strings.HasSuffix(s, ".tar"):
		return Archive{Path: s}, nil
	case s == "upstream":
		return Upstream(opts...), nil
	}

	host, ns, _ := strings.Cut(s, "/")

	reg, err := name.NewRegistry(host)
	if err != nil {
		return nil, fmt.Errorf("endpoint %q: %w", s, err)
	}

	return Registry{Mirror: release.Mirror{Registry: reg, Namespace: ns}, Options: opts}, nil
}
