package signing

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/digitorus/timestamp"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/fulcio/certificate"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"

	"github.com/kiln-dev/kiln/internal/regerr"
)

// Verification methods reported by Verified.Method.
const (
	MethodKeyLegacy     = "key legacy .sig"
	MethodKeyBundle     = "key bundle"
	MethodKeylessLegacy = "keyless legacy .sig"
	MethodKeylessBundle = "keyless bundle"
)

// cosignSignPredicate is the in-toto predicate type that `cosign sign` puts
// in new-format bundles. Other predicates (SBOMs, provenance, ...) signed by
// the same key attest something else and must not count as a signature.
const cosignSignPredicate = "https://sigstore.dev/cosign/sign/v1"

// maxCacheEntries bounds the verified cache; when full it is simply reset,
// which costs one extra verification per artifact and never trusts more.
const maxCacheEntries = 4096

// Verified is an artifact a Checker accepted: by the trust policy (a
// *Verifier) or a CheckFunc. Its fields are unexported so that only package
// signing can create a non-zero one; the build plan holds its inputs as
// Verified values.
type Verified struct {
	ref      name.Digest
	rule     string
	method   string
	signer   string
	evidence string
}

// Digest is the verified artifact reference (repository@digest).
func (v Verified) Digest() name.Digest { return v.ref }

// Rule names the policy rule that admitted the artifact.
func (v Verified) Rule() string { return v.rule }

// Method says how it was verified, one of the Method* constants.
func (v Verified) Method() string { return v.method }

// Signer describes the key or certificate identity that signed it.
func (v Verified) Signer() string { return v.signer }

// Evidence says what besides the signature was checked: the transparency
// log proof and timestamps of a keyless signature ("Rekor v2 inclusion
// proof, RFC 3161 timestamp"), or that a trusted key signed it.
func (v Verified) Evidence() string { return v.evidence }

// IsZero reports whether v is the zero value, i.e. nothing was verified.
func (v Verified) IsZero() bool { return v.method == "" }

// Option configures a Verifier.
type Option func(*Verifier)

// WithRemoteOptions sets the go-containerregistry options (transport, auth,
// user agent, ...) used to read signatures from the image's registry.
func WithRemoteOptions(opts ...remote.Option) Option {
	return func(v *Verifier) { v.remoteOpts = append(v.remoteOpts, opts...) }
}

// WithLogger sets the logger; the default discards everything.
func WithLogger(l *slog.Logger) Option {
	return func(v *Verifier) { v.log = l }
}

// WithMirrorRoot says where the trusted root that came with the mirror is
// (policy rules with `trustedRoot: mirror`): get returns it, or nil when
// there is none. It is called when such a rule is used, at most once every
// MirrorRootRefresh once a root was found, so a newly mirrored root is
// picked up without a restart; each distinct root is checked against the
// policy's TUF root once.
func WithMirrorRoot(get func(ctx context.Context) (*CarriedRoot, error)) Option {
	return func(v *Verifier) { v.mirrorRoot = get }
}

// Verifier verifies cosign signatures against a Policy. It is safe for
// concurrent use and remembers verified digests.
type Verifier struct {
	policy     *Policy
	remoteOpts []remote.Option
	log        *slog.Logger
	mirrorRoot func(ctx context.Context) (*CarriedRoot, error)

	mu    sync.Mutex
	cache map[cacheKey]Verified
	// The last trusted root that came with the mirror and verified, and
	// when it was read.
	mirrorDigest  string
	mirrorTrusted *root.TrustedRoot
	mirrorRead    time.Time
}

// MirrorRootRefresh is how long a trusted root that came with the mirror is
// used before WithMirrorRoot's function is asked again.
const MirrorRootRefresh = 30 * time.Second

type cacheKey struct {
	repo, digest, rule, root, identity string
}

// NewVerifier returns a Verifier for the policy.
func NewVerifier(p *Policy, opts ...Option) (*Verifier, error) {
	if p == nil || len(p.rules) == 0 {
		return nil, fmt.Errorf("%w: empty policy", ErrInvalidPolicy)
	}
	v := &Verifier{policy: p, cache: map[cacheKey]Verified{}}
	for _, o := range opts {
		o(v)
	}
	if v.log == nil {
		v.log = slog.New(slog.DiscardHandler)
	}
	return v, nil
}

// anchor is one thing a signature may verify against: one key, or one
// keyless identity with its trusted root. cosign's bundle verifier accepts a
// single identity per call, so each identity is its own anchor.
type anchor struct {
	desc    string
	keyless bool
	co      cosign.CheckOpts
}

// mirrorTrustedRoot returns the trusted root that came with the mirror,
// verified against the policy's TUF root, and its digest.
func (v *Verifier) mirrorTrustedRoot(ctx context.Context) (*root.TrustedRoot, string, error) {
	if v.mirrorRoot == nil {
		return nil, "", errors.New("no trusted root came with the mirror (this kiln command has no mirror to take one from)")
	}

	v.mu.Lock()
	if v.mirrorTrusted != nil && time.Since(v.mirrorRead) < MirrorRootRefresh {
		tr, d := v.mirrorTrusted, v.mirrorDigest
		v.mu.Unlock()

		return tr, d, nil
	}
	v.mu.Unlock()

	c, err := v.mirrorRoot(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("reading the trusted root that came with the mirror: %w", err)
	}

	if c == nil {
		return nil, "", errors.New("no trusted root came with the mirror (kiln mirror carries one when it fetches it through TUF: --trusted-root)")
	}

	d := c.Digest()

	v.mu.Lock()
	if v.mirrorDigest == d {
		tr := v.mirrorTrusted
		v.mirrorRead = time.Now()
		v.mu.Unlock()

		return tr, d, nil
	}
	v.mu.Unlock()

	tr, err := c.Verify(v.policy.TUFRoot())
	if err != nil {
		return nil, "", fmt.Errorf("the trusted root that came with the mirror (%s) does not verify against the policy's TUF root: %w", c.Describe(), err)
	}

	v.mu.Lock()
	v.mirrorDigest, v.mirrorTrusted, v.mirrorRead = d, tr, time.Now()
	v.mu.Unlock()
	v.log.InfoContext(ctx, "using the trusted root that came with the mirror", "root", c.Describe())

	return tr, d, nil
}

func (v *Verifier) anchors(r *rule, ropts []ociremote.Option, mirrorRoot *root.TrustedRoot, want *name.Repository) []anchor {
	claims := identityClaimVerifier(want)
	var out []anchor
	for _, k := range r.keys {
		out = append(out, anchor{
			desc: fmt.Sprintf("key %q", k.name),
			co: cosign.CheckOpts{
				RegistryClientOpts: ropts,
				SigVerifier:        k.verifier,
				ClaimVerifier:      claims,
				Offline:            true,
				// Keys are trusted by the policy itself; a key-signed
				// artifact in an air gap has no transparency log entry.
				IgnoreTlog: true,
				IgnoreSCT:  true,
			},
		})
	}
	if kl := r.keyless; kl != nil && (!kl.mirror || mirrorRoot != nil) {
		tm := kl.trustedRoot
		if kl.mirror {
			tm = mirrorRoot
		}
		for _, id := range kl.identities {
			out = append(out, anchor{
				desc:    describeIdentity(id),
				keyless: true,
				co: cosign.CheckOpts{
					RegistryClientOpts: ropts,
					TrustedMaterial:    tm,
					Identities:         []cosign.Identity{id},
					ClaimVerifier:      claims,
					// Offline: the transparency log proof must be in the
					// signature (SET or inclusion proof); never ask Rekor.
					Offline:   true,
					IgnoreSCT: kl.ignoreSCT,
				},
			})
		}
	}
	return out
}

func describeIdentity(id cosign.Identity) string {
	s, i := id.Subject, id.Issuer
	if id.SubjectRegExp != "" {
		s = "~" + id.SubjectRegExp
	}
	if id.IssuerRegExp != "" {
		i = "~" + id.IssuerRegExp
	}
	return fmt.Sprintf("identity %q issuer %q", s, i)
}

// Verify checks that ref carries a signature trusted for its repository by
// the policy and, under WithSignedIdentity, made for the repository the
// caller uses it as. It resolves nothing by tag: the caller passes the
// digest it will use. Every refusal matches ErrUntrusted.
func (v *Verifier) Verify(ctx context.Context, ref name.Digest) (Verified, error) {
	if err := ctx.Err(); err != nil {
		return Verified{}, err
	}
	h, err := v1.NewHash(ref.DigestStr())
	if err != nil {
		return Verified{}, refuse(ref, "", "malformed digest", err)
	}
	repo := ref.Context()
	r := v.policy.match(repo)
	if r == nil {
		return Verified{}, refuse(ref, "", fmt.Sprintf("no trust policy matches repository %s", repo.Name()), nil)
	}
	// A rule trusting the mirror's root: find and check that root first. A
	// rule that also lists keys can still be satisfied by a key without it.
	var mirrorRoot *root.TrustedRoot
	var rootDigest string
	var rootErr error
	if r.keyless != nil && r.keyless.mirror {
		mirrorRoot, rootDigest, rootErr = v.mirrorTrustedRoot(ctx)
		if rootErr != nil && len(r.keys) == 0 {
			err := refuse(ref, r.name, "keyless rule without a usable trusted root", rootErr)
			v.log.WarnContext(ctx, "signature verification refused", "image", repo.Name(), "digest", h.String(), "rule", r.name, "error", err)
			return Verified{}, err
		}
	}

	var want *name.Repository
	if w, ok := SignedIdentity(ctx); ok {
		want = &w
	}

	key := cacheKey{repo: repo.Name(), digest: h.String(), rule: r.canonical, root: rootDigest}
	if want != nil {
		key.identity = want.Name()
	}
	v.mu.Lock()
	got, ok := v.cache[key]
	v.mu.Unlock()
	if ok {
		return got, nil
	}

	// The caller's options first, the context last so it always applies.
	ropts := append(append([]remote.Option{}, v.remoteOpts...), remote.WithContext(ctx))
	anchors := v.anchors(r, []ociremote.Option{ociremote.WithRemoteOptions(ropts...)}, mirrorRoot, want)

	res, found, failures := v.verifyLegacy(ctx, ref, h, r, anchors)
	if rootErr != nil {
		failures = append(failures, fmt.Errorf("keyless identities not tried: %w", rootErr))
	}
	if res.IsZero() {
		var bfound bool
		var bfail []error
		res, bfound, bfail = v.verifyBundles(ctx, ref, h, r, anchors, want)
		found = found || bfound
		failures = append(failures, bfail...)
	}
	if err := ctx.Err(); err != nil && res.IsZero() {
		return Verified{}, err
	}
	if res.IsZero() {
		reason := "no signature verifies against the policy"
		idReason, misnamed := identityRefusal(failures)
		switch {
		case misnamed:
			reason = idReason
		case !found && len(failures) > 0:
			reason = "could not read signatures from the registry"
		case !found:
			reason = "no signatures found (no cosign .sig tag and no sigstore bundle referrer)"
		}
		err := refuse(ref, r.name, reason, errors.Join(failures...))
		v.log.WarnContext(ctx, "signature verification refused", "image", repo.Name(), "digest", h.String(), "rule", r.name, "error", err)
		return Verified{}, err
	}
	v.log.InfoContext(ctx, "signature verified", "image", repo.Name(), "digest", h.String(),
		"rule", r.name, "method", res.method, "signer", res.signer, "evidence", res.evidence)
	v.mu.Lock()
	if len(v.cache) >= maxCacheEntries {
		clear(v.cache)
	}
	v.cache[key] = res
	v.mu.Unlock()
	return res, nil
}

// verifyLegacy checks signatures stored under the sha256-<hex>.sig tag.
// found reports whether any signature was there at all.
func (v *Verifier) verifyLegacy(ctx context.Context, ref name.Digest, h v1.Hash, r *rule, anchors []anchor) (res Verified, found bool, failures []error) {
	ropts := anchors[0].co.RegistryClientOpts
	st, err := ociremote.SignatureTag(ref, ropts...)
	if err != nil {
		return Verified{}, false, []error{fmt.Errorf("legacy signature tag: %w", err)}
	}
	sigs, err := ociremote.Signatures(st, ropts...) // a missing tag yields an empty list
	if err != nil {
		return Verified{}, false, []error{fmt.Errorf("fetching %s: %w", st, err)}
	}
	list, err := sigs.Get()
	if err != nil {
		return Verified{}, true, []error{fmt.Errorf("reading %s: %w", st, err)}
	}
	for i, sig := range list {
		found = true
		// Copy once so every anchor checks the same bytes and the payload
		// is fetched (and its digest checked by ggcr) only once.
		sig, err := static.Copy(sig)
		if err != nil {
			failures = append(failures, fmt.Errorf("legacy signature %d: reading: %w", i, err))
			continue
		}
		for _, a := range anchors {
			if err := ctx.Err(); err != nil {
				return Verified{}, found, append(failures, err)
			}
			co := a.co
			if _, err := cosign.VerifyImageSignature(ctx, sig, h, &co); err != nil {
				failures = append(failures, fmt.Errorf("legacy signature %d with %s: %w", i, a.desc, err))
				v.log.DebugContext(ctx, "legacy signature rejected", "tag", st.String(), "index", i, "anchor", a.desc, "error", err)
				continue
			}
			method, evidence := MethodKeyLegacy, evidenceKey
			if a.keyless {
				// Offline, cosign checks the SET of the Rekor bundle
				// annotation; the .sig format has no other log proof.
				method, evidence = MethodKeylessLegacy, "Rekor v1 signed entry timestamp"
			}
			return Verified{ref: ref, rule: r.name, method: method, signer: signerOf(a, sig), evidence: evidence}, true, nil
		}
	}
	return Verified{}, found, failures
}

func signerOf(a anchor, sig oci.Signature) string {
	if !a.keyless {
		return a.desc
	}
	if cert, err := sig.Cert(); err == nil && cert != nil {
		ce := cosign.CertExtensions{Cert: cert}
		return fmt.Sprintf("%v issued by %s (%s)", cert.EmailAddresses, ce.GetIssuer(), a.desc)
	}
	return a.desc
}

// verifyBundles checks sigstore bundles attached as OCI 1.1 referrers (or
// under the sha256-<hex> fallback tag, which ggcr's Referrers reads when the
// registry has no referrers API).
func (v *Verifier) verifyBundles(ctx context.Context, ref name.Digest, h v1.Hash, r *rule, anchors []anchor, want *name.Repository) (res Verified, found bool, failures []error) {
	bundles, seen, failures := listBundles(ref, anchors[0].co.RegistryClientOpts)
	found = seen
	if len(bundles) == 0 {
		return Verified{}, found, failures
	}
	digest, err := hex.DecodeString(h.Hex)
	if err != nil {
		return Verified{}, false, []error{err}
	}
	artifact := verify.WithArtifactDigest(h.Algorithm, digest)
	for i, b := range bundles {
		if err := checkSignPredicate(b); err != nil {
			failures = append(failures, fmt.Errorf("bundle %d: %w", i, err))
			continue
		}
		shape := describeBundle(b)
		for _, a := range anchors {
			if err := ctx.Err(); err != nil {
				return Verified{}, found, append(failures, err)
			}
			if a.keyless && !shape.observed {
				failures = append(failures, fmt.Errorf("bundle %d with %s (%s): %w", i, a.desc, shape, errNoObserverTime))
				continue
			}
			result, err := verifyBundle(&a.co, artifact, b)
			if err != nil && a.keyless && strings.Contains(err.Error(), "failed to verify leaf certificate") {
				err = fmt.Errorf("%w (%s)", err, bundleTimes(b))
			}
			if err != nil {
				failures = append(failures, fmt.Errorf("bundle %d with %s (%s): %w", i, a.desc, shape, err))
				v.log.DebugContext(ctx, "bundle rejected", "index", i, "anchor", a.desc, "error", err)
				continue
			}
			if want != nil {
				if err := checkBundleIdentity(b, h, *want); err != nil {
					failures = append(failures, fmt.Errorf("bundle %d with %s: %w", i, a.desc, err))
					// The same statement fails the same way with any anchor.
					break
				}
			}
			method, signer, evidence := MethodKeyBundle, a.desc, evidenceKey
			if a.keyless {
				method, evidence = MethodKeylessBundle, shape.String()
				if result != nil && result.Signature != nil && result.Signature.Certificate != nil {
					c := result.Signature.Certificate
					signer = fmt.Sprintf("%s issued by %s (%s)", c.SubjectAlternativeName, c.Issuer, a.desc)
				}
			}
			return Verified{ref: ref, rule: r.name, method: method, signer: signer, evidence: evidence}, true, nil
		}
	}
	return Verified{}, found, failures
}

// sigstoreBundleType prefixes the artifact type of Sigstore bundle referrers
// ("application/vnd.dev.sigstore.bundle.v0.3+json").
const sigstoreBundleType = "application/vnd.dev.sigstore.bundle"

// listBundles reads the Sigstore bundles referring to ref (OCI referrers
// API, or the sha256-<hex> fallback tag). Unlike cosign's GetBundles, a
// referrer that says it is a Sigstore bundle but does not parse is reported
// rather than skipped, so a bundle in a format this verifier does not know
// is refused by name instead of looking like no signature at all. Other
// referrers that are not bundles (SBOMs, ...) are skipped.
// seen reports whether any bundle referrer was there, readable or not.
func listBundles(ref name.Digest, ropts []ociremote.Option) (bundles []*sgbundle.Bundle, seen bool, failures []error) {
	idx, err := ociremote.Referrers(ref, "", ropts...)
	if err != nil {
		if regerr.IsNotFound(err) {
			return nil, false, nil
		}
		return nil, false, []error{fmt.Errorf("listing sigstore bundles: %w", err)}
	}
	for _, m := range idx.Manifests {
		// cosign marks its bundle referrers by annotation; the artifact
		// type a registry reports may be the (empty) config's.
		_, annotated := m.Annotations["dev.sigstore.bundle.content"]
		isBundle := annotated || strings.HasPrefix(m.ArtifactType, sigstoreBundleType)
		b, err := ociremote.Bundle(ref.Context().Digest(m.Digest.String()), ropts...)
		if err != nil {
			if isBundle {
				seen = true
				failures = append(failures, fmt.Errorf("sigstore bundle referrer %s (%s) cannot be read: %w", m.Digest, m.ArtifactType, err))
			}
			continue
		}
		bundles = append(bundles, b)
		seen = true
	}
	return bundles, seen, failures
}

const evidenceKey = "signature by a key the policy trusts"

// errNoObserverTime refuses a keyless bundle that nothing dates: a
// short-lived certificate can only be checked at a time a log or a TSA
// vouched for.
var errNoObserverTime = errors.New("neither a Rekor v1 integrated time with a signed entry timestamp nor an RFC 3161 timestamp: " +
	"nothing shows the signature was made while its short-lived certificate was valid")

// bundleShape is what a bundle carries besides its signature.
type bundleShape struct {
	logs     []string // "Rekor v1 (SET, inclusion proof)", "Rekor v2 inclusion proof"
	tsas     int
	observed bool // an integrated time with a SET, or a signed timestamp
}

func (s bundleShape) String() string {
	parts := append([]string{}, s.logs...)
	if len(parts) == 0 {
		parts = append(parts, "no transparency log entry")
	}
	switch s.tsas {
	case 0:
	case 1:
		parts = append(parts, "RFC 3161 timestamp")
	default:
		parts = append(parts, fmt.Sprintf("%d RFC 3161 timestamps", s.tsas))
	}
	return strings.Join(parts, ", ")
}

func describeBundle(b *sgbundle.Bundle) bundleShape {
	var s bundleShape
	for _, e := range b.GetVerificationMaterial().GetTlogEntries() {
		kv := e.GetKindVersion()
		var proofs []string
		if len(e.GetInclusionPromise().GetSignedEntryTimestamp()) > 0 {
			proofs = append(proofs, "SET")
			s.observed = true
		}
		if e.GetInclusionProof() != nil {
			proofs = append(proofs, "inclusion proof")
		}
		log := "Rekor v1"
		if kv.GetVersion() == "0.0.2" {
			log = "Rekor v2"
		}
		s.logs = append(s.logs, fmt.Sprintf("%s %s/%s entry (%s)", log, kv.GetKind(), kv.GetVersion(), strings.Join(proofs, ", ")))
	}
	s.tsas = len(b.GetVerificationMaterial().GetTimestampVerificationData().GetRfc3161Timestamps())
	if s.tsas > 0 {
		s.observed = true
	}
	return s
}

// bundleTimes says when a bundle's certificate was valid and when its log
// and timestamps say it was signed, to explain a refused certificate (the
// times are as the bundle claims them; the verifier checked the claims).
func bundleTimes(b *sgbundle.Bundle) string {
	var parts []string
	if c := b.GetVerificationMaterial().GetCertificate(); c != nil {
		if cert, err := x509.ParseCertificate(c.GetRawBytes()); err == nil {
			parts = append(parts, fmt.Sprintf("certificate valid from %s to %s", cert.NotBefore.UTC().Format(time.RFC3339), cert.NotAfter.UTC().Format(time.RFC3339)))
		}
	}
	for _, e := range b.GetVerificationMaterial().GetTlogEntries() {
		if t := e.GetIntegratedTime(); t != 0 {
			parts = append(parts, "log integrated time "+time.Unix(t, 0).UTC().Format(time.RFC3339))
		}
	}
	for _, ts := range b.GetVerificationMaterial().GetTimestampVerificationData().GetRfc3161Timestamps() {
		if r, err := timestamp.ParseResponse(ts.GetSignedTimestamp()); err == nil {
			parts = append(parts, "RFC 3161 timestamp "+r.Time.UTC().Format(time.RFC3339))
		}
	}
	return strings.Join(parts, "; ")
}

// verifyBundle is sigstore-go's verifier with kiln's rules. A key: the
// policy trusts the key itself, no log and no time needed (as cosign's
// VerifyNewBundle with IgnoreTlog). Keyless: a transparency log entry must
// verify (Rekor v1 SET and/or inclusion proof, or Rekor v2 checkpoint and
// inclusion proof) and at least one observer timestamp (a Rekor v1
// integrated time or an RFC 3161 timestamp from a TSA of the trusted root)
// must lie inside the certificate's validity; cosign v2's VerifyNewBundle
// accepts only one of the two kinds per call, so it is not used here.
func verifyBundle(co *cosign.CheckOpts, artifact verify.ArtifactPolicyOption, b *sgbundle.Bundle) (*verify.VerificationResult, error) {
	var tm root.TrustedMaterial
	var vopts []verify.VerifierOption
	var popts []verify.PolicyOption
	if co.SigVerifier != nil {
		key := root.NewExpiringKey(co.SigVerifier, time.Time{}, time.Time{})
		tm = root.NewTrustedPublicKeyMaterial(func(string) (root.TimeConstrainedVerifier, error) { return key, nil })
		vopts = append(vopts, verify.WithNoObserverTimestamps())
		popts = append(popts, verify.WithKey())
	} else {
		if co.TrustedMaterial == nil || len(co.Identities) != 1 {
			return nil, errors.New("keyless anchor without trusted root or identity")
		}
		tm = co.TrustedMaterial
		vopts = append(vopts, verify.WithTransparencyLog(1), verify.WithObserverTimestamps(1))
		if !co.IgnoreSCT {
			vopts = append(vopts, verify.WithSignedCertificateTimestamps(1))
		}
		id := co.Identities[0]
		san, err := verify.NewSANMatcher(id.Subject, id.SubjectRegExp)
		if err != nil {
			return nil, err
		}
		iss, err := verify.NewIssuerMatcher(id.Issuer, id.IssuerRegExp)
		if err != nil {
			return nil, err
		}
		ci, err := verify.NewCertificateIdentity(san, iss, certificate.Extensions{})
		if err != nil {
			return nil, err
		}
		popts = append(popts, verify.WithCertificateIdentity(ci))
	}
	sv, err := verify.NewVerifier(tm, vopts...)
	if err != nil {
		return nil, err
	}
	return sv.Verify(b, verify.NewPolicy(artifact, popts...))
}

// checkSignPredicate accepts only DSSE bundles whose in-toto statement is a
// cosign signature. sigstore-go then checks the statement's subject digest
// against the image digest.
func checkSignPredicate(b *sgbundle.Bundle) error {
	env := b.GetDsseEnvelope()
	if env == nil {
		return errors.New("bundle is not a DSSE envelope (not made by cosign sign)")
	}
	var st struct {
		PredicateType string `json:"predicateType"`
	}
	if err := json.Unmarshal(env.GetPayload(), &st); err != nil {
		return fmt.Errorf("bundle payload is not an in-toto statement: %w", err)
	}
	if st.PredicateType != cosignSignPredicate {
		return fmt.Errorf("bundle predicate type %q is not a cosign signature", st.PredicateType)
	}
	return nil
}
