// Package localsigstore is a Sigstore made in-process for tests, as strict
// as the public-good instance where a verifier looks: a Fulcio-like CA whose
// certificates embed an SCT from a CT log, a Rekor v1 log (signed entry
// timestamps, inclusion proofs with checkpoints), a Rekor v2 log (tiles
// style: checkpoint and inclusion proof, no integrated time) and an RFC 3161
// timestamp authority, with the trusted_root.json that trusts them all; and a
// TUF repository (tuf.go) that publishes that trusted root the way Sigstore's
// TUF repository does.
//
// It signs container images the way Sidero Labs' signer does: a legacy
// cosign ".sig" tag (Rekor v1 entry with a SET) and a Sigstore bundle
// referrer (DSSE envelope over a cosign-sign in-toto statement) whose log
// entry and timestamps are chosen per signature, including the newer
// Rekor v2 + TSA shape.
//
// Everything here is for tests and fixture generation only; it is a
// separate package from signingtest so that kiln's own binary (whose demo
// mode links signingtest) does not carry it.
package localsigstore

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/cyberphone/json-canonicalization/go/src/webpki.org/jsoncanonicalizer"
	"github.com/digitorus/timestamp"
	ct "github.com/google/certificate-transparency-go"
	cttls "github.com/google/certificate-transparency-go/tls"
	"github.com/google/certificate-transparency-go/x509util"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/secure-systems-lab/go-securesystemslib/dsse"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	protobundle "github.com/sigstore/protobuf-specs/gen/pb-go/bundle/v1"
	protocommon "github.com/sigstore/protobuf-specs/gen/pb-go/common/v1"
	protodsse "github.com/sigstore/protobuf-specs/gen/pb-go/dsse"
	protorekor "github.com/sigstore/protobuf-specs/gen/pb-go/rekor/v1"
	rekortilespb "github.com/sigstore/rekor-tiles/v2/pkg/generated/protobuf"
	rekornote "github.com/sigstore/rekor-tiles/v2/pkg/note"
	"github.com/sigstore/rekor-tiles/v2/pkg/types/hashedrekord"
	"github.com/sigstore/rekor/pkg/pki"
	"github.com/sigstore/rekor/pkg/types"
	dssetype "github.com/sigstore/rekor/pkg/types/dsse"
	_ "github.com/sigstore/rekor/pkg/types/dsse/v0.0.1" // registers the dsse v0.0.1 entry type
	rekorutil "github.com/sigstore/rekor/pkg/util"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	f_log "github.com/transparency-dev/formats/log"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kiln-dev/kiln/signing/signingtest"
)

// Log says which transparency log records a bundle's signature.
type Log int

// Logs a bundle can be recorded in.
const (
	// RekorV2 is a tiles-based Rekor v2 log: a hashedrekord v0.0.2 entry
	// (for a DSSE envelope, over the envelope's PAE) with a checkpoint and
	// an inclusion proof, and no integrated time or SET.
	RekorV2 Log = iota
	// RekorV1 is the classic Rekor: a dsse v0.0.1 entry with an integrated
	// time, a SET and an inclusion proof with a checkpoint.
	RekorV1
	// NoLog leaves the bundle without a transparency log entry.
	NoLog
	// RekorV2DSSE is Rekor v2's deprecated dsse v0.0.2 entry type (the
	// envelope's payload hash and signatures), which earlier Rekor v2
	// clients wrote for DSSE envelopes before hashedrekord replaced it.
	RekorV2DSSE
)

func (l Log) String() string {
	switch l {
	case RekorV2:
		return "Rekor v2"
	case RekorV1:
		return "Rekor v1"
	case RekorV2DSSE:
		return "Rekor v2 (dsse v0.0.2)"
	default:
		return "no log"
	}
}

// Identity is the OIDC identity a certificate is issued for.
type Identity struct {
	Subject string // email or URI SAN
	Issuer  string // OIDC issuer
}

// CertLifetime is how long a leaf certificate is valid, as with Fulcio.
const CertLifetime = 10 * time.Minute

// Sigstore is one in-process Sigstore instance. It is safe for concurrent
// use.
type Sigstore struct {
	start time.Time

	caRoot, caInter *x509.Certificate
	caInterKey      *ecdsa.PrivateKey

	ctKey *ecdsa.PrivateKey

	tsaRoot, tsaInter, tsaLeaf *x509.Certificate
	tsaKey                     *ecdsa.PrivateKey

	rekorV1, rekorV2 *merkleLog
}

// merkleLog is an append-only RFC 6962 log with a signing key.
type merkleLog struct {
	key     *ecdsa.PrivateKey
	baseURL string
	treeID  int64 // Rekor v1 checkpoints name the tree

	mu     sync.Mutex
	leaves [][]byte // leaf hashes
}

// New creates a Sigstore. Its CA, logs and TSA are trusted from an hour ago
// on; their certificates are valid for years.
func New() (*Sigstore, error) {
	s := &Sigstore{start: time.Now().Add(-time.Hour).Truncate(time.Second)}

	var err error

	rootKey, err := newKey()
	if err != nil {
		return nil, err
	}

	if s.caRoot, err = s.caCert("local-sigstore", nil, rootKey, rootKey, nil); err != nil {
		return nil, err
	}

	if s.caInterKey, err = newKey(); err != nil {
		return nil, err
	}

	if s.caInter, err = s.caCert("local-sigstore-intermediate", s.caRoot, s.caInterKey, rootKey, []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning}); err != nil {
		return nil, err
	}

	tsaRootKey, err := newKey()
	if err != nil {
		return nil, err
	}

	if s.tsaRoot, err = s.caCert("local-tsa", nil, tsaRootKey, tsaRootKey, nil); err != nil {
		return nil, err
	}

	tsaInterKey, err := newKey()
	if err != nil {
		return nil, err
	}

	if s.tsaInter, err = s.caCert("local-tsa-intermediate", s.tsaRoot, tsaInterKey, tsaRootKey, []x509.ExtKeyUsage{x509.ExtKeyUsageTimeStamping}); err != nil {
		return nil, err
	}

	if s.tsaKey, err = newKey(); err != nil {
		return nil, err
	}

	if s.tsaLeaf, err = s.tsaLeafCert(tsaInterKey); err != nil {
		return nil, err
	}

	if s.ctKey, err = newKey(); err != nil {
		return nil, err
	}

	for _, l := range []**merkleLog{&s.rekorV1, &s.rekorV2} {
		k, err := newKey()
		if err != nil {
			return nil, err
		}

		*l = &merkleLog{key: k}
	}

	s.rekorV1.baseURL = "https://rekor.localhost"
	s.rekorV1.treeID = 1193050959916656506
	s.rekorV2.baseURL = "https://log2026-1.rekor.localhost"

	// Some entries already in both logs, so inclusion proofs have hashes.
	for _, l := range []*merkleLog{s.rekorV1, s.rekorV2} {
		for i := range 6 {
			l.append(rfc6962.DefaultHasher.HashLeaf([]byte(fmt.Sprintf("earlier entry %d", i))))
		}
	}

	return s, nil
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}

	return n
}

func (s *Sigstore) caCert(cn string, parent *x509.Certificate, key, parentKey *ecdsa.PrivateKey, eku []x509.ExtKeyUsage) (*x509.Certificate, error) {
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: cn, Organization: []string{"kiln test sigstore"}},
		NotBefore:             s.start.Add(-24 * time.Hour),
		NotAfter:              s.start.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		ExtKeyUsage:           eku,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	if parent == nil {
		parent = tmpl
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), parentKey)
	if err != nil {
		return nil, err
	}

	return x509.ParseCertificate(der)
}

func (s *Sigstore) tsaLeafCert(parentKey *ecdsa.PrivateKey) (*x509.Certificate, error) {
	// RFC 3161 requires the timestamping EKU, alone and critical.
	eku, err := asn1.Marshal([]asn1.ObjectIdentifier{{1, 3, 6, 1, 5, 5, 7, 3, 8}})
	if err != nil {
		return nil, err
	}

	tmpl := &x509.Certificate{
		SerialNumber:    serial(),
		Subject:         pkix.Name{CommonName: "local-tsa-leaf", Organization: []string{"kiln test sigstore"}},
		NotBefore:       s.start.Add(-24 * time.Hour),
		NotAfter:        s.start.Add(10 * 365 * 24 * time.Hour),
		KeyUsage:        x509.KeyUsageDigitalSignature,
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 37}, Critical: true, Value: eku}},
	}

	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.tsaInter, s.tsaKey.Public(), parentKey)
	if err != nil {
		return nil, err
	}

	return x509.ParseCertificate(der)
}

func logID(pub crypto.PublicKey) []byte {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		panic(err) // only ECDSA keys made here
	}

	h := sha256.Sum256(der)

	return h[:]
}

// TrustedRoot is the trusted root of this Sigstore: its CA, CT log, both
// Rekor logs and its TSA, valid from an hour before New.
func (s *Sigstore) TrustedRoot() (*root.TrustedRoot, error) {
	tl := func(l *merkleLog) *root.TransparencyLog {
		return &root.TransparencyLog{
			BaseURL:             l.baseURL,
			ID:                  logID(l.key.Public()),
			ValidityPeriodStart: s.start,
			HashFunc:            crypto.SHA256,
			PublicKey:           l.key.Public(),
			SignatureHashFunc:   crypto.SHA256,
		}
	}
	rekor := map[string]*root.TransparencyLog{}

	for _, l := range []*merkleLog{s.rekorV1, s.rekorV2} {
		rekor[hex.EncodeToString(logID(l.key.Public()))] = tl(l)
	}

	ctID := logID(s.ctKey.Public())
	ctlogs := map[string]*root.TransparencyLog{hex.EncodeToString(ctID): {
		BaseURL:             "https://ctfe.localhost/test",
		ID:                  ctID,
		ValidityPeriodStart: s.start,
		HashFunc:            crypto.SHA256,
		PublicKey:           s.ctKey.Public(),
	}}
	cas := []root.CertificateAuthority{&root.FulcioCertificateAuthority{
		Root:                s.caRoot,
		Intermediates:       []*x509.Certificate{s.caInter},
		ValidityPeriodStart: s.start,
		URI:                 "https://fulcio.localhost",
	}}
	tsas := []root.TimestampingAuthority{&root.SigstoreTimestampingAuthority{
		Root:                s.tsaRoot,
		Intermediates:       []*x509.Certificate{s.tsaInter},
		Leaf:                s.tsaLeaf,
		ValidityPeriodStart: s.start,
		URI:                 "https://tsa.localhost/api/v1/timestamp",
	}}

	return root.NewTrustedRoot(root.TrustedRootMediaType01, cas, ctlogs, tsas, rekor)
}

// TrustedRootJSON is TrustedRoot as trusted_root.json.
func (s *Sigstore) TrustedRootJSON() ([]byte, error) {
	tr, err := s.TrustedRoot()
	if err != nil {
		return nil, err
	}

	return tr.MarshalJSON()
}

// Fulcio's OIDC issuer extensions: the raw string (v1) and the DER UTF8String (v2).
var (
	oidIssuerV1 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 1}
	oidIssuerV2 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 1, 8}
	oidCTPoison = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 3}
	oidSCTList  = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 11129, 2, 4, 2}
)

// issue makes a Fulcio-like leaf certificate for pub: valid for
// CertLifetime from notBefore, code-signing, with the identity as SAN and
// issuer extensions, and an SCT from the CT log embedded the way Fulcio
// does it (precertificate, then the final certificate with the SCT list).
func (s *Sigstore) issue(id Identity, pub crypto.PublicKey, notBefore time.Time) (*x509.Certificate, error) {
	issuerV2, err := asn1.MarshalWithParams(id.Issuer, "utf8")
	if err != nil {
		return nil, err
	}

	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		NotBefore:    notBefore,
		NotAfter:     notBefore.Add(CertLifetime),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageCodeSigning},
	}

	if u, err := url.Parse(id.Subject); err == nil && u.Scheme != "" && !strings.Contains(id.Subject, "@") {
		tmpl.URIs = []*url.URL{u}
	} else {
		tmpl.EmailAddresses = []string{id.Subject}
	}

	exts := []pkix.Extension{{Id: oidIssuerV1, Value: []byte(id.Issuer)}, {Id: oidIssuerV2, Value: issuerV2}}

	// The precertificate: the poison extension where the SCT list will be.
	tmpl.ExtraExtensions = append(append([]pkix.Extension{}, exts...), pkix.Extension{Id: oidCTPoison, Critical: true, Value: asn1.NullBytes})

	pre, err := x509.CreateCertificate(rand.Reader, tmpl, s.caInter, pub, s.caInterKey)
	if err != nil {
		return nil, err
	}

	ts := uint64(notBefore.Add(time.Second).UnixMilli())

	leaf, err := ct.MerkleTreeLeafFromRawChain([]ct.ASN1Cert{{Data: pre}, {Data: s.caInter.Raw}}, ct.PrecertLogEntryType, ts)
	if err != nil {
		return nil, fmt.Errorf("SCT leaf: %w", err)
	}

	var keyID [sha256.Size]byte

	copy(keyID[:], logID(s.ctKey.Public()))

	sct := ct.SignedCertificateTimestamp{SCTVersion: ct.V1, LogID: ct.LogID{KeyID: keyID}, Timestamp: ts}

	input, err := ct.SerializeSCTSignatureInput(sct, ct.LogEntry{Leaf: *leaf})
	if err != nil {
		return nil, err
	}

	digest := sha256.Sum256(input)

	sig, err := ecdsa.SignASN1(rand.Reader, s.ctKey, digest[:])
	if err != nil {
		return nil, err
	}

	sct.Signature = ct.DigitallySigned{
		Algorithm: cttls.SignatureAndHashAlgorithm{Hash: cttls.SHA256, Signature: cttls.ECDSA},
		Signature: sig,
	}

	list, err := x509util.MarshalSCTsIntoSCTList([]*ct.SignedCertificateTimestamp{&sct})
	if err != nil {
		return nil, err
	}

	listBytes, err := cttls.Marshal(*list)
	if err != nil {
		return nil, err
	}

	extValue, err := asn1.Marshal(listBytes)
	if err != nil {
		return nil, err
	}

	tmpl.ExtraExtensions = append(append([]pkix.Extension{}, exts...), pkix.Extension{Id: oidSCTList, Value: extValue})

	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.caInter, pub, s.caInterKey)
	if err != nil {
		return nil, err
	}

	return x509.ParseCertificate(der)
}

// chainPEM is the intermediate and root, as cosign's chain annotation holds them.
func (s *Sigstore) chainPEM() ([]byte, error) {
	return cryptoutils.MarshalCertificatesToPEM([]*x509.Certificate{s.caInter, s.caRoot})
}

// append adds a leaf hash and returns its index. Callers compute proofs
// under l.mu for the size they saw.
func (l *merkleLog) append(leafHash []byte) int64 {
	l.leaves = append(l.leaves, leafHash)

	return int64(len(l.leaves) - 1)
}

// mth is RFC 6962's Merkle tree hash of leaf hashes.
func mth(leaves [][]byte) []byte {
	switch len(leaves) {
	case 0:
		return rfc6962.DefaultHasher.EmptyRoot()
	case 1:
		return leaves[0]
	}

	k := largestPowerOfTwoBelow(len(leaves))

	return rfc6962.DefaultHasher.HashChildren(mth(leaves[:k]), mth(leaves[k:]))
}

// auditPath is RFC 6962's PATH(m, D[n]): the inclusion proof of leaf m.
func auditPath(m int, leaves [][]byte) [][]byte {
	if len(leaves) <= 1 {
		return nil
	}

	k := largestPowerOfTwoBelow(len(leaves))
	if m < k {
		return append(auditPath(m, leaves[:k]), mth(leaves[k:]))
	}

	return append(auditPath(m-k, leaves[k:]), mth(leaves[:k]))
}

func largestPowerOfTwoBelow(n int) int {
	k := 1
	for k*2 < n {
		k *= 2
	}

	return k
}

// Options choose how one bundle or legacy signature is made.
type Options struct {
	// Identity the certificate is issued for. Required.
	Identity Identity
	// Log records the signature (bundles only; legacy signatures always
	// have a Rekor v1 entry with a SET, as cosign's .sig format has no
	// place for anything else).
	Log Log
	// TSA adds an RFC 3161 timestamp (bundles only).
	TSA bool
	// Time is when the log (Rekor v1 integrated time) and the TSA say the
	// signature was made; zero means now, inside the certificate's validity.
	Time time.Time
	// BreakInclusionProof alters one hash of the inclusion proof after the
	// checkpoint is signed: a proof that does not lead to the checkpoint.
	BreakInclusionProof bool
	// As is the image name the signature claims: the docker-reference of a
	// legacy .sig, the subject name of a bundle's statement. Empty: a .sig
	// names the repository it is attached in and a bundle names nothing,
	// as cosign signs.
	As string
}

func (o Options) when() time.Time {
	if o.Time.IsZero() {
		return time.Now()
	}

	return o.Time
}

// signer is a fresh ephemeral key with its certificate, as keyless cosign
// makes for every signature.
type signer struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func (s *Sigstore) newSigner(id Identity) (*signer, error) {
	if id.Subject == "" || id.Issuer == "" {
		return nil, errors.New("localsigstore: identity needs a subject and an issuer")
	}

	k, err := newKey()
	if err != nil {
		return nil, err
	}

	c, err := s.issue(id, k.Public(), time.Now().Add(-time.Minute).Truncate(time.Second))
	if err != nil {
		return nil, err
	}

	return &signer{key: k, cert: c}, nil
}

func (sg *signer) sign(msg []byte) ([]byte, error) {
	d := sha256.Sum256(msg)

	return ecdsa.SignASN1(rand.Reader, sg.key, d[:])
}

// set signs Rekor v1's signed entry timestamp over the entry.
func (s *Sigstore) set(body []byte, integrated, index int64) ([]byte, error) {
	payload, err := json.Marshal(map[string]any{
		"body":           base64.StdEncoding.EncodeToString(body),
		"integratedTime": integrated,
		"logIndex":       index,
		"logID":          hex.EncodeToString(logID(s.rekorV1.key.Public())),
	})
	if err != nil {
		return nil, err
	}

	canon, err := jsoncanonicalizer.Transform(payload)
	if err != nil {
		return nil, err
	}

	d := sha256.Sum256(canon)

	return ecdsa.SignASN1(rand.Reader, s.rekorV1.key, d[:])
}

// SignLegacy signs ref keylessly as id and appends the signature to its
// sha256-<hex>.sig tag with the certificate, the chain and a Rekor v1
// bundle (hashedrekord v0.0.1 entry, SET), as keyless `cosign sign` (v2)
// stores it. Only Options.Identity and Options.Time are used.
func (s *Sigstore) SignLegacy(ctx context.Context, ref name.Digest, o Options, opts ...remote.Option) error {
	claimed := o.As
	if claimed == "" {
		claimed = ref.Context().Name()
	}

	payload, err := signingtest.SimpleSigningPayloadAs(ref, claimed)
	if err != nil {
		return err
	}

	sg, err := s.newSigner(o.Identity)
	if err != nil {
		return err
	}

	sig, err := sg.sign(payload)
	if err != nil {
		return err
	}

	certPEM, err := cryptoutils.MarshalCertificateToPEM(sg.cert)
	if err != nil {
		return err
	}

	digest := sha256.Sum256(payload)

	body, err := json.Marshal(map[string]any{
		"apiVersion": "0.0.1",
		"kind":       "hashedrekord",
		"spec": map[string]any{
			"data": map[string]any{"hash": map[string]string{"algorithm": "sha256", "value": hex.EncodeToString(digest[:])}},
			"signature": map[string]any{
				"content":   base64.StdEncoding.EncodeToString(sig),
				"publicKey": map[string]string{"content": base64.StdEncoding.EncodeToString(certPEM)},
			},
		},
	})
	if err != nil {
		return err
	}

	if body, err = jsoncanonicalizer.Transform(body); err != nil {
		return err
	}

	s.rekorV1.mu.Lock()
	index := s.rekorV1.append(rfc6962.DefaultHasher.HashLeaf(body))
	s.rekorV1.mu.Unlock()

	integrated := o.when().Unix()

	set, err := s.set(body, integrated, index)
	if err != nil {
		return err
	}

	chain, err := s.chainPEM()
	if err != nil {
		return err
	}

	st, err := static.NewSignature(payload, base64.StdEncoding.EncodeToString(sig),
		static.WithCertChain(certPEM, chain),
		static.WithBundle(&cbundle.RekorBundle{
			SignedEntryTimestamp: set,
			Payload: cbundle.RekorPayload{
				Body:           base64.StdEncoding.EncodeToString(body),
				IntegratedTime: integrated,
				LogIndex:       index,
				LogID:          hex.EncodeToString(logID(s.rekorV1.key.Public())),
			},
		}))
	if err != nil {
		return err
	}

	return signingtest.AttachLegacy(ctx, ref, st, opts...)
}

// SignBundle signs ref keylessly in the bundle format and attaches the
// bundle as an OCI referrer, as cosign v3 `sign` does.
func (s *Sigstore) SignBundle(ctx context.Context, ref name.Digest, o Options, opts ...remote.Option) error {
	b, err := s.Bundle(ref, o)
	if err != nil {
		return err
	}

	return signingtest.AttachBundle(ctx, ref, b, opts...)
}

// SignLikeSidero gives ref both signatures Sidero Labs' signer makes: the
// legacy .sig (Rekor v1) and a bundle referrer recorded in Rekor v2 with an
// RFC 3161 timestamp.
func (s *Sigstore) SignLikeSidero(ctx context.Context, ref name.Digest, id Identity, opts ...remote.Option) error {
	return s.SignLikeSideroAs(ctx, ref, "", id, opts...)
}

// SignLikeSideroAs is SignLikeSidero for an image signed upstream as the
// repository as ("ghcr.io/siderolabs/imager") and mirrored to ref: the
// .sig's docker-reference names as; the bundle, made as cosign makes it,
// names no image.
func (s *Sigstore) SignLikeSideroAs(ctx context.Context, ref name.Digest, as string, id Identity, opts ...remote.Option) error {
	if err := s.SignLegacy(ctx, ref, Options{Identity: id, As: as}, opts...); err != nil {
		return err
	}

	return s.SignBundle(ctx, ref, Options{Identity: id, Log: RekorV2, TSA: true}, opts...)
}

// Bundle returns a v0.3 Sigstore bundle (JSON) signing ref: a DSSE envelope
// over the in-toto statement `cosign sign` makes, the leaf certificate,
// and the log entry and timestamp o asks for.
func (s *Sigstore) Bundle(ref name.Digest, o Options) ([]byte, error) {
	stmt, err := signingtest.SignStatementNamed(ref, o.As)
	if err != nil {
		return nil, err
	}

	sg, err := s.newSigner(o.Identity)
	if err != nil {
		return nil, err
	}

	const payloadType = "application/vnd.in-toto+json"

	pae := dsse.PAE(payloadType, stmt)

	sig, err := sg.sign(pae)
	if err != nil {
		return nil, err
	}

	vm := &protobundle.VerificationMaterial{
		Content: &protobundle.VerificationMaterial_Certificate{Certificate: &protocommon.X509Certificate{RawBytes: sg.cert.Raw}},
	}

	switch o.Log {
	case RekorV2, RekorV2DSSE:
		tle, err := s.rekorV2Entry(sg, stmt, pae, sig, o.Log == RekorV2DSSE, o.BreakInclusionProof)
		if err != nil {
			return nil, err
		}

		vm.TlogEntries = []*protorekor.TransparencyLogEntry{tle}
	case RekorV1:
		tle, err := s.rekorV1Entry(sg, payloadType, stmt, sig, o.when(), o.BreakInclusionProof)
		if err != nil {
			return nil, err
		}

		vm.TlogEntries = []*protorekor.TransparencyLogEntry{tle}
	}

	if o.TSA {
		tsr, err := s.Timestamp(sig, o.when())
		if err != nil {
			return nil, err
		}

		vm.TimestampVerificationData = &protobundle.TimestampVerificationData{
			Rfc3161Timestamps: []*protocommon.RFC3161SignedTimestamp{{SignedTimestamp: tsr}},
		}
	}

	return protojson.Marshal(&protobundle.Bundle{
		MediaType:            "application/vnd.dev.sigstore.bundle.v0.3+json",
		VerificationMaterial: vm,
		Content: &protobundle.Bundle_DsseEnvelope{DsseEnvelope: &protodsse.Envelope{
			Payload:     stmt,
			PayloadType: payloadType,
			Signatures:  []*protodsse.Signature{{Sig: sig}},
		}},
	})
}

// Timestamp is an RFC 3161 response of the TSA over sig at time at.
func (s *Sigstore) Timestamp(sig []byte, at time.Time) ([]byte, error) {
	d := sha256.Sum256(sig)
	nonce, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		return nil, err
	}

	ts := timestamp.Timestamp{
		HashAlgorithm:     crypto.SHA256,
		HashedMessage:     d[:],
		Time:              at,
		Nonce:             nonce,
		Policy:            asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 57264, 2},
		AddTSACertificate: true,
	}

	return ts.CreateResponseWithOpts(s.tsaLeaf, s.tsaKey, crypto.SHA256)
}

// rekorV2Entry logs a DSSE signature in the Rekor v2 log as the Rekor v2
// server does (rekor-tiles' own hashedrekord.ToLogEntry, which also checks
// the signature): a hashedrekord v0.0.2 over the PAE digest.
//
// With dsseType it writes the deprecated dsse v0.0.2 entry instead.
func (s *Sigstore) rekorV2Entry(sg *signer, payload, pae, sig []byte, dsseType bool, breakProof bool) (*protorekor.TransparencyLogEntry, error) {
	digest := sha256.Sum256(pae)
	rsig := &rekortilespb.Signature{
		Content: sig,
		Verifier: &rekortilespb.Verifier{
			KeyDetails: protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256,
			Verifier:   &rekortilespb.Verifier_X509Certificate{X509Certificate: &protocommon.X509Certificate{RawBytes: sg.cert.Raw}},
		},
	}
	req := &rekortilespb.HashedRekordRequestV002{Digest: digest[:], Signature: rsig}

	algs, err := signature.NewAlgorithmRegistryConfig([]protocommon.PublicKeyDetails{protocommon.PublicKeyDetails_PKIX_ECDSA_P256_SHA_256})
	if err != nil {
		return nil, err
	}

	entry, err := hashedrekord.ToLogEntry(req, algs)
	if err != nil {
		return nil, fmt.Errorf("rekor v2: %w", err)
	}

	kind := "hashedrekord"
	if dsseType {
		kind = "dsse"
		entry = dsseV002Entry(payload, rsig)
	}

	raw, err := protojson.Marshal(entry)
	if err != nil {
		return nil, err
	}

	body, err := jsoncanonicalizer.Transform(raw)
	if err != nil {
		return nil, err
	}

	l := s.rekorV2
	l.mu.Lock()
	index := l.append(rfc6962.DefaultHasher.HashLeaf(body))
	size := uint64(len(l.leaves))
	rootHash := mth(l.leaves)
	proof := auditPath(int(index), l.leaves)
	l.mu.Unlock()

	u, err := url.Parse(l.baseURL)
	if err != nil {
		return nil, err
	}

	sv, err := signature.LoadECDSASignerVerifier(l.key, crypto.SHA256)
	if err != nil {
		return nil, err
	}

	ns, err := rekornote.NewNoteSigner(context.Background(), u.Hostname(), sv)
	if err != nil {
		return nil, err
	}

	cp, err := note.Sign(&note.Note{Text: string(f_log.Checkpoint{Origin: u.Hostname(), Size: size, Hash: rootHash}.Marshal())}, ns)
	if err != nil {
		return nil, err
	}

	if breakProof {
		proof = breakHashes(proof)
	}

	return &protorekor.TransparencyLogEntry{
		LogIndex:    index,
		LogId:       &protocommon.LogId{KeyId: logID(l.key.Public())},
		KindVersion: &protorekor.KindVersion{Kind: kind, Version: "0.0.2"},
		InclusionProof: &protorekor.InclusionProof{
			LogIndex:   index,
			RootHash:   rootHash,
			TreeSize:   int64(size),
			Hashes:     proof,
			Checkpoint: &protorekor.Checkpoint{Envelope: string(cp)},
		},
		CanonicalizedBody: body,
	}, nil
}

// rekorV1Entry logs a DSSE envelope in the Rekor v1 log as a dsse v0.0.1
// entry (made by rekor's own type code), with a SET and an inclusion proof.
func (s *Sigstore) rekorV1Entry(sg *signer, payloadType string, payload, sig []byte, at time.Time, breakProof bool) (*protorekor.TransparencyLogEntry, error) {
	ctx := context.Background()

	env, err := json.Marshal(dsse.Envelope{
		PayloadType: payloadType,
		Payload:     base64.StdEncoding.EncodeToString(payload),
		Signatures:  []dsse.Signature{{Sig: base64.StdEncoding.EncodeToString(sig)}},
	})
	if err != nil {
		return nil, err
	}

	certPEM, err := cryptoutils.MarshalCertificateToPEM(sg.cert)
	if err != nil {
		return nil, err
	}

	pe, err := types.NewProposedEntry(ctx, dssetype.KIND, "0.0.1", types.ArtifactProperties{
		ArtifactBytes:  env,
		PublicKeyBytes: [][]byte{certPEM},
		PKIFormat:      string(pki.X509),
	})
	if err != nil {
		return nil, fmt.Errorf("rekor v1 entry: %w", err)
	}

	impl, err := types.CreateVersionedEntry(pe)
	if err != nil {
		return nil, fmt.Errorf("rekor v1 entry: %w", err)
	}

	body, err := types.CanonicalizeEntry(ctx, impl)
	if err != nil {
		return nil, fmt.Errorf("rekor v1 entry: %w", err)
	}

	l := s.rekorV1
	l.mu.Lock()
	index := l.append(rfc6962.DefaultHasher.HashLeaf(body))
	size := uint64(len(l.leaves))
	rootHash := mth(l.leaves)
	proof := auditPath(int(index), l.leaves)
	l.mu.Unlock()

	integrated := at.Unix()

	set, err := s.set(body, integrated, index)
	if err != nil {
		return nil, err
	}

	sv, err := signature.LoadECDSASignerVerifier(l.key, crypto.SHA256)
	if err != nil {
		return nil, err
	}

	u, err := url.Parse(l.baseURL)
	if err != nil {
		return nil, err
	}

	cp, err := rekorutil.CreateAndSignCheckpoint(ctx, u.Hostname(), l.treeID, size, rootHash, sv)
	if err != nil {
		return nil, err
	}

	if breakProof {
		proof = breakHashes(proof)
	}

	return &protorekor.TransparencyLogEntry{
		LogIndex:          index,
		LogId:             &protocommon.LogId{KeyId: logID(l.key.Public())},
		KindVersion:       &protorekor.KindVersion{Kind: dssetype.KIND, Version: "0.0.1"},
		IntegratedTime:    integrated,
		InclusionPromise:  &protorekor.InclusionPromise{SignedEntryTimestamp: set},
		InclusionProof:    &protorekor.InclusionProof{LogIndex: index, RootHash: rootHash, TreeSize: int64(size), Hashes: proof, Checkpoint: &protorekor.Checkpoint{Envelope: string(cp)}},
		CanonicalizedBody: body,
	}, nil
}

func breakHashes(proof [][]byte) [][]byte {
	out := make([][]byte, len(proof))
	for i, h := range proof {
		out[i] = append([]byte(nil), h...)
	}

	if len(out) > 0 {
		out[0][0] ^= 0xff
	}

	return out
}
