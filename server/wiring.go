package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
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

	if deps.Artifacts != nil && len(cfg.PrefetchBootFiles) > 0 {
		// In the background: serving starts now, and a build that needs the
		// files meanwhile joins the extraction.
		go func() {
			if err := deps.Artifacts.PrefetchBootFiles(ctx, cfg.PrefetchBootFiles); err != nil && ctx.Err() == nil {
				logger.Warn("prefetching boot files failed; builds extract them when they need them", "error", err)
			}
		}()
	}

	return srv.Serve(ctx, lis)
}

// Build constructs the domain components cfg describes:
//
//  1. the schematic store under <data-dir>/schematics;
//  2. the admin credential under <data-dir>/auth and kiln's signing key
//     under <data-dir>/cosign, both made on first start;
//  3. the embedded registry under <data-dir>/registry, anonymous reads and
//     authenticated writes, unless an external registry is configured;
//  4. the artifact source over that registry; in demo mode, the signed demo
//     release seeded into it when never seeded (package demo);
//  5. the verifier of the trust policy (with the demo key's rule first in
//     demo mode), and the import of --oci-layout, verified, into the
//     embedded registry;
//  6. the asset cache under <data-dir>/assets, bounded, which holds both
//     what is built and what is extracted from releases;
//  7. the artifact manager over the source, the verifier and the asset
//     cache, with the release locks under <data-dir>/release-locks (the
//     demo's and the layout's recorded now);
//  8. the builder over all of it.
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

	authn, err := adminCredential(cfg.DataDir, logger)
	if err != nil {
		return deps, err
	}

	deps.Authenticator = authn

	if deps.Signer, err = ownSigner(cfg.DataDir, logger); err != nil {
		return deps, err
	}

	src, embedded, err := newSource(ctx, cfg, logger, registry.WithAccess(registry.Access{Authenticator: authn, AnonymousReads: !cfg.AuthReads}))
	if err != nil {
		return deps, err
	}

	if embedded != nil {
		deps.Registry = embedded
		deps.Closers = append(deps.Closers, embedded.Close)
	}

	locks := artifacts.LockDir(filepath.Join(cfg.DataDir, "release-locks"))

	var (
		demoPolicy *signing.Policy
		seed       *demo.Seeded
	)

	if cfg.Demo {
		// Seeding writes under the demo's namespace; reading the demo
		// release needs the source to look under it too.
		seed, err = demo.Seed(ctx, src, cfg.DataDir, locks, logger)
		if err != nil {
			return deps, err
		}

		if demoPolicy, err = demo.Policy(seed.PublicKey); err != nil {
			return deps, fmt.Errorf("demo: %w", err)
		}

		src.Namespace = demo.Namespace
	}

	verifier, err := newVerifier(cfg, src.Remote, mirror.Registry{Mirror: src.Mirror, Options: src.Remote}, demoPolicy, logger)
	if err != nil {
		return deps, err
	}

	var imported map[string]map[string]string

	if cfg.Source.Layout != "" {
		// The mirror engine serves the layout on a loopback port while it
		// verifies; that verifier must reach it, not the embedded registry.
		importVerifier, err := newVerifier(cfg, nil, mirror.Layout{Dir: cfg.Source.Layout}, demoPolicy, logger)
		if err != nil {
			return deps, err
		}

		imported, err = importLayout(ctx, cfg.Source.Layout, src, importVerifier, logger)
		if err != nil {
			return deps, err
		}
	}

	assets, err := storage.NewFSAssets(cfg.DataDir, cfg.AssetCacheBytes, logger)
	if err != nil {
		return deps, err
	}

	deps.Artifacts = artifacts.NewManager(
		artifacts.Deps{Source: src, Checker: verifier, Store: assets, Logger: logger},
		artifacts.Config{BrokenVersions: cfg.BrokenVersions, Locks: locks},
	)

	if seed != nil {
		if err := seed.Lock(ctx, deps.Artifacts, logger); err != nil {
			return deps, err
		}
	}

	for v, want := range imported {
		// The layout is what the operator said to serve: its digests are the
		// lock, recorded again only when they changed.
		if old, err := deps.Artifacts.Lock(v); err != nil {
			return deps, err
		} else if old != nil && maps.Equal(old.Images, want) {
			continue
		}

		l, err := deps.Artifacts.RecordLock(ctx, v, want, "kiln serve --oci-layout "+cfg.Source.Layout)
		if err != nil {
			return deps, fmt.Errorf("OCI layout %s: %w", cfg.Source.Layout, err)
		}

		logger.Info("recorded the release lock of an imported version", "version", v, "imager", l.Images[release.ImagerRepo])
	}

	deps.Builder = builder.New(ctx, builder.Config{
		DataDir:        cfg.DataDir,
		MaxConcurrency: cfg.MaxBuilds,
		MaxQueue:       cfg.MaxBuildQueue,
		FactoryURL:     cfg.externalURL(),
	}, builder.Deps{Schematics: store, Artifacts: deps.Artifacts, Assets: assets, Logger: logger})

	// Last: the lock outlives everything else that uses the directory.
	deps.Closers = append(deps.Closers, unlock)

	return deps, nil
}

// adminCredential makes the admin credential on first start, says where it
// is, and returns the authenticator of the credentials in it.
func adminCredential(dataDir string, logger *slog.Logger) (*access.Authenticator, error) {
	files := access.Files{Dir: filepath.Join(dataDir, "auth")}

	created, err := files.EnsureAdmin()
	if err != nil {
		return nil, err
	}

	if created {
		logger.Warn("created the admin credential: writes to the embedded registry, kiln mirror --to this kiln and the admin calls need it",
			"user", access.AdminUser, "password_file", files.Password(), "htpasswd", files.HTPasswd())
	} else {
		logger.Info("admin credentials", "htpasswd", files.HTPasswd(), "password_file", files.Password())
	}

	return access.NewAuthenticator(files.HTPasswd())
}

// ownSigner loads kiln's signing key, creating it on first start.
func ownSigner(dataDir string, logger *slog.Logger) (*signing.Signer, error) {
	path := filepath.Join(dataDir, signing.SigningKeyFile)

	s, created, err := signing.LoadOrCreateSigner(path)
	if err != nil {
		return nil, fmt.Errorf("kiln's signing key: %w", err)
	}

	if created {
		logger.Warn("created kiln's signing key: it signs the installer images kiln builds; back it up with the data directory",
			"path", path, "public_key", "/oci/cosign/signing-key.pub")
	}

	return s, nil
}

func newSource(ctx context.Context, cfg Config, logger *slog.Logger, regOpts ...registry.Option) (*artifacts.Source, *registry.Embedded, error) {
	ext, err := url.Parse(cfg.externalURL())
	if err != nil {
		return nil, nil, fmt.Errorf("external URL: %w", err)
	}

	if cfg.Source.Registry == "" {
		removeStaleUploads(filepath.Join(cfg.DataDir, "registry"), logger)

		embedded, err := registry.NewEmbedded(ctx, filepath.Join(cfg.DataDir, "registry"), regOpts...)
		if err != nil {
			return nil, nil, err
		}

		reg, err := name.NewRegistry(embeddedHost, name.Insecure)
		if err != nil {
			return nil, nil, err
		}

		return &artifacts.Source{
			Mirror:     release.Mirror{Registry: reg},
			Remote:     []remote.Option{remote.WithTransport(registry.Transport(embedded))},
			PublicHost: ext.Host,
			Blobs:      embedded,
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
		Mirror:     release.Mirror{Registry: reg, Namespace: cfg.Source.Namespace},
		Remote:     opts,
		PublicHost: cfg.Source.Registry,
	}, nil, nil
}
