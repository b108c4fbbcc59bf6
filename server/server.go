package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
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
}

// DefaultConfig is the configuration `make run` uses.
func DefaultConfig() Config {
	return Config{
		Listen:          "127.0.0.1:8080",
		DataDir:         "./_data",
		ShutdownTimeout: 30 * time.Second,
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

	return nil
}

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
}

// New builds a server over the store under cfg.DataDir.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}

	store, err := storage.NewFS(cfg.DataDir, logger)
	if err != nil {
		return nil, err
	}

	return newServer(ctx, cfg, logger, store)
}

func newServer(ctx context.Context, cfg Config, logger *slog.Logger, store storage.Schematics) (*Server, error) {
	s := &Server{cfg: cfg, logger: logger, health: health.NewServer()}

	if cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, fmt.Errorf("load TLS key pair: %w", err)
		}

		s.tls = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12, NextProtos: []string{"h2", "http/1.1"}}
	}

	domain := &schematics{store: store}
	s.grpc = newGRPCServer(logger, domain, s.health)

	gateway, gwLis, gwConn, err := newGateway(ctx)
	if err != nil {
		return nil, err
	}

	s.gwLis, s.gwConn = gwLis, gwConn

	public := http.NewServeMux()
	(&factoryRoutes{schematics: domain, logger: logger}).register(public)
	public.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) }) //nolint:errcheck
	public.HandleFunc("GET /readyz", s.readyz)

	s.handler = rootHandler(s.grpc, gateway, public, logger)

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
//  4. the gateway's client connection closes.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	protocols := new(http.Protocols)
	protocols.SetHTTP1(true)
	protocols.SetHTTP2(true)
	protocols.SetUnencryptedHTTP2(true)

	httpSrv := &http.Server{
		Handler:           s.handler,
		Protocols:         protocols,
		ReadHeaderTimeout: 30 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}

	if s.tls != nil {
		httpSrv.TLSConfig = s.tls
		lis = tls.NewListener(lis, s.tls)
	}

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
	s.ready.Store(true)
	s.logger.Info("kiln serving", "address", lis.Addr().String(), "tls", s.tls != nil, "data_dir", s.cfg.DataDir)

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

		if err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}

		return nil
	})

	return g.Wait()
}

// Run serves cfg until ctx ends.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	s, err := New(ctx, cfg, logger)
	if err != nil {
		return err
	}

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}

	return s.Serve(ctx, lis)
}
