package mirror

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// VerifyError is a signature refusal: Copy returns it before writing
// anything of the image.
type VerifyError struct {
	Item *Item
	Err  error
}

func (e *VerifyError) Error() string {
	return fmt.Sprintf("signature verification of %s %s (digest %s) failed: %v", e.Item.Kind, e.Item.Repo, e.Item.Digest, e.Err)
}

func (e *VerifyError) Unwrap() error { return e.Err }

// verifyRefs gives each item to verify a registry reference the Verifier
// can read. A registry source is used directly. A layout or archive source
// is served read-only on a loopback port for the duration of Copy: the
// plan's manifests and tags are loaded into an in-memory registry (with the
// referrers API) whose blobs are read from the source on demand.
type verifyRefs struct {
	src   source
	reg   *name.Registry
	srv   *http.Server
	sizes map[v1.Hash]int64
}

func newVerifyRefs(ctx context.Context, plan *Plan, src source) (*verifyRefs, error) {
	v := &verifyRefs{src: src, sizes: map[v1.Hash]int64{}}

	needServer := false

	for _, it := range plan.Items {
		if _, ok := src.reference(it.Repo, it.Digest); !ok {
			needServer = true
		}

		for _, b := range it.Blobs {
			v.sizes[b.Digest] = b.Size
		}
	}

	if !needServer {
		return v, nil
	}

	var lc net.ListenConfig

	ln, err := lc.Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("verification registry: %w", err)
	}

	v.srv = &http.Server{
		Handler: registry.New(
			registry.WithBlobHandler(sourceBlobs{v}),
			registry.WithReferrersSupport(true),
			registry.Logger(log.New(io.Discard, "", 0)),
		),
		ReadHeaderTimeout: 10 * time.Second,
	}

	go v.srv.Serve(ln) //nolint:errcheck // ends with Close in close

	reg, err := name.NewRegistry(ln.Addr().String(), name.Insecure)
	if err != nil {
		v.close()
		return nil, err
	}

	v.reg = &reg

	// Manifests in dependency order: children, subjects, then referrers.
	for _, it := range plan.Items {
		for _, m := range it.manifests {
			if err := remote.Put(reg.Repo(it.Repo).Digest(m.Digest.String()), rawManifest{m}, remote.WithContext(ctx)); err != nil {
				v.close()
				return nil, fmt.Errorf("verification registry: %s: %w", it, err)
			}
		}

		for _, t := range it.Tags {
			if err := remote.Put(reg.Repo(it.Repo).Tag(t), rawManifest{it.root()}, remote.WithContext(ctx)); err != nil {
				v.close()
				return nil, fmt.Errorf("verification registry: %s: %w", it, err)
			}
		}
	}

	return v, nil
}

func (v *verifyRefs) reference(it *Item) name.Digest {
	if ref, ok := v.src.reference(it.Repo, it.Digest); ok {
		return ref
	}

	return v.reg.Repo(it.Repo).Digest(it.Digest.String())
}

func (v *verifyRefs) close() {
	if v.srv != nil {
		v.srv.Close() //nolint:errcheck // a loopback server with nothing to flush
	}
}

// sourceBlobs serves the source's blobs to the verification registry.
type sourceBlobs struct{ v *verifyRefs }

func (s sourceBlobs) Get(ctx context.Context, repo string, h v1.Hash) (io.ReadCloser, error) {
	rc, err := s.v.src.blob(ctx, repo, h)
	if errors.Is(err, ErrNotFound) {
		return nil, registry.ErrNotFound
	}

	return rc, err
}

func (s sourceBlobs) Stat(_ context.Context, _ string, h v1.Hash) (int64, error) {
	if n, ok := s.v.sizes[h]; ok {
		return n, nil
	}

	return 0, registry.ErrNotFound
}
