package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/internal/cli"
	"github.com/kiln-dev/kiln/mirror"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/signing"
)

const mirrorUsage = `Usage: kiln mirror --from SRC --to DST [--version vX.Y.Z] [--talos-defaults vX.Y.Z] [--images FILE] [flags]

Copies Talos releases (--version), the cluster images a Talos version runs
by default (--talos-defaults, what talosctl images default prints) and any
other images (--images: one reference per line, "nginx" read as docker
does, docker.io/library/nginx:latest) with their signatures, verifying every
image against the trust policy before anything of it is written. An image
of --images that no policy rule names is copied unverified, and said so.
--schematic FILE takes, of the release, the extensions and overlay the
schematic names (old names as the public factory reads them) instead of all.
Images keep their upstream names: docker.io/library/nginx,
registry.k8s.io/etcd; ghcr.io's without the host. Endpoints:
  host[:port][/namespace]   a registry, e.g. a running kiln (127.0.0.1:8080)
  upstream, ghcr.io         the public registries (ghcr.io, registry.k8s.io, ...)
  oci:DIR                   an OCI image layout directory
  FILE.tar, archive:FILE    a single archive file to carry across the air gap
Run it again to resume an interrupted copy: only what is missing is copied.

Writing into a kiln needs its admin credential: --to-password-file
<kiln data-dir>/auth/admin-password (user admin), or credentials stored by
docker login / crane auth login. After copying a Talos version into a kiln,
kiln mirror records the version's release lock there: the digests kiln will
build from until the next kiln mirror (a re-tag in between is refused).

Sigstore's trusted root (for keyless signatures) travels with the images:
fetched through TUF when copying from upstream (--trusted-root tuf), taken
from the source otherwise, and used by trust-policy rules that say
"trustedRoot: mirror".

`

func mirrorCmd(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("kiln mirror", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, mirrorUsage); fs.PrintDefaults() }

	fs.String(cli.ConfigFlag, "", "YAML file of settings, keyed by flag name")
	from := fs.String("from", "", "source endpoint (required)")
	to := fs.String("to", "", "destination endpoint (required)")
	versions := fs.String("version", "", "comma-separated Talos versions, e.g. v1.13.0,v1.12.6")
	arches := fs.String("arch", "", "comma-separated architectures to copy (default: all); see README for registries")
	extensions := fs.String("extensions", "all", "comma-separated extension names, 'all' or 'none'")
	overlays := fs.String("overlays", "all", "comma-separated overlay names, 'all' or 'none'")
	talosctl := fs.Bool("talosctl", true, "copy siderolabs/talosctl-all")
	kubernetes := fs.Bool("kubernetes", true, "copy each version's Kubernetes images")
	images := fs.String("images", "", "file of more image references to copy, one per line, '#' comments ('-' for stdin)")
	schematics := fs.String("schematic", "", "comma-separated schematic files: copy the extensions and overlay they name (instead of all, unless --extensions/--overlays say more)")
	talosDefaults := fs.String("talos-defaults", "", "comma-separated Talos versions whose default cluster images (talosctl images default) to copy, without the release")
	policy := fs.String("trust-policy", "", "signature trust policy (required unless --insecure-skip-verify)")
	skipVerify := fs.Bool("insecure-skip-verify", false, "copy without verifying signatures (never for production mirrors)")
	insecure := fs.Bool("insecure", false, "talk plain HTTP to registries other than localhost")
	dryRun := fs.Bool("dry-run", false, "print what would be copied and its size; write nothing")
	jobs := fs.Int("jobs", 4, "blobs copied at once")
	trustedRoot := fs.String("trusted-root", "auto", "Sigstore trusted root to carry: tuf (fetch it through TUF), source (the one the source carries), none, or auto (tuf from upstream, else source)")
	tufURL := fs.String("tuf-url", signing.PublicGoodTUFURL, "TUF repository --trusted-root tuf fetches from")
	tufRoot := fs.String("tuf-root", "", "that repository's root.json, the trust anchor (default: the trust policy's tufRoot, else Sigstore's public-good root built into kiln)")
	toUser := fs.String("to-username", "", "user for a --to registry or kiln (default with a password: admin, a kiln's admin user)")
	toPassword := fs.String("to-password", "", "password for --to (prefer KILN_MIRROR_TO_PASSWORD or --to-password-file to the command line)")
	toPasswordFile := fs.String("to-password-file", "", "file holding the password for --to, e.g. a kiln's <data-dir>/auth/admin-password")

	if err := cli.Parse(fs, args, "KILN_MIRROR_", getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}

		return err
	}

	if *from == "" || *to == "" {
		return errors.New("--from and --to are required")
	}

	if *policy == "" && !*skipVerify {
		return errors.New("--trust-policy is required: kiln verifies every image before copying it (or pass --insecure-skip-verify)")
	}

	vs, err := parseVersions("--version", *versions)
	if err != nil {
		return err
	}

	defaults, err := parseVersions("--talos-defaults", *talosDefaults)
	if err != nil {
		return err
	}

	exts, ovls, err := schematicSelection(fs, *schematics, namesOrAll(*extensions), namesOrAll(*overlays))
	if err != nil {
		return err
	}

	if *schematics != "" && len(vs) == 0 {
		return errors.New("--schematic needs --version: the extensions a schematic names are those of a release's catalog")
	}

	sel := mirror.Selection{
		Versions:   vs,
		Arches:     splitList(*arches),
		Extensions: exts,
		Overlays:   ovls,
		Talosctl:   *talosctl,
		Kubernetes: *kubernetes,
		// Checked here, before anything is read from a registry.
		TalosDefaults: defaults,
	}

	for _, v := range defaults {
		if _, err := release.KubernetesImages(v); err != nil {
			return fmt.Errorf("--talos-defaults: %w", err)
		}
	}

	if *images != "" {
		refs, err := readImageList(*images, stdin)
		if err != nil {
			return err
		}

		sel.Images = refs
	}

	if len(sel.Versions) == 0 && len(sel.Images) == 0 && len(sel.TalosDefaults) == 0 {
		return errors.New("nothing to copy: give --version, --talos-defaults and/or --images")
	}

	var keychain authn.Keychain = authn.DefaultKeychain

	dst, err := endpoint(*to, *insecure, nil)
	if err != nil {
		return err
	}

	dstReg, toRegistry := dst.(mirror.Registry)

	toAuth, err := destinationAuth(*toUser, *toPassword, *toPasswordFile)
	if err != nil {
		return err
	}

	if toAuth != nil {
		if !toRegistry || dstReg.Upstream {
			return errors.New("--to-username/--to-password are for a registry or kiln destination")
		}

		// The given credentials for the destination, docker's for the rest.
		keychain = authn.NewMultiKeychain(hostKeychain{host: dstReg.Registry.RegistryStr(), auth: toAuth}, authn.DefaultKeychain)
	}

	opts := []remote.Option{remote.WithAuthFromKeychain(keychain), remote.WithJobs(*jobs)}

	src, err := endpoint(*from, *insecure, opts)
	if err != nil {
		return err
	}

	if dst, err = endpoint(*to, *insecure, opts); err != nil {
		return err
	}

	copyOpts := mirror.Options{Jobs: *jobs, DryRun: *dryRun, Progress: mirror.NewRenderer(stderr).Event}

	var p *signing.Policy

	if !*skipVerify {
		if p, err = signing.LoadPolicy(*policy); err != nil {
			return err
		}
	}

	carried, err := carriedRoot(ctx, *trustedRoot, *tufURL, *tufRoot, src, p)
	if err != nil {
		return err
	}

	if carried != nil {
		fmt.Fprintf(stderr, "Sigstore trusted root: %s\n", carried.Describe())

		tj, err := carried.TUFJSON()
		if err != nil {
			return err
		}

		copyOpts.TrustedRoot = &mirror.TrustedRoot{JSON: carried.TrustedRoot, TUF: tj}
	}

	if *skipVerify {
		fmt.Fprintln(stderr, "WARNING: --insecure-skip-verify: signatures are NOT verified; kiln serve will still refuse unverifiable images")
	} else {
		if p.UsesMirrorRoot() && carried == nil {
			fmt.Fprintf(stderr, "WARNING: the trust policy's keyless rules use the trusted root that came with the mirror (trustedRoot: mirror), "+
				"and there is none (%s carries none, or --trusted-root none): images those rules govern will be refused; "+
				"fetch it on a connected machine with --trusted-root tuf\n", src)
		}

		v, err := signing.NewVerifier(p, signing.WithRemoteOptions(opts...),
			signing.WithMirrorRoot(func(context.Context) (*signing.CarriedRoot, error) { return carried, nil }))
		if err != nil {
			return err
		}

		copyOpts.Verifier = v
		copyOpts.HasRule = func(repo name.Repository) bool {
			_, ok := p.RuleFor(repo)

			return ok
		}
	}

	plan, err := mirror.NewPlan(ctx, src, sel)
	if err != nil {
		return fmt.Errorf("plan: %w", err)
	}

	if *dryRun {
		if err := plan.WriteText(stdout); err != nil {
			return err
		}
	} else {
		for _, n := range plan.Notes {
			fmt.Fprintln(stderr, "note:", n)
		}
	}

	stats, err := mirror.Copy(ctx, plan, dst, copyOpts)
	if err != nil {
		return err
	}

	prefix := "copied"
	if *dryRun {
		prefix = "dry run, would copy"
	}

	if _, err := fmt.Fprintf(stdout, "%s %s -> %s: %s\n", prefix, src, dst, stats); err != nil {
		return err
	}

	if !*dryRun && stats.BlobsCopied == 0 && stats.ManifestsWritten == 0 && stats.TagsWritten == 0 {
		if _, err := fmt.Fprintf(stdout, "nothing copied: %s already holds all %d items\n", dst, stats.Items); err != nil {
			return err
		}
	}

	if reg, ok := dst.(mirror.Registry); ok && !reg.Upstream && !*dryRun {
		return lockReleases(ctx, reg, keychain, plan.ReleaseDigests(), stdout, stderr)
	}

	return nil
}

// carriedRoot finds the Sigstore trusted root to carry: fetched through TUF
// (verified from --tuf-root, else the policy's tufRoot, else the
// public-good root) or read from the source.
func carriedRoot(ctx context.Context, mode, tufURL, tufRootFile string, src mirror.Endpoint, p *signing.Policy) (*signing.CarriedRoot, error) {
	if mode == "auto" {
		mode = "source"
		if reg, ok := src.(mirror.Registry); ok && reg.Upstream {
			mode = "tuf"
		}
	}

	switch mode {
	case "none":
		return nil, nil
	case "source":
		if reg, ok := src.(mirror.Registry); ok && reg.Upstream {
			return nil, errors.New("--trusted-root source: the upstream registries carry no trusted root; use --trusted-root tuf")
		}

		return mirror.CarriedRoot(src)(ctx)
	case "tuf":
		anchor := signing.PublicGoodTUFRoot()

		switch {
		case tufRootFile != "":
			b, err := os.ReadFile(tufRootFile)
			if err != nil {
				return nil, fmt.Errorf("--tuf-root: %w", err)
			}

			anchor = b
		case p != nil:
			anchor = p.TUFRoot()
		}

		c, err := signing.FetchTrustedRoot(ctx, signing.TUFOptions{URL: tufURL, Root: anchor})
		if err != nil {
			return nil, fmt.Errorf("fetching Sigstore's trusted root: %w", err)
		}

		return c, nil
	default:
		return nil, fmt.Errorf("--trusted-root %q: use tuf, source, none or auto", mode)
	}
}

// endpoint parses an endpoint; --insecure makes a registry plain HTTP.
func endpoint(s string, insecure bool, opts []remote.Option) (mirror.Endpoint, error) {
	ep, err := mirror.ParseEndpoint(s, opts...)
	if err != nil {
		return nil, err
	}

	if reg, ok := ep.(mirror.Registry); ok && insecure {
		r, err := name.NewRegistry(reg.Registry.Name(), name.Insecure)
		if err != nil {
			return nil, err
		}

		reg.Registry = r

		return reg, nil
	}

	return ep, nil
}

// parseVersions reads a flag's comma-separated Talos versions.
func parseVersions(flagName, s string) ([]release.Version, error) {
	var vs []release.Version

	for _, p := range splitList(s) {
		v, err := release.ParseVersion(p)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", flagName, err)
		}

		vs = append(vs, v)
	}

	return vs, nil
}

func splitList(s string) []string {
	var out []string

	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}

	return out
}

func namesOrAll(s string) []string {
	switch strings.TrimSpace(s) {
	case "all":
		return []string{mirror.All}
	case "none", "":
		return nil
	}

	return splitList(s)
}

// schematicSelection adds the extensions and overlays the --schematic
// files name to those of --extensions and --overlays; with --schematic,
// either flag not given means none rather than all.
func schematicSelection(fs *flag.FlagSet, files string, exts, ovls []string) ([]string, []string, error) {
	if files == "" {
		return exts, ovls, nil
	}

	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })

	if !set["extensions"] {
		exts = nil
	}

	if !set["overlays"] {
		ovls = nil
	}

	for _, file := range splitList(files) {
		data, err := os.ReadFile(file)
		if err != nil {
			return nil, nil, fmt.Errorf("--schematic: %w", err)
		}

		sc, err := schematic.Parse(data)
		if err != nil {
			return nil, nil, fmt.Errorf("--schematic %s: %w", file, err)
		}

		for _, e := range sc.Customization.SystemExtensions.OfficialExtensions {
			if !slices.Contains(exts, e) {
				exts = append(exts, e)
			}
		}

		if o := sc.Overlay.Name; o != "" && !slices.Contains(ovls, o) {
			ovls = append(ovls, o)
		}
	}

	return exts, ovls, nil
}

// readImageList reads --images: a file, or stdin for "-".
func readImageList(path string, stdin io.Reader) ([]string, error) {
	if path == "-" {
		return mirror.ReadImageList(stdin, "--images -")
	}

	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--images: %w", err)
	}
	defer f.Close()

	return mirror.ReadImageList(f, path)
}
