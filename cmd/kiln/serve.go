package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/internal/cli"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/server"
)

// serveEnvPrefix is the prefix of kiln serve's environment variables.
const serveEnvPrefix = "KILN_"

// serveSettings are the flags of kiln serve that are not fields of the
// server's Config as they are.
type serveSettings struct {
	cacheSize, schematicSize, broken, prefetch, logLevel, logFormat *string
}

// newServeFlags defines kiln serve's flags over cfg. It is also what the
// README's configuration table is generated from (see readme_test.go), so a
// flag's usage text is its documentation.
func newServeFlags(cfg *server.Config, out io.Writer) (*flag.FlagSet, *serveSettings) {
	fs := flag.NewFlagSet("kiln serve", flag.ContinueOnError)
	fs.SetOutput(out)

	var s serveSettings

	fs.String(cli.ConfigFlag, "", "YAML file of settings keyed by flag name (data-dir: /var/lib/kiln); unknown keys are an error")
	fs.StringVar(&cfg.Listen, "listen", cfg.Listen, "one address for gRPC (h2c), REST and the public routes")
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory for everything kiln stores")
	fs.StringVar(&cfg.TLSCert, "tls-cert", "", "PEM certificate; with --tls-key kiln serves TLS, gRPC negotiating HTTP/2 by ALPN on the same port")
	fs.StringVar(&cfg.TLSKey, "tls-key", "", "PEM private key of --tls-cert")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", cfg.ShutdownTimeout, "how long in-flight requests may finish after SIGTERM")
	fs.StringVar(&cfg.ExternalURL, "external-url", "", "how clients reach kiln, e.g. https://kiln.example:8080: the base of URLs kiln hands out and the host of catalog refs into the embedded registry (default: http(s):// and the bound listen address)")
	fs.StringVar(&cfg.ExternalPXEURL, "external-pxe-url", "", "base URL of the kernel and initramfs in iPXE scripts, e.g. http://10.0.0.5:8080, for iPXE clients that cannot do modern TLS (default: --external-url)")
	fs.StringVar(&cfg.Source.Registry, "registry", "", "read releases from this external registry, host[:port], instead of the embedded one")
	fs.StringVar(&cfg.Source.Layout, "oci-layout", "", "import the releases of this OCI layout directory (kiln mirror --to oci:DIR) into the embedded registry at start, each image verified; restarts copy only what is new")
	fs.StringVar(&cfg.Source.Namespace, "registry-namespace", "", "path prefix of the release repositories in --registry (a Harbor project)")
	fs.BoolVar(&cfg.Source.Insecure, "registry-insecure", false, "talk plain HTTP to --registry")
	fs.StringVar(&cfg.Source.CAFile, "registry-ca", "", "PEM CA bundle for --registry's TLS certificate")
	fs.StringVar(&cfg.Source.Username, "registry-username", "", "basic-auth user for --registry")
	fs.StringVar(&cfg.Source.Password, "registry-password", "", "basic-auth password for --registry (prefer KILN_REGISTRY_PASSWORD to the command line)")
	fs.StringVar(&cfg.TrustPolicy, "trust-policy", "", "signature trust policy file (see Trust policy); without one every artifact is refused")
	fs.IntVar(&cfg.MaxBuilds, "max-builds", cfg.MaxBuilds, "asset builds running at once; more wait for a slot")
	fs.IntVar(&cfg.MaxBuildQueue, "max-build-queue", cfg.MaxBuildQueue, "builds waiting for a slot; past it a new build is refused with 503 and Retry-After (gRPC ResourceExhausted)")
	fs.IntVar(&cfg.MaxConnections, "max-connections", cfg.MaxConnections, "open connections; at the cap the oldest idle one is closed for a new one, and when all are busy 64 more are let in for health checks only (0 = (file-descriptor limit - 320) / 2)")
	fs.DurationVar(&cfg.ReadTimeout, "read-timeout", cfg.ReadTimeout, "time to receive a request's headers, and its whole body; a registry upload or gRPC stream must only send something within it")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", cfg.WriteTimeout, "time each write of a response may wait for the client: a stalled client is dropped, a slow download is not cut")
	fs.DurationVar(&cfg.IdleTimeout, "idle-timeout", cfg.IdleTimeout, "HTTP/1 keep-alive and HTTP/2 connections with no request in flight are closed after this")
	s.schematicSize = fs.String("max-schematic-size", "4MiB", "largest schematic taken, as sent (KiB, MiB; its canonical form may be twice that); also bounds gRPC messages and REST bodies")
	s.cacheSize = fs.String("asset-cache-size", "20GiB", "bound of the built-asset cache, least recently used out first (KiB, MiB, GiB, TiB; 0 = unbounded)")
	fs.BoolVar(&cfg.Demo, "demo", false, "seed a signed synthetic Talos release into the embedded registry (what make run does)")
	fs.BoolVar(&cfg.AuthReads, "auth-reads", false, "require credentials for reads of the embedded registry (/v2) too; writes always need them (see Security)")
	fs.StringVar(&cfg.ClientCA, "client-ca", "", "PEM CA bundle: a TLS client certificate it signed is an admin credential, like <data-dir>/auth/htpasswd's users (needs --tls-cert)")
	fs.BoolVar(&cfg.PublicSchematicList, "public-schematic-list", false, "let anyone list schematic IDs (ListSchematics, GET /v1/schematics); by default it needs a credential")
	fs.BoolVar(&cfg.NoInstallerInCache, "no-installer-in-cache", false, "leave the schematic's installer out of the image cache its ISOs and disks embed (by default it is built and cached under the air-gap patch's install image)")
	s.prefetch = fs.String("prefetch-boot-files", "amd64", "at start, verify and extract in the background, one architecture at a time, the boot files of the newest mirrored Talos version with a release lock for these comma-separated architectures, so the first build need not (a build meanwhile joins the work); empty: none")
	s.broken = fs.String("broken-versions", "", "comma-separated Talos versions hidden from /versions and listed by /versions?broken=true")
	s.logLevel = fs.String("log-level", "info", "debug, info, warn or error")
	s.logFormat = fs.String("log-format", "text", "text or json")

	return fs, &s
}

func serve(ctx context.Context, args []string, stderr io.Writer, getenv func(string) string) error {
	cfg := server.DefaultConfig()
	fs, set := newServeFlags(&cfg, stderr)

	if err := cli.Parse(fs, args, serveEnvPrefix, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}

		return err
	}

	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}

	size, err := parseSize(*set.cacheSize)
	if err != nil {
		return fmt.Errorf("--asset-cache-size: %w", err)
	}

	cfg.AssetCacheBytes = size

	if cfg.Schematic.MaxBytes, err = parseSize(*set.schematicSize); err != nil || cfg.Schematic.MaxBytes == 0 {
		return fmt.Errorf("--max-schematic-size: %q: want a size such as 4MiB", *set.schematicSize)
	}

	cfg.BrokenVersions = splitList(*set.broken)

	cfg.PrefetchBootFiles = splitList(*set.prefetch)
	for _, arch := range cfg.PrefetchBootFiles {
		if !slices.Contains(release.Arches, arch) {
			return fmt.Errorf("--prefetch-boot-files: architecture %q: want a comma-separated list of %v, or empty", arch, release.Arches)
		}
	}

	logger, err := newLogger(stderr, *set.logLevel, *set.logFormat)
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
