// Package signingtest produces cosign signatures for tests, in pure Go and
// without any Sigstore service: key pairs, signatures by key in the legacy
// ".sig" tag format and as sigstore bundles (exactly what `cosign sign --key
// --tlog-upload=false` stores), and keyless signatures from an in-process
// virtual Sigstore (Fulcio CA + Rekor log) with its trusted_root.json.
//
// It also starts in-process registries and pushes random images, so other
// packages can build signed fixtures in a few lines. Do not use it outside
// tests and fixture generation.
package signingtest

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore-go/pkg/testing/ca"
	"github.com/sigstore/sigstore-go/pkg/tlog"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	sigdsse "github.com/sigstore/sigstore/pkg/signature/dsse"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
)

// SignPredicateType is the in-toto predicate type of `cosign sign` bundles.
const SignPredicateType = "https://sigstore.dev/cosign/sign/v1"

const inTotoPayloadType = "application/vnd.in-toto+json"

// KeyType selects the algorithm of a generated key.
type KeyType string

// Supported key types.
const (
	ECDSAP256 KeyType = "ecdsa-p256"
	ECDSAP384 KeyType = "ecdsa-p384"
	Ed25519   KeyType = "ed25519"
	RSA3072   KeyType = "rsa-3072"
)

// Key is a signing key pair.
type Key struct {
	priv crypto.Signer
	sv   signature.SignerVerifier
}

// GenerateKey creates a key of the given type. Like cosign, it signs with
// SHA-256 whatever the key type (Ed25519 signs the message itself).
func GenerateKey(kt KeyType) (*Key, error) {
	var priv crypto.Signer
	var err error
	switch kt {
	case ECDSAP256:
		priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case ECDSAP384:
		priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case Ed25519:
		_, priv, err = ed25519.GenerateKey(rand.Reader)
	case RSA3072:
		priv, err = rsa.GenerateKey(rand.Reader, 3072)
	default:
		return nil, fmt.Errorf("unknown key type %q", kt)
	}
	if err != nil {
		return nil, err
	}
	sv, err := signature.LoadSignerVerifier(priv, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	return &Key{priv: priv, sv: sv}, nil
}

// MustGenerateKey is GenerateKey for tests.
func MustGenerateKey(tb testing.TB, kt KeyType) *Key {
	tb.Helper()
	k, err := GenerateKey(kt)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// PublicKeyPEM returns the public key as a "PUBLIC KEY" PEM block, the format
// of cosign.pub files.
func (k *Key) PublicKeyPEM() []byte {
	b, err := cryptoutils.MarshalPublicKeyToPEM(k.priv.Public())
	if err != nil {
		panic(err) // only for key types GenerateKey does not make
	}
	return b
}

// ParseKey reads a key PrivateKeyPEM wrote (an unencrypted PKCS#8
// "PRIVATE KEY" block of a type GenerateKey makes).
func ParseKey(pemBytes []byte) (*Key, error) {
	block, _ := pem.Decode(pemBytes)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("no PRIVATE KEY PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	priv, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	sv, err := signature.LoadSignerVerifier(priv, crypto.SHA256)
	if err != nil {
		return nil, err
	}
	return &Key{priv: priv, sv: sv}, nil
}

// PrivateKeyPEM returns the private key as an unencrypted PKCS#8 PEM block.
// (cosign's own key files are encrypted; `cosign import-key-pair` reads this.)
func (k *Key) PrivateKeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k.priv)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// SignerVerifier exposes the key for custom signatures.
func (k *Key) SignerVerifier() signature.SignerVerifier { return k.sv }

// SimpleSigningPayload is the payload `cosign sign` signs for ref: its
// docker-reference is ref's repository.
func SimpleSigningPayload(ref name.Digest) ([]byte, error) {
	return (&sigpayload.Cosign{Image: ref}).MarshalJSON()
}

// SimpleSigningPayloadAs is the payload `cosign sign` signs for ref when the
// image was signed under another name: its docker-reference is claimed
// (e.g. the upstream repository of a mirrored image, "ghcr.io/siderolabs/imager").
func SimpleSigningPayloadAs(ref name.Digest, claimed string) ([]byte, error) {
	return (&sigpayload.Cosign{Image: ref, ClaimedIdentity: claimed}).MarshalJSON()
}

// SignLegacy signs ref with k and attaches the signature under the
// sha256-<hex>.sig tag, as `cosign sign --key k --tlog-upload=false` does.
// Signatures already there are kept.
func SignLegacy(ctx context.Context, ref name.Digest, k *Key, opts ...remote.Option) error {
	return SignLegacyAs(ctx, ref, ref.Context().Name(), k, opts...)
}

// SignLegacyAs is SignLegacy with the docker-reference claimed: what a
// signature made upstream (as claimed) looks like once the image and its
// .sig are mirrored to ref.
func SignLegacyAs(ctx context.Context, ref name.Digest, claimed string, k *Key, opts ...remote.Option) error {
	payload, err := SimpleSigningPayloadAs(ref, claimed)
	if err != nil {
		return err
	}
	raw, err := k.sv.SignMessage(bytes.NewReader(payload))
	if err != nil {
		return err
	}
	sig, err := static.NewSignature(payload, base64.StdEncoding.EncodeToString(raw))
	if err != nil {
		return err
	}
	return AttachLegacy(ctx, ref, sig, opts...)
}

// AttachLegacy appends a prepared signature to ref's .sig tag; tests use it
// to store tampered or misdirected signatures.
func AttachLegacy(ctx context.Context, ref name.Digest, sig oci.Signature, opts ...remote.Option) error {
	ropts := ociremote.WithRemoteOptions(append(opts, remote.WithContext(ctx))...)
	se, err := ociremote.SignedEntity(ref, ropts)
	if err != nil {
		return fmt.Errorf("reading %s: %w", ref, err)
	}
	se, err = mutate.AttachSignatureToEntity(se, sig)
	if err != nil {
		return err
	}
	return ociremote.WriteSignatures(ref.Repository, se, ropts)
}

// SignStatement is the in-toto statement `cosign sign` puts in a bundle:
// its one subject has the digest and no name.
func SignStatement(ref name.Digest) ([]byte, error) {
	return SignStatementNamed(ref, "")
}

// SignStatementNamed is SignStatement whose subject is also named (as
// signers other than cosign may name it), unless subject is empty.
func SignStatementNamed(ref name.Digest, subject string) ([]byte, error) {
	h, err := v1.NewHash(ref.DigestStr())
	if err != nil {
		return nil, err
	}
	sub := map[string]any{"digest": map[string]string{h.Algorithm: h.Hex}}
	if subject != "" {
		sub["name"] = subject
	}
	return json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []any{sub},
		"predicateType": SignPredicateType,
	})
}

// SignBundle signs ref with k in the new bundle format (a DSSE envelope over
// an in-toto statement, public-key hint, no transparency log entry) and
// attaches it as an OCI 1.1 referrer, as cosign v3 `sign --key` does with
// tlog upload disabled.
func SignBundle(ctx context.Context, ref name.Digest, k *Key, opts ...remote.Option) error {
	b, err := KeyBundle(ref, k)
	if err != nil {
		return err
	}
	return AttachBundle(ctx, ref, b, opts...)
}

// KeyBundle returns the bundle JSON SignBundle would attach for ref.
func KeyBundle(ref name.Digest, k *Key) ([]byte, error) {
	return KeyBundleNamed(ref, "", k)
}

// KeyBundleNamed is KeyBundle over SignStatementNamed(ref, subject).
func KeyBundleNamed(ref name.Digest, subject string, k *Key) ([]byte, error) {
	stmt, err := SignStatementNamed(ref, subject)
	if err != nil {
		return nil, err
	}
	envelope, err := sigdsse.WrapSigner(k.sv, inTotoPayloadType).SignMessage(bytes.NewReader(stmt))
	if err != nil {
		return nil, err
	}
	return cbundle.MakeNewBundle(k.priv.Public(), nil, stmt, envelope, k.PublicKeyPEM(), nil)
}

// AttachBundle attaches raw bundle JSON to ref as a referrer.
func AttachBundle(ctx context.Context, ref name.Digest, bundleJSON []byte, opts ...remote.Option) error {
	ropts := ociremote.WithRemoteOptions(append(opts, remote.WithContext(ctx))...)
	return ociremote.WriteAttestationNewBundleFormat(ref, bundleJSON, SignPredicateType, ropts)
}

// KeylessCA is an in-process Sigstore: a Fulcio CA that issues short-lived
// certificates for any identity and a Rekor log that countersigns entries.
type KeylessCA struct {
	vs *ca.VirtualSigstore
}

// NewKeylessCA creates a fresh virtual Sigstore. Its certificates and log
// keys are valid from five hours ago to one hour from now.
func NewKeylessCA() (*KeylessCA, error) {
	vs, err := ca.NewVirtualSigstore()
	if err != nil {
		return nil, err
	}
	return &KeylessCA{vs: vs}, nil
}

// TrustedRootJSON is the trusted_root.json that trusts this CA and log.
func (c *KeylessCA) TrustedRootJSON() ([]byte, error) {
	return MixedTrustedRootJSON(c, c)
}

// MixedTrustedRootJSON trusts the Fulcio CA (and TSA) of one virtual
// Sigstore and the Rekor and CT logs of another: tests use it to show that a
// valid log proof does not make an untrusted certificate acceptable.
func MixedTrustedRootJSON(fulcio, logs *KeylessCA) ([]byte, error) {
	// The virtual logs carry their ID as hex text; a trusted root stores the
	// raw key ID, which verifiers hex-encode again to look entries up.
	rawIDs := func(in map[string]*root.TransparencyLog) (map[string]*root.TransparencyLog, error) {
		out := map[string]*root.TransparencyLog{}
		for id, tl := range in {
			raw, err := hex.DecodeString(id)
			if err != nil {
				return nil, err
			}
			cp := *tl
			cp.ID = raw
			out[id] = &cp
		}
		return out, nil
	}
	rekor, err := rawIDs(logs.vs.RekorLogs())
	if err != nil {
		return nil, err
	}
	ct, err := rawIDs(logs.vs.CTLogs())
	if err != nil {
		return nil, err
	}
	tr, err := root.NewTrustedRoot(root.TrustedRootMediaType01, fulcio.vs.FulcioCertificateAuthorities(), ct, fulcio.vs.TimestampingAuthorities(), rekor)
	if err != nil {
		return nil, err
	}
	return tr.MarshalJSON()
}

// DefaultIntegratedTime is when the virtual log records signatures made now:
// inside the validity of a certificate issued now (ten minutes).
func DefaultIntegratedTime() time.Time { return time.Now().Add(5 * time.Minute) }

// SignLegacy signs ref as identity (certificate email SAN) vouched for by
// issuer, recorded in the virtual log at integratedTime, and attaches it to
// the .sig tag with the certificate, chain and Rekor bundle annotations, as
// keyless `cosign sign` does. Use DefaultIntegratedTime for a valid one.
func (c *KeylessCA) SignLegacy(ctx context.Context, ref name.Digest, identity, issuer string, integratedTime time.Time, opts ...remote.Option) error {
	payload, err := SimpleSigningPayload(ref)
	if err != nil {
		return err
	}
	ent, err := c.vs.SignAtTime(identity, issuer, payload, integratedTime)
	if err != nil {
		return err
	}
	vc, err := ent.VerificationContent()
	if err != nil {
		return err
	}
	sc, err := ent.SignatureContent()
	if err != nil {
		return err
	}
	ms := sc.MessageSignatureContent()
	if ms == nil {
		return fmt.Errorf("virtual sigstore returned no message signature")
	}
	entries, err := ent.TlogEntries()
	if err != nil || len(entries) != 1 {
		return fmt.Errorf("virtual sigstore returned %d log entries: %v", len(entries), err)
	}
	tle, err := c.logEntry(entries[0], "hashedrekord", "0.0.1")
	if err != nil {
		return err
	}
	rb := &cbundle.RekorBundle{
		SignedEntryTimestamp: tle.GetInclusionPromise().GetSignedEntryTimestamp(),
		Payload: cbundle.RekorPayload{
			Body:           base64.StdEncoding.EncodeToString(tle.GetCanonicalizedBody()),
			IntegratedTime: tle.GetIntegratedTime(),
			LogIndex:       tle.GetLogIndex(),
			LogID:          hex.EncodeToString(tle.GetLogId().GetKeyId()),
		},
	}
	certPEM, err := cryptoutils.MarshalCertificateToPEM(vc.Certificate())
	if err != nil {
		return err
	}
	chainPEM, err := cryptoutils.MarshalCertificatesToPEM(c.chain())
	if err != nil {
		return err
	}
	sig, err := static.NewSignature(payload, base64.StdEncoding.EncodeToString(ms.Signature()),
		static.WithCertChain(certPEM, chainPEM), static.WithBundle(rb))
	if err != nil {
		return err
	}
	return AttachLegacy(ctx, ref, sig, opts...)
}

// logEntry completes the virtual log's entry with what a real Rekor returns
// and the entry type leaves out: the kind/version and the signed entry
// timestamp (SET) over the entry.
func (c *KeylessCA) logEntry(e *tlog.Entry, kind, version string) (*protorekor.TransparencyLogEntry, error) {
	tle := proto.Clone(e.TransparencyLogEntry()).(*protorekor.TransparencyLogEntry)
	set, err := c.vs.RekorSignPayload(tlog.RekorPayload{
		Body:           base64.StdEncoding.EncodeToString(tle.GetCanonicalizedBody()),
		IntegratedTime: tle.GetIntegratedTime(),
		LogIndex:       tle.GetLogIndex(),
		LogID:          hex.EncodeToString(tle.GetLogId().GetKeyId()),
	})
	if err != nil {
		return nil, err
	}
	tle.InclusionPromise = &protorekor.InclusionPromise{SignedEntryTimestamp: set}
	tle.KindVersion = &protorekor.KindVersion{Kind: kind, Version: version}
	return tle, nil
}

func (c *KeylessCA) chain() []*x509.Certificate {
	fca := c.vs.FulcioCertificateAuthorities()[0].(*root.FulcioCertificateAuthority)
	return append(append([]*x509.Certificate{}, fca.Intermediates...), fca.Root)
}

// SignBundle signs ref keylessly in the new bundle format (v0.3: DSSE
// envelope, Fulcio certificate, Rekor entry with inclusion proof and SET)
// and attaches it as a referrer.
func (c *KeylessCA) SignBundle(ctx context.Context, ref name.Digest, identity, issuer string, integratedTime time.Time, opts ...remote.Option) error {
	stmt, err := SignStatement(ref)
	if err != nil {
		return err
	}
	ent, err := c.vs.AttestAtTime(identity, issuer, stmt, integratedTime, true)
	if err != nil {
		return err
	}
	vc, err := ent.VerificationContent()
	if err != nil {
		return err
	}
	sc, err := ent.SignatureContent()
	if err != nil {
		return err
	}
	env := sc.EnvelopeContent()
	if env == nil {
		return fmt.Errorf("virtual sigstore returned no envelope")
	}
	raw := env.RawEnvelope()
	var dsseSigs []*protodsse.Signature
	for _, s := range raw.Signatures {
		b, err := base64.StdEncoding.DecodeString(s.Sig)
		if err != nil {
			return err
		}
		dsseSigs = append(dsseSigs, &protodsse.Signature{Sig: b, Keyid: s.KeyID})
	}
	body, err := base64.StdEncoding.DecodeString(raw.Payload)
	if err != nil {
		return err
	}
	entries, err := ent.TlogEntries()
	if err != nil || len(entries) != 1 {
		return fmt.Errorf("virtual sigstore returned %d log entries: %v", len(entries), err)
	}
	tle, err := c.logEntry(entries[0], "dsse", "0.0.1")
	if err != nil {
		return err
	}
	pb := &protobundle.Bundle{
		MediaType: "application/vnd.dev.sigstore.bundle.v0.3+json",
		VerificationMaterial: &protobundle.VerificationMaterial{
			Content: &protobundle.VerificationMaterial_Certificate{
				Certificate: &protocommon.X509Certificate{RawBytes: vc.Certificate().Raw},
			},
			TlogEntries: []*protorekor.TransparencyLogEntry{tle},
		},
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{
			Payload:     body,
			PayloadType: raw.PayloadType,
			Signatures:  dsseSigs,
		}},
	}
	b, err := protojson.Marshal(pb)
	if err != nil {
		return err
	}
	return AttachBundle(ctx, ref, b, opts...)
}

// NewRegistry starts an in-memory OCI registry on 127.0.0.1 for the test
// and returns its host:port. It supports the OCI referrers API.
func NewRegistry(tb testing.TB) string {
	tb.Helper()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0)), registry.WithReferrersSupport(true)))
	tb.Cleanup(srv.Close)
	u, err := url.Parse(srv.URL)
	if err != nil {
		tb.Fatal(err)
	}
	return u.Host
}

// PushRandomImage pushes a small random image to repo and returns its digest
// reference.
func PushRandomImage(ctx context.Context, repo name.Repository, opts ...remote.Option) (name.Digest, error) {
	img, err := random.Image(256, 1)
	if err != nil {
		return name.Digest{}, err
	}
	h, err := img.Digest()
	if err != nil {
		return name.Digest{}, err
	}
	tag := repo.Tag("latest")
	if err := remote.Write(tag, img, append(opts, remote.WithContext(ctx))...); err != nil {
		return name.Digest{}, err
	}
	return repo.Digest(h.String()), nil
}
