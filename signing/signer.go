package signing

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	intotov1 "github.com/in-toto/attestation/go/v1"
	"github.com/secure-systems-lab/go-securesystemslib/encrypted"
	cbundle "github.com/sigstore/cosign/v2/pkg/cosign/bundle"
	"github.com/sigstore/cosign/v2/pkg/oci/empty"
	"github.com/sigstore/cosign/v2/pkg/oci/mutate"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	sigdsse "github.com/sigstore/sigstore/pkg/signature/dsse"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"
	"google.golang.org/protobuf/encoding/protojson"
)

// SigningKeyFile is where kiln keeps the key it signs its own images with,
// relative to the data directory. The public factory serves the public half
// at /oci/cosign/signing-key.pub.
const SigningKeyFile = "cosign/signing-key.pem"

// ErrInvalidKey is wrapped by every error about a signing key file's
// content or permissions.
var ErrInvalidKey = errors.New("invalid signing key")

// PEM block types a signing key may come in.
const (
	pemPKCS8        = "PRIVATE KEY"                    // what kiln writes; `openssl genpkey`
	pemSEC1         = "EC PRIVATE KEY"                 // `openssl ecparam -genkey`
	pemCosign       = "ENCRYPTED SIGSTORE PRIVATE KEY" // `cosign generate-key-pair`
	pemCosignLegacy = "ENCRYPTED COSIGN PRIVATE KEY"   // older cosign
	intotoPayload   = "application/vnd.in-toto+json"
)

// Signer signs OCI artifacts by digest with one ECDSA P-256 key, as `cosign
// sign --key` does with the transparency log off: a legacy signature under
// the sha256-<hex>.sig tag and a Sigstore bundle referrer (cosign v3's
// format). No Sigstore service is involved. It is safe for concurrent use.
type Signer struct {
	priv   *ecdsa.PrivateKey
	sv     signature.SignerVerifier
	pubPEM []byte
}

// NewSigner signs with priv, which must be an ECDSA P-256 key (the public
// factory's signing key type; cosign signs it with SHA-256).
func NewSigner(priv crypto.PrivateKey) (*Signer, error) {
	k, ok := priv.(*ecdsa.PrivateKey)
	if !ok || k.Curve != elliptic.P256() {
		return nil, fmt.Errorf("%w: %s, want an ECDSA P-256 key", ErrInvalidKey, keyKind(priv))
	}

	sv, err := signature.LoadSignerVerifier(k, crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}

	pub, err := cryptoutils.MarshalPublicKeyToPEM(k.Public())
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}

	return &Signer{priv: k, sv: sv, pubPEM: pub}, nil
}

func keyKind(k crypto.PrivateKey) string {
	if e, ok := k.(*ecdsa.PrivateKey); ok {
		return "an ECDSA " + e.Curve.Params().Name + " key"
	}

	return fmt.Sprintf("a %T", k)
}

// ParseSigner reads a PEM private key: PKCS#8 ("PRIVATE KEY", what kiln
// writes), SEC 1 ("EC PRIVATE KEY") or cosign's encrypted key file
// ("ENCRYPTED SIGSTORE PRIVATE KEY", from `cosign generate-key-pair`),
// which password decrypts (an empty password is a password too).
func ParseSigner(pemBytes, password []byte) (*Signer, error) {
	block, rest := pem.Decode(pemBytes)
	if block == nil {
		return nil, fmt.Errorf("%w: no PEM block", ErrInvalidKey)
	}

	if p, _ := pem.Decode(rest); p != nil {
		return nil, fmt.Errorf("%w: more than one PEM block (%s, then %s)", ErrInvalidKey, block.Type, p.Type)
	}

	var (
		key any
		err error
	)

	switch block.Type {
	case pemPKCS8:
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case pemSEC1:
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case pemCosign, pemCosignLegacy:
		var der []byte
		if der, err = encrypted.Decrypt(block.Bytes, password); err != nil {
			return nil, fmt.Errorf("%w: decrypting the cosign key (wrong password?): %w", ErrInvalidKey, err)
		}

		key, err = x509.ParsePKCS8PrivateKey(der)
	default:
		return nil, fmt.Errorf("%w: PEM block %q is not a private key kiln reads (PRIVATE KEY, EC PRIVATE KEY, %s)", ErrInvalidKey, block.Type, pemCosign)
	}

	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalidKey, block.Type, err)
	}

	return NewSigner(key)
}

// LoadSigner reads the key file at path (see ParseSigner), e.g. one given
// on the command line.
func LoadSigner(path string, password []byte) (*Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading signing key: %w", err)
	}

	s, err := ParseSigner(b, password)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}

	return s, nil
}

// LoadOrCreateSigner reads kiln's own signing key at path (normally
// <data dir>/SigningKeyFile), creating an ECDSA P-256 key there first if
// there is none; created reports that it did. The file is mode 0600 in a
// 0700 directory, written in full before it appears, so two kilns starting
// on one data directory end up with the same key. An existing file that
// others may read is refused: the key is as secret as the images it vouches
// for.
func LoadOrCreateSigner(path string) (s *Signer, created bool, err error) {
	if s, err := loadOwnKey(path); !errors.Is(err, fs.ErrNotExist) {
		return s, false, err
	}

	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, false, fmt.Errorf("creating signing key directory: %w", err)
	}

	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, false, err
	}

	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, false, err
	}

	// CreateTemp makes the file 0600 whatever the umask.
	tmp, err := os.CreateTemp(filepath.Dir(path), ".signing-key-*")
	if err != nil {
		return nil, false, fmt.Errorf("creating signing key: %w", err)
	}

	defer os.Remove(tmp.Name()) //nolint:errcheck // gone once linked; a leftover on failure

	err = pem.Encode(tmp, &pem.Block{Type: pemPKCS8, Bytes: der})
	if err == nil {
		err = tmp.Sync()
	}

	if cerr := tmp.Close(); err == nil {
		err = cerr
	}

	if err != nil {
		return nil, false, fmt.Errorf("writing signing key: %w", err)
	}

	// A link fails if another kiln got there first: then its key is the
	// one, and this one is dropped.
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			s, err := loadOwnKey(path)

			return s, false, err
		}

		return nil, false, fmt.Errorf("creating signing key: %w", err)
	}

	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()  //nolint:errcheck // best effort: the link survives a crash
		d.Close() //nolint:errcheck // read-only
	}

	s, err = NewSigner(priv)

	return s, true, err
}

// loadOwnKey reads kiln's key file, refusing one that is not private.
func loadOwnKey(path string) (*Signer, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, err
	}

	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: %w: not a regular file", path, ErrInvalidKey)
	}

	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("%s: %w: mode %04o lets others read it (chmod 600 %s)", path, ErrInvalidKey, perm, path)
	}

	return LoadSigner(path, nil)
}

// PublicKeyPEM is the public key as a "PUBLIC KEY" PEM block, the format
// of cosign.pub files and of the factory's /oci/cosign/signing-key.pub.
func (s *Signer) PublicKeyPEM() []byte { return bytes.Clone(s.pubPEM) }

// Sign signs ref in both formats (SignLegacy, then SignBundle), writing to
// ref's repository through opts.
func (s *Signer) Sign(ctx context.Context, ref name.Digest, opts ...remote.Option) error {
	if err := s.SignLegacy(ctx, ref, opts...); err != nil {
		return err
	}

	return s.SignBundle(ctx, ref, opts...)
}

// LegacySignature returns the simple-signing payload `cosign sign` signs
// for ref (its docker-reference is ref's repository) and the base64
// signature over it.
func (s *Signer) LegacySignature(ref name.Digest) (payload []byte, b64sig string, err error) {
	return s.legacySignature(ref, ref.Context())
}

// legacySignature signs the payload for ref whose docker-reference names
// identity.
func (s *Signer) legacySignature(ref name.Digest, identity name.Repository) (payload []byte, b64sig string, err error) {
	payload, err = sigpayload.Cosign{Image: ref, ClaimedIdentity: identity.Name()}.MarshalJSON()
	if err != nil {
		return nil, "", err
	}

	raw, err := s.sv.SignMessage(bytes.NewReader(payload))
	if err != nil {
		return nil, "", fmt.Errorf("signing %s: %w", ref, err)
	}

	return payload, base64.StdEncoding.EncodeToString(raw), nil
}

// SignLegacy writes ref's sha256-<hex>.sig tag: an image whose one layer is
// the simple-signing payload with the signature in the
// dev.cosignproject.cosign/signature annotation. The tag is replaced, not
// appended to (kiln is the only signer of what it builds, and a rebuild of
// the same digest must not pile up signatures).
func (s *Signer) SignLegacy(ctx context.Context, ref name.Digest, opts ...remote.Option) error {
	return s.SignLegacyAs(ctx, ref, ref.Context(), opts...)
}

// SignLegacyAs is SignLegacy with the payload's docker-reference naming
// identity rather than ref's own repository: how an image mirrored from
// identity (ghcr.io/siderolabs/imager) is signed where it is stored, as a
// release's signature is made upstream and copied along
// (WithSignedIdentity checks it).
func (s *Signer) SignLegacyAs(ctx context.Context, ref name.Digest, identity name.Repository, opts ...remote.Option) error {
	payload, sig, err := s.legacySignature(ref, identity)
	if err != nil {
		return err
	}

	layer, err := static.NewSignature(payload, sig)
	if err != nil {
		return err
	}

	// No creation time recorded, as `cosign sign` by default.
	sigs, err := mutate.AppendSignatures(empty.Signatures(), false, layer)
	if err != nil {
		return err
	}

	tag, err := ociremote.SignatureTag(ref)
	if err != nil {
		return err
	}

	if err := remote.Write(tag, sigs, append(opts, remote.WithContext(ctx))...); err != nil {
		return fmt.Errorf("writing signature %s: %w", tag, err)
	}

	return nil
}

// Bundle returns the Sigstore bundle (v0.3 JSON) `cosign sign --key
// --tlog-upload=false` makes for ref: a DSSE envelope over an in-toto
// statement whose subject is ref's digest and whose predicate type is
// cosign's signature type, with the key's hint and no log entry. Unlike
// cosign, the subject also names ref's repository, so that the bundle, like
// the .sig's docker-reference, says which image it was made for (verifiers
// that look only at the digest ignore the name).
func (s *Signer) Bundle(ref name.Digest) ([]byte, error) {
	alg, hex, ok := strings.Cut(ref.DigestStr(), ":")
	if !ok {
		return nil, fmt.Errorf("malformed digest %q", ref.DigestStr())
	}

	stmt, err := protojson.Marshal(&intotov1.Statement{
		Type:          intotov1.StatementTypeUri,
		Subject:       []*intotov1.ResourceDescriptor{{Name: ref.Context().Name(), Digest: map[string]string{alg: hex}}},
		PredicateType: cosignSignPredicate,
	})
	if err != nil {
		return nil, err
	}

	env, err := sigdsse.WrapSigner(s.sv, intotoPayload).SignMessage(bytes.NewReader(stmt))
	if err != nil {
		return nil, fmt.Errorf("signing %s: %w", ref, err)
	}

	return cbundle.MakeNewBundle(s.priv.Public(), nil, stmt, env, s.pubPEM, nil)
}

// SignBundle attaches Bundle(ref) to ref as an OCI 1.1 referrer (on a
// registry without the referrers API, under the sha256-<hex> fallback tag),
// as cosign v3 does.
func (s *Signer) SignBundle(ctx context.Context, ref name.Digest, opts ...remote.Option) error {
	b, err := s.Bundle(ref)
	if err != nil {
		return err
	}

	ropts := ociremote.WithRemoteOptions(append(opts, remote.WithContext(ctx))...)
	if err := ociremote.WriteAttestationNewBundleFormat(ref, b, cosignSignPredicate, ropts); err != nil {
		return fmt.Errorf("writing signature bundle for %s: %w", ref, err)
	}

	return nil
}

// Policy is a trust policy that trusts this signer's key, and nothing
// else, for the given repository patterns (see the policy file's
// repositories): what kiln checks its own images with before it serves
// them again.
func (s *Signer) Policy(repositories ...string) (*Policy, error) {
	return KeyPolicy("kiln", s.pubPEM, repositories...)
}
