package registry

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem" // the driver registers itself by name
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sirupsen/logrus"
)

// catalogMaxEntries bounds the repositories in one /v2/_catalog page.
const catalogMaxEntries = 1000

// Embedded is the distribution registry over <dir>.
type Embedded struct {
	app *handlers.App
	dir string
}

// Option configures an Embedded registry.
type Option func(*configuration.Configuration)

// WithAccess puts /v2/ under a's rules. Without it the registry takes
// requests from anyone (tests, and the in-process use of its storage).
func WithAccess(a Access) Option {
	return func(cfg *configuration.Configuration) {
		cfg.Auth = configuration.Auth{accessControllerName: configuration.Parameters{"controller": a}}
	}
}

// NewEmbedded opens the registry stored under dir, creating it if needed.
//
// distribution logs through the process-wide logrus logger and offers no
// way to pass one in; kiln quietens it to warnings so that every blob request
// is not logged twice (kiln's own access log has them).
func NewEmbedded(ctx context.Context, dir string, opts ...Option) (e *Embedded, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("registry: create %s: %w", dir, err)
	}

	secret, err := httpSecret(dir)
	if err != nil {
		return nil, err
	}

	cfg := &configuration.Configuration{
		Storage: configuration.Storage{
			"filesystem": configuration.Parameters{"rootdirectory": dir},
			"delete":     configuration.Parameters{"enabled": true},
			"redirect":   configuration.Parameters{"disable": true},
		},
	}
	cfg.HTTP.Secret = secret
	// `kiln mirror --arch amd64` copies a multi-arch index unchanged (its
	// digest is what is signed) with only the amd64 children; the registry
	// must accept an index whose other children are absent.
	cfg.Validation.Manifests.Indexes.Platforms = "none"
	// A configuration built in code misses the defaults distribution's YAML
	// parser fills in: a catalog bound of 0 lists nothing and refuses any n.
	// 1000 is distribution's default and the page crane asks for; it bounds
	// one catalog response.
	cfg.Catalog.MaxEntries = catalogMaxEntries
	cfg.Log.Level = "warn"
	cfg.Log.AccessLog.Disabled = true

	for _, o := range opts {
		o(cfg)
	}

	logrus.SetLevel(logrus.WarnLevel)
	logrus.SetOutput(io.Discard)

	// NewApp reports configuration errors by panicking.
	defer func() {
		if p := recover(); p != nil {
			e, err = nil, fmt.Errorf("registry: %v", p)
		}
	}()

	return &Embedded{app: handlers.NewApp(ctx, cfg), dir: dir}, nil
}

// httpSecret keeps the secret that signs upload state across restarts, so an
// upload interrupted by a restart can be resumed.
func httpSecret(dir string) (string, error) {
	path := filepath.Join(dir, ".http-secret")

	data, err := os.ReadFile(path)
	if err == nil && len(data) > 0 {
		return string(data), nil
	}

	var b [32]byte

	_, _ = rand.Read(b[:]) //nolint:errcheck // crypto/rand.Read never fails

	secret := hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(secret), 0o600); err != nil {
		return "", fmt.Errorf("registry: write secret: %w", err)
	}

	return secret, nil
}

// ServeHTTP answers /v2/ requests.
func (e *Embedded) ServeHTTP(w http.ResponseWriter, r *http.Request) { e.app.ServeHTTP(w, r) }

// OpenBlob opens a blob in the registry's storage, where distribution's
// filesystem driver keeps it (docker/registry/v2/blobs/<alg>/<hex[:2]>/<hex>/data).
// It is what the registry would serve for the digest, unverified, as the
// registry serves it.
func (e *Embedded) OpenBlob(d v1.Hash) (*os.File, error) {
	if d.Algorithm != "sha256" || len(d.Hex) != 64 || strings.Trim(d.Hex, "0123456789abcdef") != "" {
		return nil, fmt.Errorf("blob %s: %w", d, fs.ErrNotExist)
	}

	return os.Open(filepath.Join(e.dir, "docker", "registry", "v2", "blobs", d.Algorithm, d.Hex[:2], d.Hex, "data"))
}

// Close stops the registry's background work.
func (e *Embedded) Close() error { return e.app.Shutdown() }
