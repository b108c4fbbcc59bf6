package signing

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/verify"
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

// Verified is an artifact whose signature was verified by this package.
// Its fields are unexported so that only package signing can create a
// non-zero one.
type Verified struct {
	ref    name.Digest
	rule   string
	method string
	signer string
}

// Digest is the verified artifact reference (repository@digest).
func (v Verified) Digest() name.Digest { return v.ref }

// Rule names the policy rule that admitted the artifact.
func (v Verified) Rule() string { return v.rule }

// Method says how it was verified, one of the Method* constants.
func (v Verified) Method() string { return v.method }

// Signer describes the key or certificate identity that signed it.
func (v Verified) Signer() string { return v.signer }

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

// Verifier verifies cosign signatures against a Policy. It is safe for
// concurrent use and remembers verified digests.
type Verifier struct {
	policy     *Policy
	remoteOpts []remote.Option
	log        *slog.Logger

	mu    sync.Mutex
	cache map[cacheKey]Verified
}

type cacheKey struct {
	repo, digest, rule string
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

func (v *Verifier) anchors(r *rule, ropts []ociremote.Option) []anchor {
	var out []anchor
	for _, k := range r.keys {
		out = append(out, anchor{
			desc: fmt.Sprintf("key %q", k.name),
			co: cosign.CheckOpts{
				RegistryClientOpts: ropts,
				SigVerifier:        k.verifier,
				ClaimVerifier:      cosign.SimpleClaimVerifier,
				Offline:            true,
				// Keys are trusted by the policy itself; a key-signed
				// artifact in an air gap has no transparency log entry.
				IgnoreTlog: true,
				IgnoreSCT:  true,
			},
		})
	}
	if kl := r.keyless; kl != nil {
		for _, id := range kl.identities {
			out = append(out, anchor{
				desc:    describeIdentity(id),
				keyless: true,
				co: cosign.CheckOpts{
					RegistryClientOpts: ropts,
					TrustedMaterial:    kl.trustedRoot,
					Identities:         []cosign.Identity{id},
					ClaimVerifier:      cosign.SimpleClaimVerifier,
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

// Check is Verify for callers that only need the verdict, such as the
// artifact manager, the mirror and the image cache, whose Verifier
// interfaces take an error alone.
func (v *Verifier) Check(ctx context.Context, ref name.Digest) error {
	_, err := v.Verify(ctx, ref)

	return err
}

// Verify checks that ref carries a signature trusted for its repository by
// the policy. It resolves nothing by tag: the caller passes the digest it
// will use. Every refusal matches ErrUntrusted.
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
	key := cacheKey{repo: repo.Name(), digest: h.String(), rule: r.canonical}
	v.mu.Lock()
	got, ok := v.cache[key]
	v.mu.Unlock()
	if ok {
		return got, nil
	}

	// The caller's options first, the context last so it always applies.
	ropts := append(append([]remote.Option{}, v.remoteOpts...), remote.WithContext(ctx))
	anchors := v.anchors(r, []ociremote.Option{ociremote.WithRemoteOptions(ropts...)})

	res, found, failures := v.verifyLegacy(ctx, ref, h, r, anchors)
	if res.IsZero() {
		var bfound bool
		var bfail []error
		res, bfound, bfail = v.verifyBundles(ctx, ref, h, r, anchors)
		found = found || bfound
		failures = append(failures, bfail...)
	}
	if err := ctx.Err(); err != nil && res.IsZero() {
		return Verified{}, err
	}
	if res.IsZero() {
		reason := "no signature verifies against the policy"
		switch {
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
		"rule", r.name, "method", res.method, "signer", res.signer)
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
			method := MethodKeyLegacy
			if a.keyless {
				method = MethodKeylessLegacy
			}
			return Verified{ref: ref, rule: r.name, method: method, signer: signerOf(a, sig)}, true, nil
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
func (v *Verifier) verifyBundles(ctx context.Context, ref name.Digest, h v1.Hash, r *rule, anchors []anchor) (res Verified, found bool, failures []error) {
	co := anchors[0].co
	bundles, _, err := cosign.GetBundles(ctx, ref, &co)
	if err != nil {
		var none *cosign.ErrNoMatchingAttestations
		if errors.As(err, &none) {
			return Verified{}, false, nil
		}
		return Verified{}, false, []error{fmt.Errorf("listing sigstore bundles: %w", err)}
	}
	digest, err := hex.DecodeString(h.Hex)
	if err != nil {
		return Verified{}, false, []error{err}
	}
	artifact := verify.WithArtifactDigest(h.Algorithm, digest)
	for i, b := range bundles {
		found = true
		if err := checkSignPredicate(b); err != nil {
			failures = append(failures, fmt.Errorf("bundle %d: %w", i, err))
			continue
		}
		for _, a := range anchors {
			if err := ctx.Err(); err != nil {
				return Verified{}, found, append(failures, err)
			}
			co := a.co
			if co.TrustedMaterial == nil {
				// cosign requires trusted material even for keys; an empty
				// collection trusts no CA and no log.
				co.TrustedMaterial = root.TrustedMaterialCollection{}
			}
			result, err := cosign.VerifyNewBundle(ctx, &co, artifact, b)
			if err != nil {
				failures = append(failures, fmt.Errorf("bundle %d with %s: %w", i, a.desc, err))
				v.log.DebugContext(ctx, "bundle rejected", "index", i, "anchor", a.desc, "error", err)
				continue
			}
			method, signer := MethodKeyBundle, a.desc
			if a.keyless {
				method = MethodKeylessBundle
				if result != nil && result.Signature != nil && result.Signature.Certificate != nil {
					c := result.Signature.Certificate
					signer = fmt.Sprintf("%s issued by %s (%s)", c.SubjectAlternativeName, c.Issuer, a.desc)
				}
			}
			return Verified{ref: ref, rule: r.name, method: method, signer: signer}, true, nil
		}
	}
	return Verified{}, found, failures
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
