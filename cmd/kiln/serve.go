package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/internal/cli"
	"github.com/kiln-dev/kiln/server"
)

func serve(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) error {
	cfg := server.DefaultConfig()

	fs := flag.NewFlagSet("kiln serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.String(cli.ConfigFlag, "", "YAML file of settings, keyed by flag name (env KILN_CONFIG)")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "address for gRPC, REST and the public routes")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for everything kiln stores")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate; with --tls-key serves TLS (HTTP/2 by ALPN)")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key for --tls-cert")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long in-flight requests may finish on SIGTERM")
	fs.StringVar(&cfg.ExternalURL, "external-url", "", "how clients reach kiln, e.g. https://kiln.example:8080 (default: http(s)://<listen>)")
	fs.StringVar(&cfg.ExternalPXEURL, "external-pxe-url", "", "base URL in iPXE scripts, e.g. http://10.0.0.5:8080 (default: --external-url)")
	fs.StringVar(&cfg.Source.Registry, "registry", "", "read releases from this registry, host[:port] (default: the embedded registry)")
	fs.StringVar(&cfg.Source.Layout, "oci-layout", "", "import releases from this OCI layout directory (kiln mirror --to oci:DIR) at start")
	fs.StringVar(&cfg.Source.Namespace, "registry-namespace", "", "path prefix of the release repositories in --registry")
	fs.BoolVar(&cfg.Source.Insecure, "registry-insecure", false, "talk plain HTTP to --registry")
	fs.StringVar(&cfg.Source.CAFile, "registry-ca", "", "PEM CA bundle for --registry's TLS certificate")
	fs.StringVar(&cfg.Source.Username, "registry-username", "", "basic-auth user for --registry")
	fs.StringVar(&cfg.Source.Password, "registry-password", "", "basic-auth password for --registry (prefer KILN_REGISTRY_PASSWORD)")
	fs.StringVar(&cfg.TrustPolicy, "trust-policy", "", "signature trust policy file; without one no artifact is trusted")
	fs.IntVar(&cfg.MaxBuilds, "max-builds", cfg.MaxBuilds, "asset builds running at once; more wait")
	cacheSize := fs.String("asset-cache-size", "20GiB", "bound of the built-asset cache (KiB, MiB, GiB, TiB; 0 = unbounded)")
	fs.BoolVar(&cfg.Demo, "demo", false, "seed a signed synthetic Talos release into the embedded registry (what make run uses)")
	broken := fs.String("broken-versions", "", "comma-separated Talos versions to hide")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json")

	if err := cli.Parse(fs, args, "KILN_", getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}

		return err
	}

	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	size, err := parseSize(*cacheSize)
	if err != nil {
		return fmt.Errorf("--asset-cache-size: %w", err)
	}

	cfg.AssetCacheBytes = size

	cfg.BrokenVersions = splitList(*broken)

	logger, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}

	return server.Run(ctx, cfg, logger)
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", level)
	}

	opts := &slog.HandlerOptions{Level: lvl}

	switch strings.ToLower(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: use text or json", format)
	}
}

// parseSize reads "20GiB", "512MiB", "0" or a byte count.
func parseSize(s string) (int64, error) {
	s = strings.TrimSpace(s)

	for i, unit := range []string{"KiB", "MiB", "GiB", "TiB"} {
		if n, ok := strings.CutSuffix(s, unit); ok {
			v, err := strconv.ParseInt(strings.TrimSpace(n), 10, 64)
			if err != nil || v < 0 {
				return 0, fmt.Errorf("size %q: want a whole number with KiB, MiB, GiB or TiB", s)
			}

			return v << (10 * (i + 1)), nil
		}
	}

	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("size %q: want a whole number with KiB, MiB, GiB or TiB", s)
	}

	return v, nil
}
