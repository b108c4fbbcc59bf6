package server

import (
	"bytes"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/access"
	"github.com/kiln-dev/kiln/builder"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/echo"
	"github.com/kiln-dev/kiln/registry"
	"github.com/kiln-dev/kiln/schematic"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/storage"
)

// signingKeyHandler serves the public half of kiln's signing key as the
// public factory serves its own: the PEM users give `cosign verify --key`.
func signingKeyHandler(s *signing.Signer) http.HandlerFunc {
	pem := s.PublicKeyPEM()

	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(pem) //nolint:errcheck // the client is gone
	}
}

// installerFrontend is the public factory's registry frontend on kiln's
// /v2/: <image>/<schematic>:<version> with <image> installer or
// <platform>-installer. The first pull of such a tag builds the installer
// index (Builder.Installer, single-flight with every other build), pushes
// it into the embedded registry under that repository, signs it with kiln's
// key (the legacy .sig tag) and only then tags it; every request, that one
// included, is then answered by the embedded registry itself, which serves
// manifests by tag and digest, blobs and HEAD, with its own access rules
// (anonymous reads unless --auth-reads, writes for credentials only).
type installerFrontend struct {
	registry  http.Handler
	builder   *builder.Builder
	signer    *signing.Signer
	authn     *access.Authenticator
	authReads bool
	// local is the embedded registry as kiln reaches it in process.
	local  name.Registry
	remote []remote.Option
	// verifier checks kiln's signatures over what the registry holds.
	verifier signature.Verifier
	// publicHost names the repositories in the signatures: the host
	// clients pull from.
	publicHost string
	logger     *slog.Logger
}

func newInstallerFrontend(reg http.Handler, b *builder.Builder, s *signing.Signer, authn *access.Authenticator, authReads bool,
	publicHost string, logger *slog.Logger,
) (*installerFrontend, error) {
	local, err := name.NewRegistry(embeddedHost, name.Insecure)
	if err != nil {
		return nil, err
	}

	pub, err := cryptoutils.UnmarshalPEMToPublicKey(s.PublicKeyPEM())
	if err != nil {
		return nil, err
	}

	verifier, err := signature.LoadVerifier(pub, crypto.SHA256)
	if err != nil {
		return nil, err
	}

	return &installerFrontend{
		registry: reg, builder: b, signer: s, authn: authn, authReads: authReads, verifier: verifier,
		local: local, remote: []remote.Option{remote.WithTransport(registry.Transport(reg))},
		publicHost: publicHost, logger: logger,
	}, nil
}

// installerPath matches /v2/<image>/<schematic>/manifests/<ref>, the one
// route the frontend acts on; every other /v2/ request goes straight to the
// registry.
var installerPath = regexp.MustCompile(`^/v2/([a-z0-9-]+)/([0-9a-f]{64})/manifests/([^/]+)$`)

// installerRoute is a parsed manifest request for an installer.
type installerRoute struct {
	image      string // as requested: "metal-installer", "installer-secureboot"
	platform   string // "metal"
	secureBoot bool
	schematic  string
	tag        string
}

// parseInstallerRoute parses a manifest request by version tag of an
// installer repository; ok is false for anything else.
func parseInstallerRoute(path string) (installerRoute, bool) {
	m := installerPath.FindStringSubmatch(path)
	if m == nil {
		return installerRoute{}, false
	}

	rt := installerRoute{image: m[1], schematic: m[2], tag: m[3]}

	// Digests and cosign's sha256-<hex>.sig tags are what the registry
	// holds already; a version tag is what may need a build.
	if !strings.HasPrefix(rt.tag, "v") || !schematic.ValidID(rt.schematic) {
		return installerRoute{}, false
	}

	image, sb := strings.CutSuffix(rt.image, "-secureboot")
	rt.secureBoot = sb

	switch {
	case image == "installer":
		rt.platform = "metal"
	case strings.HasSuffix(image, "-installer") && image != "-installer":
		rt.platform = strings.TrimSuffix(image, "-installer")
	default:
		return installerRoute{}, false
	}

	return rt, true
}

func (f *installerFrontend) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rt, ok := parseInstallerRoute(r.URL.Path)
	if !ok || (r.Method != http.MethodGet && r.Method != http.MethodHead) || !f.mayRead(r) {
		// The registry answers (or refuses) it: a client without the
		// credential --auth-reads asks for gets the registry's 401
		// before anything is built.
		f.registry.ServeHTTP(w, r)

		return
	}

	if _, _, err := f.ensure(r.Context(), rt, nil); err != nil {
		f.writeError(w, r, rt, err)

		return
	}

	f.registry.ServeHTTP(w, r)
}

// mayRead reports whether the client may pull from the registry.
func (f *installerFrontend) mayRead(r *http.Request) bool {
	if !f.authReads {
		return true
	}

	_, err := f.authn.Authenticate(r)

	return err == nil
}

// ensure makes the tag of rt exist in the embedded registry, building,
// pushing and signing the installer when it does not, and returns the
// digest the tag names; hit says it was there already. progress (may be
// nil) receives the build's events.
func (f *installerFrontend) ensure(ctx context.Context, rt installerRoute, progress func(builder.Event)) (digest v1.Hash, hit bool, err error) {
	if rt.secureBoot {
		return v1.Hash{}, false, &builder.UnsupportedError{What: "SecureBoot installers (" + rt.image + ")"}
	}

	repo := f.local.Repo(rt.image, rt.schematic)
	tag := repo.Tag(rt.tag)

	head := func(ctx context.Context) (v1.Hash, error) {
		desc, err := remote.Head(tag, append(f.remote, remote.WithContext(ctx))...)
		if err != nil {
			return v1.Hash{}, err
		}

		return desc.Digest, nil
	}

	// What the tag names is served only while kiln's signature over it
	// verifies, as the factory does: anything else (an image pushed over
	// the tag with the admin credential, a signature lost) is rebuilt.
	if d, err := head(ctx); err == nil {
		serr := f.signed(ctx, repo, d)
		if serr == nil {
			return d, true, nil
		}

		f.logger.WarnContext(ctx, "an installer tag names an image kiln's key did not sign: building it again",
			"image", repo.Name()+":"+rt.tag, "digest", d.String(), "error", serr)
	} else if !isNotFound(err) {
		return v1.Hash{}, false, fmt.Errorf("looking up %s: %w", tag, err)
	}

	ip, err := f.builder.PlanInstaller(ctx, builder.InstallerRequest{SchematicID: rt.schematic, Version: rt.tag, Platform: rt.platform})
	if err != nil {
		return v1.Hash{}, false, err
	}

	public, err := f.public(rt)
	if err != nil {
		return v1.Hash{}, false, err
	}

	err = f.builder.Installer(ctx, ip, repo.Name(), progress, func(ctx context.Context, idx v1.ImageIndex) error {
		// Another pull may have published it while this one waited.
		if d, err := head(ctx); err == nil && f.signed(ctx, repo, d) == nil {
			return nil
		}

		d, err := idx.Digest()
		if err != nil {
			return err
		}

		opts := append(f.remote, remote.WithContext(ctx))
		ref := repo.Digest(d.String())

		// By digest, signed, then tagged: a tag that resolves is always
		// signed.
		if err := remote.WriteIndex(ref, idx, opts...); err != nil {
			return fmt.Errorf("pushing installer %s: %w", ref, err)
		}

		if err := f.signer.SignLegacyAs(ctx, ref, public.Context(), f.remote...); err != nil {
			return fmt.Errorf("signing installer %s: %w", ref, err)
		}

		if err := remote.Tag(tag, idx, opts...); err != nil {
			return fmt.Errorf("tagging installer %s: %w", tag, err)
		}

		f.logger.InfoContext(ctx, "published installer", "image", public.Name(), "digest", d.String())

		return nil
	})
	if err != nil {
		return v1.Hash{}, false, err
	}

	d, err := head(ctx)
	if err != nil {
		return v1.Hash{}, false, fmt.Errorf("looking up %s after publishing it: %w", tag, err)
	}

	return d, false, nil
}

// public is rt's tag as clients pull it from kiln.
func (f *installerFrontend) public(rt installerRoute) (name.Tag, error) {
	return name.NewTag(f.publicHost+"/"+rt.image+"/"+rt.schematic+":"+rt.tag, name.Insecure)
}

// maxSignaturePayload bounds the simple-signing payload read from the
// registry (cosign's are a few hundred bytes).
const maxSignaturePayload = 64 << 10

// signed checks the legacy cosign signature of repo@d with kiln's key: a
// layer of its sha256-<hex>.sig image whose payload names d and whose
// signature verifies.
func (f *installerFrontend) signed(ctx context.Context, repo name.Repository, d v1.Hash) error {
	sigs, err := remote.Image(repo.Tag(d.Algorithm+"-"+d.Hex+".sig"), append(f.remote, remote.WithContext(ctx))...)
	if err != nil {
		return fmt.Errorf("reading its signature: %w", err)
	}

	m, err := sigs.Manifest()
	if err != nil {
		return fmt.Errorf("reading its signature: %w", err)
	}

	for _, l := range m.Layers {
		if err := f.verifyLayer(sigs, l, d); err == nil {
			return nil
		}
	}

	return errors.New("no signature by kiln's key")
}

func (f *installerFrontend) verifyLayer(sigs v1.Image, l v1.Descriptor, d v1.Hash) error {
	sig, err := base64.StdEncoding.DecodeString(l.Annotations["dev.cosignproject.cosign/signature"])
	if err != nil {
		return err
	}

	layer, err := sigs.LayerByDigest(l.Digest)
	if err != nil {
		return err
	}

	rc, err := layer.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()

	payload, err := io.ReadAll(io.LimitReader(rc, maxSignaturePayload))
	if err != nil {
		return err
	}

	if err := f.verifier.VerifySignature(bytes.NewReader(sig), bytes.NewReader(payload)); err != nil {
		return err
	}

	var p struct {
		Critical struct {
			Image struct {
				DockerManifestDigest string `json:"docker-manifest-digest"`
			} `json:"image"`
		} `json:"critical"`
	}

	if err := json.Unmarshal(payload, &p); err != nil {
		return err
	}

	if p.Critical.Image.DockerManifestDigest != d.String() {
		return fmt.Errorf("signature is for %s", echo.Clip(p.Critical.Image.DockerManifestDigest))
	}

	return nil
}

func isNotFound(err error) bool {
	var terr *transport.Error

	return errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound
}

// writeError answers in the registry's error format (OCI distribution
// spec), which crane, containerd and cosign print.
func (f *installerFrontend) writeError(w http.ResponseWriter, r *http.Request, rt installerRoute, err error) {
	st, _ := status.FromError(toStatus(err))
	httpCode, retryAfter := httpStatusOf(st)
	msg := st.Message()

	var (
		code     string
		notFound *builder.SchematicNotFoundError
	)

	switch {
	case errors.As(err, &notFound):
		code, msg = "NAME_UNKNOWN", "repository "+rt.image+"/"+rt.schematic+": "+msg
	case st.Code() == codes.NotFound, st.Code() == codes.InvalidArgument:
		// A tag that names no version of the mirror is a manifest that
		// does not exist.
		httpCode, code = http.StatusNotFound, "MANIFEST_UNKNOWN"
		msg = "manifest " + rt.image + "/" + rt.schematic + ":" + echo.Clip(rt.tag) + ": " + msg
	case st.Code() == codes.Unimplemented:
		code = "UNSUPPORTED"
		msg = "kiln does not build " + msg
	case httpCode == http.StatusServiceUnavailable:
		code = "UNAVAILABLE"
	case httpCode == http.StatusUnauthorized:
		code = "UNAUTHORIZED"
	default:
		code = "UNKNOWN"
	}

	if httpCode >= http.StatusInternalServerError && st.Code() != codes.Unimplemented {
		f.logger.WarnContext(r.Context(), "installer request failed", "path", echo.Clip(r.URL.Path), "status", httpCode,
			"request_id", requestIDFrom(r.Context()), "error", err)
	}

	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(httpCode)

	json.NewEncoder(w).Encode(map[string]any{ //nolint:errcheck // the client is gone
		"errors": []map[string]string{{"code": code, "message": msg}},
	})
}

// GetInstallerImage makes sure the installer is in kiln's registry, as its
// first pull would, and says how to pull it.
func (s *imageService) GetInstallerImage(req *kilnv1.GetInstallerImageRequest, stream kilnv1.ImageService_GetInstallerImageServer) error {
	f := s.domain.installers
	if f == nil {
		return status.Error(codes.Unimplemented, "this kiln serves no installers: they are pushed into its embedded registry, and it reads releases from --registry")
	}

	image := req.GetImage()
	if image == "" {
		image = "metal-installer"
	}

	version := strings.TrimSpace(req.GetVersion())
	if version != "" && !strings.HasPrefix(version, "v") {
		version = "v" + version
	}

	if !schematic.ValidID(req.GetSchematicId()) {
		return toStatus(&builder.SchematicNotFoundError{ID: req.GetSchematicId()})
	}

	rt, ok := parseInstallerRoute("/v2/" + image + "/" + req.GetSchematicId() + "/manifests/" + version)
	if !ok {
		return status.Errorf(codes.InvalidArgument, "image %q, version %q: want image installer or <platform>-installer and a version v<major>.<minor>.<patch>",
			echo.Clip(image), echo.Clip(req.GetVersion()))
	}

	out := newEventStream(stream.Send)

	d, hit, err := f.ensure(stream.Context(), rt, func(e builder.Event) {
		out.progress(&kilnv1.GetInstallerImageResponse{Event: &kilnv1.GetInstallerImageResponse_Progress{
			Progress: progressEvent(e.Phase, e.Artifact, e.Message, e.Done, e.Total),
		}})
	})

	var last *kilnv1.GetInstallerImageResponse

	if err == nil {
		if hit {
			out.progress(&kilnv1.GetInstallerImageResponse{Event: &kilnv1.GetInstallerImageResponse_CacheHit{CacheHit: true}})
		}

		public, perr := f.public(rt)
		if perr != nil {
			err = perr
		} else {
			last = &kilnv1.GetInstallerImageResponse{Event: &kilnv1.GetInstallerImageResponse_Done{Done: &kilnv1.InstallerImage{
				Reference: public.Name(), Digest: d.String(),
			}}}
		}
	}

	return toStatus(out.finish(last, err))
}

// PublishInstaller implements builder.InstallerPublisher: the installer in
// kiln's registry, as its first pull leaves it (built, pushed, signed,
// tagged), for an image cache to carry.
// Without build, only an installer published already (tagged, signed by
// kiln) is taken.
func (f *installerFrontend) PublishInstaller(ctx context.Context, req builder.InstallerRequest, build bool) (*builder.PublishedInstaller, error) {
	rt, ok := parseInstallerRoute("/v2/" + req.Platform + "-installer/" + req.SchematicID + "/manifests/" + req.Version)
	if !ok {
		return nil, fmt.Errorf("installer %s-installer/%s:%s: not an installer kiln serves", echo.Clip(req.Platform), echo.Clip(req.SchematicID), echo.Clip(req.Version))
	}

	repo := f.local.Repo(rt.image, rt.schematic)

	var (
		d   v1.Hash
		err error
	)

	if build {
		d, _, err = f.ensure(ctx, rt, nil)
	} else {
		d, err = f.published(ctx, repo.Tag(rt.tag))
	}

	if err != nil {
		return nil, err
	}

	public, err := f.public(rt)
	if err != nil {
		return nil, err
	}

	return &builder.PublishedInstaller{
		Public: public,
		Source: repo.Digest(d.String()),
		Remote: f.remote,
		Check: signing.CheckFunc(func(ctx context.Context, ref name.Digest) error {
			h, err := v1.NewHash(ref.DigestStr())
			if err != nil {
				return err
			}

			if err := f.signed(ctx, ref.Context(), h); err != nil {
				return fmt.Errorf("installer %s: %w: %w", ref, signing.ErrUntrusted, err)
			}

			return nil
		}),
	}, nil
}

// published is the digest tag names when kiln's signature over it
// verifies; an error matching storage.ErrNotFound when there is none.
func (f *installerFrontend) published(ctx context.Context, tag name.Tag) (v1.Hash, error) {
	desc, err := remote.Head(tag, append(f.remote, remote.WithContext(ctx))...)
	if isNotFound(err) {
		return v1.Hash{}, fmt.Errorf("installer %s: %w", tag, storage.ErrNotFound)
	}

	if err != nil {
		return v1.Hash{}, fmt.Errorf("looking up %s: %w", tag, err)
	}

	if err := f.signed(ctx, tag.Context(), desc.Digest); err != nil {
		return v1.Hash{}, fmt.Errorf("installer %s not signed by kiln (%v): %w", tag, err, storage.ErrNotFound)
	}

	return desc.Digest, nil
}
