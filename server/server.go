package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/version"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// Config is what `kiln serve` needs to run.
type Config struct {
	// Listen is the one address for gRPC, REST and the public routes.
	Listen string
	// DataDir holds everything kiln stores.
	DataDir string
	// TLSCert and TLSKey, both or neither, switch the listener to TLS (HTTP/2
	// negotiated by ALPN, so gRPC works over it too).
	TLSCert string
	TLSKey  string
	// ShutdownTimeout bounds how long in-flight requests may finish after a
	// stop signal.
	ShutdownTimeout time.Duration
	// ExternalURL is how clients reach kiln (links, catalog refs into the
	// embedded registry); empty means http(s)://<listen>.
	ExternalURL string
	// ExternalPXEURL is the base of the URLs in iPXE scripts; empty means
	// ExternalURL.
	ExternalPXEURL string
	// Source is where releases are read from.
	Source SourceConfig
	// BrokenVersions are hidden from /versions and refused.
	BrokenVersions []string
	// TrustPolicy is the signature trust policy file (see package signing).
	TrustPolicy string
	// MaxBuilds caps asset builds running at once.
	MaxBuilds int
	// MaxBuildQueue bounds the builds waiting for a slot; more are refused
	// with 503 and Retry-After.
	MaxBuildQueue int
	// ReadTimeout bounds reading a request: its headers, and its body
	// whole, or for streamed bodies (registry uploads, gRPC) each read.
	ReadTimeout time.Duration
	// WriteTimeout bounds each write of a response: a client that reads
	// nothing for that long is dropped, a slow one is served.
	WriteTimeout time.Duration
	// IdleTimeout closes HTTP/1 keep-alive and HTTP/2 connections with no
	// request in flight.
	IdleTimeout time.Duration
	// MaxConnections caps open connections; 0 sizes the cap from the
	// file-descriptor limit.
	MaxConnections int
	// Schematic bounds what one schematic may hold and how many are parsed
	// at once.
	Schematic SchematicLimits
	// AssetCacheBytes bounds the asset cache; 0 is unlimited.
	AssetCacheBytes int64
	// Demo seeds a signed synthetic release into the embedded registry
	// (namespace kiln-demo) when it is not there, trusted by a key that
	// applies to that namespace only.
	Demo bool
	// AuthReads makes reads of the embedded registry need credentials too;
	// writes always do.
	AuthReads bool
	// ClientCA is a PEM bundle: a TLS client certificate it signed is a
	// credential (an admin, like the htpasswd users). Needs TLS.
	ClientCA string
	// PublicSchematicList lets anyone list schematic IDs; by default
	// listing needs a credential (a schematic's ID is what keeps it
	// private, as on the public factory, which has no list).
	PublicSchematicList bool
	// NoInstallerInCache leaves the schematic's installer out of the
	// image cache of its ISOs and disks (by default it is built, published
	// and cached under the air-gap patch's machine.install.image).
	NoInstallerInCache bool
	// PrefetchBootFiles are the architectures whose boot files of the
	// newest locked release are verified and extracted in the background
	// at start (artifacts.Manager.PrefetchBootFiles), so that the first
	// build does not wait for that; none when empty.
	PrefetchBootFiles []string
}

// SourceConfig selects the registry kiln reads releases from. With no
// Registry, it is kiln's embedded registry under <data-dir>/registry, served
// on kiln's own port under /v2/.
type SourceConfig struct {
	// Registry is an external registry, host[:port].
	Registry string
	// Namespace prefixes repository paths (a Harbor project, a proxy path).
	Namespace string
	// Insecure talks plain HTTP to the registry.
	Insecure bool
	// CAFile is a PEM bundle trusted for the registry's TLS certificate.
	CAFile string
	// Layout is an OCI image-layout directory (as `kiln mirror --to oci:DIR`
	// writes it) imported into the embedded registry at start.
	Layout string
	// Username and Password are basic-auth credentials.
	Username string
	Password string
}

// DefaultConfig is the configuration `make run` uses.
func DefaultConfig() Config {
	return Config{
		Listen:          "127.0.0.1:8080",
		DataDir:         "./_data",
		ShutdownTimeout: 30 * time.Second,
		MaxBuilds:       2,
		MaxBuildQueue:   builder.DefaultMaxQueue,
		ReadTimeout:     time.Minute,
		WriteTimeout:    time.Minute,
		IdleTimeout:     2 * time.Minute,
		AssetCacheBytes: 20 << 30,
		Schematic:       DefaultSchematicLimits(),
	}
}

// Validate reports the first setting that cannot work.
func (c Config) Validate() error {
	if c.Listen == "" {
		return errors.New("listen address is empty")
	}

	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return fmt.Errorf("listen address %q: %w", c.Listen, err)
	}

	if c.DataDir == "" {
		return errors.New("data directory is empty")
	}

	if (c.TLSCert == "") != (c.TLSKey == "") {
		return errors.New("TLS needs both a certificate and a key")
	}

	if c.ShutdownTimeout < 0 {
		return fmt.Errorf("shutdown timeout %s is negative", c.ShutdownTimeout)
	}

	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"read timeout", c.ReadTimeout}, {"write timeout", c.WriteTimeout}, {"idle timeout", c.IdleTimeout}} {
		if d.v < 0 {
			return fmt.Errorf("%s %s is negative", d.name, d.v)
		}
	}

	if c.MaxConnections < 0 || c.MaxBuilds < 0 || c.MaxBuildQueue < 0 {
		return errors.New("--max-connections, --max-builds and --max-build-queue cannot be negative")
	}

	if err := c.Schematic.validate(); err != nil {
		return err
	}

	if c.ExternalURL != "" {
		u, err := url.Parse(c.ExternalURL)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("external URL %q: want http(s)://host[:port]", c.ExternalURL)
		}
	}

	if c.Source.Registry == "" && (c.Source.Namespace != "" || c.Source.Insecure || c.Source.CAFile != "" || c.Source.Username != "") {
		return errors.New("registry settings given without --registry: the embedded registry takes none")
	}

	if c.Source.Layout != "" && c.Source.Registry != "" {
		return errors.New("--oci-layout is imported into the embedded registry: it cannot be combined with --registry")
	}

	if c.Demo && c.Source.Registry != "" {
		return errors.New("--demo seeds the embedded registry: it cannot be combined with --registry")
	}

	if c.ClientCA != "" && c.TLSCert == "" {
		return errors.New("--client-ca needs TLS (--tls-cert and --tls-key): client certificates are a TLS credential")
	}

	if (c.Source.Username == "") != (c.Source.Password == "") {
		return errors.New("registry credentials need both a username and a password")
	}

	return nil
}

// WithListener fills in the external URL from the bound address when none
// is configured, and warns when that address is no use to clients.
func (c Config) WithListener(addr net.Addr, logger *slog.Logger) Config {
	if c.ExternalURL != "" {
		return c
	}

	c.Listen = addr.String()

	if tcp, ok := addr.(*net.TCPAddr); ok && tcp.IP.IsUnspecified() {
		logger.Warn("listening on all addresses without --external-url: catalog references will name "+addr.String()+", which clients cannot reach",
			"hint", "set --external-url to the address clients use")
	}

	return c
}

// externalURL is ExternalURL or the listen address as a URL.
func (c Config) externalURL() string {
	if c.ExternalURL != "" {
		return strings.TrimSuffix(c.ExternalURL, "/")
	}

	scheme := "http"
	if c.TLSCert != "" {
		scheme = "https"
	}

	return scheme + "://" + c.Listen
}

// maxHeaderBytes bounds a request's headers (and its URL): enough for any
// client kiln serves, small enough that thousands of slow clients sending
// headers cannot take much memory (net/http's default is 1 MiB).
const maxHeaderBytes = 64 << 10

// Server is a configured kiln server, not yet serving.
type Server struct {
	cfg     Config
	logger  *slog.Logger
	handler http.Handler
	grpc    *grpc.Server
	health  *health.Server
	gwLis   net.Listener
	gwConn  interface{ Close() error }
	ready   atomic.Bool
	tls     *tls.Config
	closers []func() error
	conns   *connLimiter
	nofile  uint64
}

// Deps are the domain components a server fronts.
type Deps struct {
	Schematics storage.Schematics
	Artifacts  *artifacts.Manager
	Builder    *builder.Builder
	// Registry, if set, is served under /v2/ (the embedded registry).
	Registry http.Handler
	// Authenticator checks the credentials of the admin calls.
	Authenticator *access.Authenticator
	// Signer is kiln's own signing key: it signs the installers kiln
	// builds, and its public half is served at /oci/cosign/signing-key.pub.
	Signer *signing.Signer
	// Closers run after the server stops, in order.
	Closers []func() error
}

// New builds a server over deps.
func New(ctx context.Context, cfg Config, logger *slog.Logger, deps Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}

	s := &Server{cfg: cfg, logger: logger, health: health.NewServer(), closers: deps.Closers}

	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("load TLS key pair: %w", err)
		}

		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}

		if err := withClientCA(s.tls, cfg.ClientCA); err != nil {
			return nil, err
		}
	}

	domain := newSchematics(deps.Schematics, cfg.Schematic)
	rel := &releases{manager: deps.Artifacts}
	img := &images{builder: deps.Builder, externalURL: cfg.externalURL(), pxeURL: cfg.externalURL()}
	if cfg.ExternalPXEURL != "" {
		img.pxeURL = strings.TrimSuffix(cfg.ExternalPXEURL, "/")
	}

	// kiln serves installers from its embedded registry, signed with its
	// key.
	if deps.Registry != nil && deps.Builder != nil && deps.Signer != nil {
		ext, err := url.Parse(cfg.externalURL())
		if err != nil {
			return nil, fmt.Errorf("external URL: %w", err)
		}

		if img.installers, err = newInstallerFrontend(deps.Registry, deps.Builder, deps.Signer, deps.Authenticator, cfg.AuthReads, ext.Host, logger); err != nil {
			return nil, err
		}

		if !cfg.NoInstallerInCache {
			deps.Builder.SetInstallerPublisher(img.installers)
		}
	}
	g := &guard{authn: deps.Authenticator, publicList: cfg.PublicSchematicList}
	s.grpc = newGRPCServer(logger, domain, rel, img, s.health, g)

	gateway, gwLis, gwConn, err := newGateway(ctx, domain.limits.MaxBytes)
	if err != nil {
		return nil, err
	}

	s.gwLis, s.gwConn = gwLis, gwConn
	gateway = limitBodies(gateway, domain)

	public := http.NewServeMux()
	(&factoryRoutes{schematics: domain, releases: rel, images: img, logger: logger}).register(public)

	if deps.Signer != nil {
		public.HandleFunc("GET /oci/cosign/signing-key.pub", signingKeyHandler(deps.Signer))
	}

	switch {
	case img.installers != nil:
		public.Handle("/v2/", img.installers)
	case deps.Registry != nil:
		public.Handle("/v2/", deps.Registry)
	}

	if deps.Artifacts != nil {
		ag, err := newAirgapRoutes(cfg, domain, deps.Artifacts, deps.Signer, deps.Authenticator, logger)
		if err != nil {
			return nil, err
		}

		ag.register(public)
		newAssetMirror(domain, deps.Builder, deps.Artifacts, &factoryRoutes{logger: logger}).register(public)
	}

	public.HandleFunc("GET /{$}", rootPage)
	public.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) }) //nolint:errcheck
	public.HandleFunc("GET /readyz", s.readyz)

	nofile, err := raiseFileLimit()
	if err != nil {
		logger.Warn("cannot read the file-descriptor limit", "error", err)
	}

	maxConns := cfg.MaxConnections
	if maxConns == 0 {
		maxConns = connLimitFor(nofile)
	}

	if nofile > 0 && uint64(maxConns)+fdReserve+healthReserve > nofile {
		logger.Warn("--max-connections is above what the file-descriptor limit allows; connections past it will fail",
			"max_connections", maxConns, "file_limit", nofile)
	}

	s.conns = newConnLimiter(maxConns, healthReserve, logger)
	s.nofile = nofile

	s.handler = rootHandler(s.grpc, gateway, public, logger, deadlines{read: cfg.ReadTimeout, write: cfg.WriteTimeout})

	return s, nil
}

func (s *Server) readyz(w http.ResponseWriter, _ *http.Request) {
	if !s.ready.Load() {
		http.Error(w, "not ready", http.StatusServiceUnavailable)

		return
	}

	w.Write([]byte("ok\n")) //nolint:errcheck // the client is gone
}

// Handler is the server's whole HTTP surface; for tests.
func (s *Server) Handler() http.Handler { return s.handler }

// Serve answers on lis until ctx ends, then shuts down gracefully:
//
//  1. /readyz and gRPC health turn NOT_SERVING, so balancers stop sending;
//  2. the HTTP server stops accepting and waits up to ShutdownTimeout for
//     in-flight requests (gRPC calls over the main port included);
//  3. the gateway's in-memory gRPC server drains;
//  4. the gateway's client connection closes;
//  5. the closers of Deps run (the embedded registry's background work).
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)

	readHeader := s.cfg.ReadTimeout
	if readHeader == 0 {
		readHeader = 30 * time.Second // slow headers are never welcome
	}

	httpSrv := &http.Server{
		Handler:   s.handler,
		Protocols: protocols,
		// The body and write deadlines are per request (see deadlines):
		// a global ReadTimeout or WriteTimeout would cut long downloads
		// and build streams.
		ReadHeaderTimeout: readHeader,
		IdleTimeout:       s.cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ConnState:         s.conns.track,
		ConnContext:       s.conns.connContext,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}

	if s.tls != nil {
		httpSrv.TLSConfig = s.tls
		lis = tls.NewListener(lis, s.tls)
	}

	// Outside TLS, so the connections it tracks are the ones the server's
	// hooks see.
	lis = s.conns.listener(lis)

	g, gctx := errgroup.WithContext(ctx)

	g.Go(func() error {
		if err := s.grpc.Serve(s.gwLis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("gateway gRPC: %w", err)
		}

		return nil
	})

	g.Go(func() error {
		if err := httpSrv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve %s: %w", lis.Addr(), err)
		}

		return nil
	})

	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(kilnv1.SchematicService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(kilnv1.ReleaseService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(kilnv1.ImageService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.health.SetServingStatus(kilnv1.ImageCacheService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_SERVING)
	s.ready.Store(true)
	s.logger.Info("kiln serving", "address", lis.Addr().String(), "tls", s.tls != nil, "data_dir", s.cfg.DataDir,
		"max_connections", s.conns.max, "file_limit", s.nofile)

	g.Go(func() error {
		<-gctx.Done()
		s.ready.Store(false)
		s.health.Shutdown()
		s.logger.Info("shutting down", "timeout", s.cfg.ShutdownTimeout)

		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownTimeout)
		defer cancel()

		err := httpSrv.Shutdown(sctx)
		if err != nil {
			httpSrv.Close() //nolint:errcheck // forced after the timeout
		}

		stopped := make(chan struct{})
		go func() { s.grpc.GracefulStop(); close(stopped) }()

		select {
		case <-stopped:
		case <-sctx.Done():
			s.grpc.Stop()
		}

		s.gwConn.Close() //nolint:errcheck // nothing left to send

		for _, c := range s.closers {
			if cerr := c(); cerr != nil {
				s.logger.Warn("closing", "error", cerr)
			}
		}

		if err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}

		return nil
	})

	err := g.Wait()
	if err != nil {
		s.logger.Error("kiln stopped", "error", err)
	} else {
		s.logger.Info("kiln stopped")
	}

	return err
}

// rootText answers GET / until kiln has a UI: what is served here, for a
// person who opened the address in a browser or with curl.
const rootText = `kiln %s: a local, air-gapped Image Factory for Talos Linux.

There is no web UI (yet). On this port:

  POST /schematics                              a schematic (YAML or JSON) -> {"id", "schematic"}
  GET  /schematics/{id}                         its canonical YAML
  GET  /versions                                the Talos versions of the mirror
  GET  /version/{v}/extensions/official         a version's extensions (also /overlays/official)
  GET  /image/{schematic}/{version}/{path}      boot assets: kernel-amd64, initramfs-amd64.xz,
                                                cmdline-metal-amd64, metal-amd64.iso, metal-amd64.raw.zst, ...
  GET  /pxe/{schematic}/{version}/metal-amd64   an iPXE script
  GET  /talosctl/{version}                      the release's talosctl binaries (URLs to download)
  GET  /imagecache/{id}.tar                     a built image cache
  GET  /config/{schematic}/{version}/airgap.yaml
                                                the machine-config patch for nodes pulling from kiln
  GET  /assets/{schematic}/{version}/{file}     an asset mirror as Sidero's air-gap plan lays it out
                                                (checksums.txt lists its files; kiln export copies it)
  /v2/                                          the OCI registry of the mirror, and the installers:
                                                HOST/metal-installer/{schematic}:{version}
  GET  /oci/cosign/signing-key.pub              the key kiln signs its installers with
  /v1/...                                       the REST gateway of the gRPC API (gRPC itself, with
                                                reflection, on this same port: grpcurl -plaintext HOST list)
  GET  /healthz, /readyz

The README of kiln's source (github.com/kiln-dev/kiln) describes each, with examples.
`

func rootPage(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, rootText, version.Version()) //nolint:errcheck // the client is gone
}
