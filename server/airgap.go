package server

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"

	"github.com/google/go-containerregistry/pkg/v1/remote"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/machineconfig"
	"github.com/kiln-dev/kiln/signing"
)

// maxCatalog bounds the repositories read to find the hosts a mirror holds.
const maxCatalog = 100_000

// defaultCacheVolume sizes the IMAGECACHE volume a patch asks for when the
// schematic embeds an image cache: twice Talos's own default maximum (1 GiB),
// which a Kubernetes image set alone comes close to.
const defaultCacheVolume = "2GiB"

// airgapRoutes serve the machine-config patch a node needs to pull from
// kiln (package machineconfig).
type airgapRoutes struct {
	schematics *schematics
	releases   *artifacts.Manager
	// kiln is kiln as nodes reach it, with the CA of its certificate.
	kiln machineconfig.Registry
	// mirror is the external registry the releases are read from; zero for
	// kiln's embedded one.
	mirror machineconfig.Registry
	// signer is kiln's cosign key, which signs its installers (the public
	// half goes into the patch); Build makes it on first start, a server
	// built without it leaves the verification out.
	signer *signing.Signer
	// authn, with --auth-reads, is asked for a credential on every request:
	// a patch lists the upstream hosts the mirror holds, which its catalog
	// then shows only to a client with one.
	authn *access.Authenticator
	// setupErr, when kiln's own settings cannot make a patch, answers
	// every request.
	setupErr error
	errors   *factoryRoutes
	logger   *slog.Logger
}

func newAirgapRoutes(cfg Config, sc *schematics, releases *artifacts.Manager, signer *signing.Signer, authn *access.Authenticator, logger *slog.Logger) (*airgapRoutes, error) {
	if cfg.AuthReads && authn == nil {
		return nil, errors.New("--auth-reads needs an authenticator")
	}

	if !cfg.AuthReads {
		authn = nil
	}

	a := &airgapRoutes{
		schematics: sc,
		releases:   releases,
		authn:      authn,
		kiln:       machineconfig.Registry{URL: originOf(cfg.externalURL())},
		signer:     signer,
		errors:     &factoryRoutes{logger: logger},
		logger:     logger,
	}

	if strings.HasPrefix(a.kiln.URL, "https://") && cfg.TLSCert != "" {
		ca, err := chainRoot(cfg.TLSCert)
		if err != nil {
			return nil, err
		}

		a.kiln.CA = ca
	}

	if cfg.Source.Registry != "" {
		scheme := "https://"
		if cfg.Source.Insecure {
			scheme = "http://"
		}

		a.mirror.URL = scheme + cfg.Source.Registry

		if cfg.Source.CAFile != "" && !cfg.Source.Insecure {
			ca, err := os.ReadFile(cfg.Source.CAFile)
			if err != nil {
				return nil, fmt.Errorf("registry CA: %w", err)
			}

			a.mirror.CA = ca
		}
	}

	// kiln's own settings, checked once: a node-facing address or CA
	// that cannot go into a patch is this kiln's fault, not a client's.
	if _, err := machineconfig.Generate(machineconfig.Options{
		Version: mustVersion(machineconfig.MinVersion), Schematic: strings.Repeat("0", 64),
		Kiln: a.kiln, Mirror: a.mirror, Namespace: releases.Source().Namespace,
	}); err != nil {
		msg := strings.TrimPrefix(err.Error(), machineconfig.ErrInvalid.Error()+": ")
		a.setupErr = status.Error(codes.FailedPrecondition, "this kiln cannot write machine-config patches: "+msg+" (kiln serve --external-url, --registry-ca)")

		logger.Warn("machine-config patches are off", "error", msg)
	}

	return a, nil
}

func mustVersion(s string) machineconfig.Version {
	v, err := machineconfig.ParseVersion(s)
	if err != nil {
		panic(err)
	}

	return v
}

// originOf is scheme://host of a URL (the external URL may carry a path).
func originOf(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return s
	}

	return u.Scheme + "://" + u.Host
}

// chainRoot is the last certificate of the chain kiln serves: the one
// nearest the root, which Go's verifier (containerd's and Talos's) accepts
// as a trust anchor whether it is a root, an intermediate or kiln's own
// self-signed certificate.
func chainRoot(certFile string) ([]byte, error) {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("TLS certificate: %w", err)
	}

	var last *pem.Block

	for rest := b; ; {
		var block *pem.Block

		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}

		if block.Type == "CERTIFICATE" {
			last = block
		}
	}

	if last == nil {
		return nil, fmt.Errorf("TLS certificate %s: no PEM certificate", certFile)
	}

	return pem.EncodeToMemory(last), nil
}

func (a *airgapRoutes) register(mux *http.ServeMux) {
	mux.HandleFunc("GET /config/{schematic}/{version}/airgap.yaml", a.patch)
}

// The query parameters of /config/.../airgap.yaml.
var airgapParams = map[string]bool{"form": true, "platform": true, "install-disk": true, "cache-volume": true}

// patch answers the patch for a schematic and version:
//
//	?form=legacy|documents   default: documents from Talos 1.12
//	?platform=metal          the installer is <platform>-installer
//	?install-disk=/dev/sda   the disk it installs to (needed from 1.14)
//	?cache-volume=2GiB|none  the IMAGECACHE volume an ISO's cache is copied to
func (a *airgapRoutes) patch(w http.ResponseWriter, r *http.Request) {
	if !a.authorized(w, r) {
		return
	}

	if a.setupErr != nil {
		a.errors.writeError(w, r, a.setupErr)

		return
	}

	opts, err := a.options(r)
	if err != nil {
		a.errors.writeError(w, r, err)

		return
	}

	p, err := machineconfig.Generate(opts)
	if errors.Is(err, machineconfig.ErrInvalid) {
		err = &invalidArgumentError{msg: strings.TrimPrefix(err.Error(), machineconfig.ErrInvalid.Error()+": ")}
	}

	if err != nil {
		a.errors.writeError(w, r, err)

		return
	}

	for _, warning := range p.Warnings {
		a.logger.Debug("machine-config patch", "schematic", opts.Schematic, "version", opts.Version.String(), "warning", warning)
	}

	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(p.YAML) //nolint:errcheck // the client is gone
}

// authorized answers 401 with a basic-auth challenge, as the embedded
// registry does, to a request without a valid credential when reads need
// one.
func (a *airgapRoutes) authorized(w http.ResponseWriter, r *http.Request) bool {
	if a.authn == nil {
		return true
	}

	_, err := a.authn.Authenticate(r)
	switch {
	case err == nil:
		return true
	case errors.Is(err, access.ErrNoCredentials):
		w.Header().Set("WWW-Authenticate", access.Challenge)
		http.Error(w, "this kiln requires credentials for reads (--auth-reads): basic auth as "+access.AdminUser+
			" with <data-dir>/auth/admin-password, a user of <data-dir>/auth/htpasswd, or a client certificate of --client-ca", http.StatusUnauthorized)
	case errors.Is(err, access.ErrBadCredentials):
		w.Header().Set("WWW-Authenticate", access.Challenge)
		http.Error(w, "invalid credentials", http.StatusUnauthorized)
	default:
		a.errors.writeError(w, r, err)
	}

	return false
}

func (a *airgapRoutes) options(r *http.Request) (machineconfig.Options, error) {
	q := r.URL.Query()
	for k := range q {
		if !airgapParams[k] {
			return machineconfig.Options{}, &invalidArgumentError{msg: fmt.Sprintf("unknown parameter %q: want form, platform, install-disk or cache-volume", k)}
		}
	}

	_, sc, err := a.schematics.get(r.Context(), r.PathValue("schematic"))
	if err != nil {
		return machineconfig.Options{}, err
	}

	v, err := machineconfig.ParseVersion(r.PathValue("version"))
	if err != nil {
		return machineconfig.Options{}, &invalidArgumentError{msg: strings.TrimPrefix(err.Error(), machineconfig.ErrInvalid.Error()+": ")}
	}

	if _, err := a.releases.CheckVersion(r.Context(), v.String()); err != nil {
		return machineconfig.Options{}, err
	}

	form, err := machineconfig.ParseForm(q.Get("form"))
	if err != nil {
		return machineconfig.Options{}, &invalidArgumentError{msg: strings.TrimPrefix(err.Error(), machineconfig.ErrInvalid.Error()+": ")}
	}

	opts := machineconfig.Options{
		Version:     v,
		Schematic:   r.PathValue("schematic"),
		Kiln:        a.kiln,
		Mirror:      a.mirror,
		Namespace:   a.releases.Source().Namespace,
		Platform:    q.Get("platform"),
		Form:        form,
		InstallDisk: q.Get("install-disk"),
		ImageCache:  sc.Customization.ImageCache.Enabled(),
		AuthReads:   a.authn != nil,
	}

	switch cv := q.Get("cache-volume"); cv {
	case "":
		opts.CacheVolume = defaultCacheVolume
	case "none":
	default:
		opts.CacheVolume = cv
	}

	if opts.Held, err = a.held(r.Context()); err != nil {
		return machineconfig.Options{}, err
	}

	opts.SigningKey = a.signingKey()

	return opts, nil
}

// held lists the upstream hosts the mirror holds, from its catalog. A
// registry that will not list its catalog (Harbor, to anyone but an admin)
// gets the default hosts only.
func (a *airgapRoutes) held(ctx context.Context) ([]string, error) {
	src := a.releases.Source()

	var (
		repos []string
		last  string
	)

	for len(repos) < maxCatalog {
		page, err := remote.CatalogPage(src.Registry, last, 1000, append([]remote.Option{remote.WithContext(ctx)}, src.Remote...)...)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}

			a.logger.Warn("machine-config patch: cannot list the mirror's repositories; mirroring the default registries only",
				"registry", src.Registry.Name(), "error", err)

			return nil, nil
		}

		repos = append(repos, page...)

		if len(page) < 1000 {
			break
		}

		last = page[len(page)-1]
	}

	return machineconfig.Hosts(repos, src.Namespace), nil
}

// signingKey is the public half of kiln's signing key, or nil when kiln
// has none.
func (a *airgapRoutes) signingKey() []byte {
	if a.signer == nil {
		return nil
	}

	return a.signer.PublicKeyPEM()
}
