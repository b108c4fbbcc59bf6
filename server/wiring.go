package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/storage"
)

// embeddedHost names the embedded registry in references kiln resolves
// itself; requests to it never leave the process.
const embeddedHost = "kiln.internal"

// Run builds kiln from cfg and serves it until ctx ends.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("config: %w", err)
	}

	// Listen first: the address kiln tells clients (catalog refs into the
	// embedded registry) must be the bound one, also for port 0.
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}

	cfg = cfg.WithListener(lis.Addr(), logger)

	deps, err := Build(ctx, cfg, logger)
	if err != nil {
		lis.Close() //nolint:errcheck // already failing

		return err
	}

	srv, err := New(ctx, cfg, logger, deps)
	if err != nil {
		lis.Close() //nolint:errcheck // already failing

		for _, c := range deps.Closers {
			c() //nolint:errcheck // already failing
		}

		return err
	}

	return srv.Serve(ctx, lis)
}

// Build constructs the domain components cfg describes:
//
//  1. the schematic store under <data-dir>/schematics;
//  2. the embedded registry under <data-dir>/registry, unless an external
//     registry is configured;
//  3. the artifact source over that registry; in demo mode, the signed demo
//     release seeded into it when missing;
//  4. the verifier of the trust policy (with the demo key's rule in demo mode),
//     and the import of --oci-layout, verified, into the embedded registry;
//  5. the release manager over both;
//  6. the asset cache under <data-dir>/assets and the builder over all of it.
func Build(ctx context.Context, cfg Config, logger *slog.Logger) (deps Deps, err error) {
	unlock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return deps, err
	}

	defer func() {
		if err != nil {
			unlock() //nolint:errcheck // already failing
		}
	}()

	store, err := storage.NewFS(cfg.DataDir, logger)
	if err != nil {
		return deps, err
	}

	deps.Schematics = store

	src, embedded, err := newSource(ctx, cfg, logger)
	if err != nil {
		return deps, err
	}

	if embedded != nil {
		deps.Registry = embedded
		deps.Closers = append(deps.Closers, embedded.Close)
	}

	var demoKey []byte

	if cfg.Demo {
		// Seeding writes with the namespace given to testrelease; reading
		// the demo release needs the source to look under it too.
		demoKey, err = seedDemo(ctx, src, cfg.DataDir, logger)
		if err != nil {
			return deps, err
		}

		src.Namespace = demoNamespace
	}

	verifier, err := newVerifier(cfg, src.Remote, demoKey, logger)
	if err != nil {
		return deps, err
	}

	if cfg.Source.Layout != "" {
		// The mirror engine serves the layout on a loopback port while it
		// verifies; that verifier must reach it, not the embedded registry.
		importVerifier, err := newVerifier(cfg, nil, demoKey, logger)
		if err != nil {
			return deps, err
		}

		if err := importLayout(ctx, cfg.Source.Layout, src, importVerifier, logger); err != nil {
			return deps, err
		}
	}

	deps.Releases = artifacts.NewManager(src, verifier, artifacts.Config{BrokenVersions: cfg.BrokenVersions}, logger)

	assets, err := storage.NewFSAssets(cfg.DataDir, cfg.AssetCacheBytes, logger)
	if err != nil {
		return deps, err
	}

	deps.Builder = builder.New(ctx, builder.Config{
		DataDir:        cfg.DataDir,
		MaxConcurrency: cfg.MaxBuilds,
		MaxQueue:       cfg.MaxBuildQueue,
		FactoryURL:     cfg.externalURL(),
	}, builder.Deps{Schematics: store, Releases: deps.Releases, Assets: assets, Logger: logger})

	// Last: the lock outlives everything else that uses the directory.
	deps.Closers = append(deps.Closers, unlock)

	return deps, nil
}

func newSource(ctx context.Context, cfg Config, logger *slog.Logger) (*artifacts.Source, *registry.Embedded, error) {
	ext, err := url.Parse(cfg.externalURL())
	if err != nil {
		return nil, nil, fmt.Errorf("external URL: %w", err)
	}

	if cfg.Source.Registry == "" {
		removeStaleUploads(filepath.Join(cfg.DataDir, "registry"), logger)

		embedded, err := registry.NewEmbedded(ctx, filepath.Join(cfg.DataDir, "registry"))
		if err != nil {
			return nil, nil, err
		}

		reg, err := name.NewRegistry(embeddedHost, name.Insecure)
		if err != nil {
			return nil, nil, err
		}

		return &artifacts.Source{
			Registry:    reg,
			Remote:      []remote.Option{remote.WithTransport(registry.Transport(embedded))},
			PublicHost:  ext.Host,
			NameOptions: []name.Option{name.Insecure},
			Blobs:       embedded,
		}, embedded, nil
	}

	var nameOpts []name.Option
	if cfg.Source.Insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}

	reg, err := name.NewRegistry(cfg.Source.Registry, nameOpts...)
	if err != nil {
		return nil, nil, fmt.Errorf("registry %q: %w", cfg.Source.Registry, err)
	}

	transport := http.DefaultTransport.(*http.Transport).Clone()

	if cfg.Source.CAFile != "" {
		pem, err := os.ReadFile(cfg.Source.CAFile)
		if err != nil {
			return nil, nil, fmt.Errorf("registry CA: %w", err)
		}

		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, nil, errors.New("registry CA: no PEM certificate in " + cfg.Source.CAFile)
		}

		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}

	opts := []remote.Option{remote.WithTransport(transport)}
	if cfg.Source.Username != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: cfg.Source.Username, Password: cfg.Source.Password}))
	}

	return &artifacts.Source{
		Registry:    reg,
		Namespace:   cfg.Source.Namespace,
		Remote:      opts,
		PublicHost:  cfg.Source.Registry,
		NameOptions: nameOpts,
	}, nil, nil
}
