package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/imagecache"
	"github.com/kiln-dev/kiln/internal/cli"
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

const cacheUsage = `Usage: kiln cache create --images FILE|- --output DIR [flags]

Writes an image cache as talosctl images cache-create does: the flat tree
(blob/, manifests/) or a one-layer OCI image layout, for Talos's image cache
(machine.features.imageCache). Images are verified against the trust policy
before anything is written; a missing image or platform fails naming it.

`

func cacheCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) error {
	if len(args) > 0 && isHelp(args[0]) {
		args = []string{"create", "--help"} // create is the only subcommand
	}

	if len(args) == 0 || args[0] != "create" {
		fmt.Fprint(stderr, cacheUsage)

		return errors.New("usage: kiln cache create --images FILE|- --output DIR")
	}

	fs := flag.NewFlagSet("kiln cache create", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, cacheUsage); fs.PrintDefaults() }

	fs.String(cli.ConfigFlag, "", "YAML file of settings, keyed by flag name")
	images := fs.String("images", "", "file of image references, one per line, or - for stdin (required)")
	output := fs.String("output", "", "directory to create (required; must not exist or be empty)")
	platforms := fs.String("platform", "linux/amd64", "comma-separated platforms, or all")
	layout := fs.String("layout", "oci", "oci (one-layer OCI image layout, talosctl's default) or flat")
	from := fs.String("mirror", "", "resolve images in this kiln mirror, host[:port][/namespace] (default: where each reference names)")
	kubernetes := fs.String("kubernetes", "", "also cache the Kubernetes images of this Talos version, e.g. v1.13.0")
	layerCache := fs.String("layer-cache", "", "directory of blobs reused across runs")
	jobs := fs.Int("jobs", 4, "blobs fetched, and images resolved, at once")
	signatures := fs.Bool("cosign-signatures", true, "cache the images' cosign signatures too")
	policy := fs.String("trust-policy", "", "signature trust policy (required unless --insecure-skip-verify)")
	skipVerify := fs.Bool("insecure-skip-verify", false, "cache without verifying signatures")
	insecure := fs.Bool("insecure", false, "talk plain HTTP to registries other than localhost")

	if err := cli.Parse(fs, args[1:], "KILN_CACHE_", getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}

		return err
	}

	if *images == "" && *kubernetes == "" {
		return errors.New("--images (or --kubernetes) is required")
	}

	if *output == "" {
		return errors.New("--output is required")
	}

	if *policy == "" && !*skipVerify {
		return errors.New("--trust-policy is required: kiln verifies every image before caching it (or pass --insecure-skip-verify)")
	}

	var refs []string

	if *images != "" {
		in := stdin
		if *images != "-" {
			f, err := os.Open(*images)
			if err != nil {
				return err
			}
			defer f.Close()

			in = f
		}

		list, err := imagecache.ReadImages(in)
		if err != nil {
			return err
		}

		refs = list
	}

	if *kubernetes != "" {
		v, err := release.ParseVersion(*kubernetes)
		if err != nil {
			return fmt.Errorf("--kubernetes: %w", err)
		}

		k8s, err := release.KubernetesImages(v)
		if err != nil {
			return err
		}

		refs = append(refs, k8s...)
	}

	lay, err := imagecache.ParseLayout(*layout)
	if err != nil {
		return err
	}

	opts := imagecache.DefaultOptions()
	opts.Platforms = splitList(*platforms)
	opts.Layout = lay
	opts.Jobs = *jobs
	opts.LayerCache = *layerCache
	opts.Signatures = *signatures
	opts.Progress = newCacheProgress(stderr)
	opts.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))

	remoteOpts := []remote.Option{remote.WithAuthFromKeychain(authn.DefaultKeychain)}

	var nameOpts []name.Option
	if *insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}

	var resolver imagecache.Resolver = imagecache.DirectResolver{NameOptions: nameOpts, Remote: remoteOpts}

	// With --mirror, the trusted root that came with the mirror is there.
	var rootSource mirror.Endpoint

	if *from != "" {
		host, ns, _ := strings.Cut(*from, "/")

		reg, err := name.NewRegistry(host, nameOpts...)
		if err != nil {
			return fmt.Errorf("--mirror: %w", err)
		}

		m := release.Mirror{Registry: reg, Namespace: ns}
		resolver = imagecache.MirrorResolver{Source: &artifacts.Source{Mirror: m, Remote: remoteOpts}}
		rootSource = mirror.Registry{Mirror: m, Options: remoteOpts}
	}

	var verifier signing.Checker

	if *skipVerify {
		fmt.Fprintln(stderr, "WARNING: --insecure-skip-verify: signatures are NOT verified")
	} else {
		p, err := signing.LoadPolicy(*policy)
		if err != nil {
			return err
		}

		vopts := []signing.Option{signing.WithRemoteOptions(remoteOpts...)}
		if rootSource != nil {
			vopts = append(vopts, signing.WithMirrorRoot(mirror.CarriedRoot(rootSource)))
		}

		v, err := signing.NewVerifier(p, vopts...)
		if err != nil {
			return err
		}

		verifier = v
	}

	plan, err := imagecache.NewPlan(ctx, refs, resolver, verifier, opts)
	if err != nil {
		return err
	}

	stats, err := imagecache.Write(ctx, plan, *output, opts)
	if err != nil {
		return err
	}

	_, err = fmt.Fprintf(stdout, "image cache %s: %d images, %d blobs (%s), %s, written to %s in %s\n",
		plan.ID(), len(plan.Images()), stats.Blobs, mirror.HumanSize(stats.OutputBytes), lay, *output, stats.Duration.Round(time.Millisecond))

	return err
}

// newCacheProgress prints a line per image resolved and, at most once a
// second, the bytes written so far.
func newCacheProgress(w io.Writer) func(imagecache.Event) {
	var (
		mu   sync.Mutex
		last time.Time
	)

	return func(e imagecache.Event) {
		mu.Lock()
		defer mu.Unlock()

		switch {
		case e.Image != "" && e.Done == 0:
			fmt.Fprintf(w, "  %s %s\n", e.Phase, e.Image)
		case e.Total > 0 && (time.Since(last) > time.Second || e.Done == e.Total):
			last = time.Now()
			fmt.Fprintf(w, "  %s / %s\n", mirror.HumanSize(e.Done), mirror.HumanSize(e.Total))
		}
	}
}
