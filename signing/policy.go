package signing

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/sigstore-go/pkg/root"
	"github.com/sigstore/sigstore/pkg/cryptoutils"
	"github.com/sigstore/sigstore/pkg/signature"
	"github.com/theupdateframework/go-tuf/v2/metadata/trustedmetadata"
	"sigs.k8s.io/yaml"
)

// ErrInvalidPolicy is matched by every error about a malformed policy file.
var ErrInvalidPolicy = errors.New("invalid trust policy")

// Policy says which keys and keyless identities are trusted for which
// repositories. It is immutable once parsed and safe for concurrent use.
type Policy struct {
	rules []*rule
	// tufRoot is the TUF root.json that vouches for the trusted root that
	// came with the mirror; nil means Sigstore's public-good one.
	tufRoot []byte
}

// MirrorTrustedRoot is the keyless trustedRoot value that means "the
// Sigstore trusted root that came with the mirror": the one kiln mirror
// fetched through TUF and carried with the images, checked against the
// policy's tufRoot (default: Sigstore's public-good TUF root) before use.
const MirrorTrustedRoot = "mirror"

// rule is one parsed policy rule with its trust material loaded.
type rule struct {
	name      string
	patterns  []string
	keys      []*trustedKey
	keyless   *keyless
	canonical string // identifies the rule's content for the verified cache
}

type trustedKey struct {
	name     string
	verifier signature.Verifier
}

type keyless struct {
	trustedRoot *root.TrustedRoot // nil when mirror
	mirror      bool              // trustedRoot: mirror
	rootPath    string
	identities  []cosign.Identity
	ignoreSCT   bool
}

// The YAML shapes. Strict decoding rejects unknown fields, so a typo such as
// "issuerRegex" fails loading instead of silently dropping a constraint.
// (Field names match case-insensitively, as encoding/json does.)
type policyFile struct {
	Rules   []ruleFile `json:"rules"`
	TUFRoot string     `json:"tufRoot,omitempty"`
}

type ruleFile struct {
	Name         string       `json:"name"`
	Repositories []string     `json:"repositories"`
	Keys         []keyFile    `json:"keys,omitempty"`
	Keyless      *keylessFile `json:"keyless,omitempty"`
}

type keyFile struct {
	Name          string `json:"name,omitempty"`
	Path          string `json:"path,omitempty"`
	PEM           string `json:"pem,omitempty"`
	HashAlgorithm string `json:"hashAlgorithm,omitempty"`
}

type keylessFile struct {
	TrustedRoot string         `json:"trustedRoot"`
	IgnoreSCT   bool           `json:"ignoreSCT,omitempty"`
	Identities  []identityFile `json:"identities"`
}

type identityFile struct {
	Subject       string `json:"subject,omitempty"`
	SubjectRegExp string `json:"subjectRegExp,omitempty"`
	Issuer        string `json:"issuer,omitempty"`
	IssuerRegExp  string `json:"issuerRegExp,omitempty"`
}

// LoadPolicy reads a YAML policy file. Relative key and trusted-root paths in
// it are resolved against the file's directory.
func LoadPolicy(file string) (*Policy, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading trust policy: %w", err)
	}
	p, err := ParsePolicy(data, filepath.Dir(file))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return p, nil
}

// ParsePolicy parses a YAML policy; baseDir resolves relative paths in it.
func ParsePolicy(data []byte, baseDir string) (*Policy, error) {
	var pf policyFile
	if err := yaml.UnmarshalStrict(data, &pf); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidPolicy, err)
	}
	if len(pf.Rules) == 0 {
		return nil, fmt.Errorf("%w: no rules", ErrInvalidPolicy)
	}
	// A trusted root file named by several rules is parsed once.
	roots := map[string]*root.TrustedRoot{}
	p := &Policy{}
	if pf.TUFRoot != "" {
		b, err := os.ReadFile(resolve(baseDir, pf.TUFRoot))
		if err != nil {
			return nil, fmt.Errorf("%w: tufRoot: %w", ErrInvalidPolicy, err)
		}
		// Checked once here so that a wrong file fails loading, not every
		// verification: it must be a self-signed TUF root.
		if _, err := trustedmetadata.New(b); err != nil {
			return nil, fmt.Errorf("%w: tufRoot %s: %w", ErrInvalidPolicy, pf.TUFRoot, err)
		}
		p.tufRoot = b
	}
	seen := map[string]bool{}
	for i, rf := range pf.Rules {
		r, err := parseRule(i, rf, baseDir, roots)
		if err != nil {
			return nil, fmt.Errorf("%w: rule %d (%q): %w", ErrInvalidPolicy, i, rf.Name, err)
		}
		if seen[r.name] {
			return nil, fmt.Errorf("%w: duplicate rule name %q", ErrInvalidPolicy, r.name)
		}
		seen[r.name] = true
		p.rules = append(p.rules, r)
	}
	return p, nil
}

// KeyPolicy is a policy of one rule, named name, that trusts one public key
// (PEM, a cosign.pub) for the given repository patterns, as a policy file's
// rule with that key would.
func KeyPolicy(name string, publicKeyPEM []byte, repositories ...string) (*Policy, error) {
	r, err := parseRule(0, ruleFile{Name: name, Repositories: repositories, Keys: []keyFile{{Name: name, PEM: string(publicKeyPEM)}}}, "", nil)
	if err != nil {
		return nil, fmt.Errorf("%w: rule %q: %w", ErrInvalidPolicy, name, err)
	}

	return &Policy{rules: []*rule{r}}, nil
}

// Prepend returns a policy with first's rules before p's: the first rule
// whose pattern matches a repository governs it, so first's rules win for
// the repositories they name. It keeps p's tufRoot, first's when p has
// none. A nil p is first alone. A rule name in both is an error.
func (p *Policy) Prepend(first *Policy) (*Policy, error) {
	if p == nil {
		return first, nil
	}

	out := &Policy{rules: slices.Concat(first.rules, p.rules), tufRoot: p.tufRoot}
	if out.tufRoot == nil {
		out.tufRoot = first.tufRoot
	}

	seen := map[string]bool{}
	for _, r := range out.rules {
		if seen[r.name] {
			return nil, fmt.Errorf("%w: duplicate rule name %q", ErrInvalidPolicy, r.name)
		}

		seen[r.name] = true
	}

	return out, nil
}

func parseRule(i int, rf ruleFile, baseDir string, roots map[string]*root.TrustedRoot) (*rule, error) {
	r := &rule{name: rf.Name}
	if r.name == "" {
		r.name = fmt.Sprintf("rule-%d", i)
	}
	if len(rf.Repositories) == 0 {
		return nil, errors.New("no repositories")
	}
	for _, pat := range rf.Repositories {
		if _, err := path.Match(pat, ""); err != nil {
			return nil, fmt.Errorf("repository pattern %q: %w", pat, err)
		}
		r.patterns = append(r.patterns, pat)
	}
	if len(rf.Keys) == 0 && rf.Keyless == nil {
		return nil, errors.New("neither keys nor keyless identities")
	}
	var canon strings.Builder
	fmt.Fprintf(&canon, "%s|%q", r.name, r.patterns)
	for j, kf := range rf.Keys {
		k, der, err := parseKey(kf, baseDir)
		if err != nil {
			return nil, fmt.Errorf("key %d (%q): %w", j, kf.Name, err)
		}
		if k.name == "" {
			k.name = fmt.Sprintf("key-%d", j)
		}
		fmt.Fprintf(&canon, "|key:%x:%s", der, kf.HashAlgorithm)
		r.keys = append(r.keys, k)
	}
	if kl := rf.Keyless; kl != nil {
		if kl.TrustedRoot == "" {
			return nil, errors.New("keyless: trustedRoot is required (there is no online default)")
		}
		if len(kl.Identities) == 0 {
			return nil, errors.New("keyless: no identities")
		}
		if kl.TrustedRoot == MirrorTrustedRoot {
			r.keyless = &keyless{mirror: true, ignoreSCT: kl.IgnoreSCT}
			fmt.Fprintf(&canon, "|root:<mirror>|sct:%t", kl.IgnoreSCT)
		} else {
			rootPath := resolve(baseDir, kl.TrustedRoot)
			tr, ok := roots[rootPath]
			if !ok {
				var err error
				tr, err = root.NewTrustedRootFromPath(rootPath)
				if err != nil {
					return nil, fmt.Errorf("keyless: trusted root: %w", err)
				}
				roots[rootPath] = tr
			}
			r.keyless = &keyless{trustedRoot: tr, rootPath: rootPath, ignoreSCT: kl.IgnoreSCT}
			fmt.Fprintf(&canon, "|root:%s|sct:%t", rootPath, kl.IgnoreSCT)
		}
		for j, id := range kl.Identities {
			if err := validateIdentity(id); err != nil {
				return nil, fmt.Errorf("keyless identity %d: %w", j, err)
			}
			r.keyless.identities = append(r.keyless.identities, cosign.Identity{
				Subject: id.Subject, SubjectRegExp: id.SubjectRegExp,
				Issuer: id.Issuer, IssuerRegExp: id.IssuerRegExp,
			})
			fmt.Fprintf(&canon, "|id:%q", []string{id.Subject, id.SubjectRegExp, id.Issuer, id.IssuerRegExp})
		}
	}
	r.canonical = canon.String()
	return r, nil
}

// validateIdentity insists on both a subject and an issuer constraint, as the
// cosign CLI does: an identity without an issuer would accept the same email
// address vouched for by any OIDC provider Fulcio trusts.
func validateIdentity(id identityFile) error {
	if (id.Subject == "") == (id.SubjectRegExp == "") {
		return errors.New("exactly one of subject or subjectRegExp is required")
	}
	if (id.Issuer == "") == (id.IssuerRegExp == "") {
		return errors.New("exactly one of issuer or issuerRegExp is required")
	}
	for _, re := range []string{id.SubjectRegExp, id.IssuerRegExp} {
		if re == "" {
			continue
		}
		if _, err := regexp.Compile(re); err != nil {
			return err
		}
	}
	return nil
}

func resolve(baseDir, p string) string {
	if filepath.IsAbs(p) || baseDir == "" {
		return p
	}
	return filepath.Join(baseDir, p)
}

// parseKey loads one PEM public key and returns its verifier and DER form.
func parseKey(kf keyFile, baseDir string) (*trustedKey, []byte, error) {
	var pemBytes []byte
	switch {
	case kf.Path != "" && kf.PEM != "":
		return nil, nil, errors.New("both path and pem given")
	case kf.Path != "":
		b, err := os.ReadFile(resolve(baseDir, kf.Path))
		if err != nil {
			return nil, nil, err
		}
		pemBytes = b
	case kf.PEM != "":
		pemBytes = []byte(kf.PEM)
	default:
		return nil, nil, errors.New("one of path or pem is required")
	}
	pub, err := cryptoutils.UnmarshalPEMToPublicKey(pemBytes)
	if err != nil {
		return nil, nil, fmt.Errorf("parsing public key: %w", err)
	}
	if err := checkKeyType(pub); err != nil {
		return nil, nil, err
	}
	// cosign signs and verifies with SHA-256 for every key type unless told
	// otherwise, so that is the default here too (Ed25519 ignores it).
	hash := crypto.SHA256
	switch strings.ToLower(kf.HashAlgorithm) {
	case "", "sha256":
	case "sha384":
		hash = crypto.SHA384
	case "sha512":
		hash = crypto.SHA512
	default:
		return nil, nil, fmt.Errorf("unsupported hashAlgorithm %q", kf.HashAlgorithm)
	}
	v, err := signature.LoadVerifier(pub, hash)
	if err != nil {
		return nil, nil, fmt.Errorf("loading verifier: %w", err)
	}
	der, err := cryptoutils.MarshalPublicKeyToDER(pub)
	if err != nil {
		return nil, nil, err
	}
	return &trustedKey{name: kf.Name, verifier: v}, der, nil
}

func checkKeyType(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() && k.Curve != elliptic.P384() && k.Curve != elliptic.P521() {
			return fmt.Errorf("unsupported ECDSA curve %s", k.Curve.Params().Name)
		}
	case ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return fmt.Errorf("RSA key of %d bits is too small", k.N.BitLen())
		}
	default:
		return fmt.Errorf("unsupported public key type %T", pub)
	}
	return nil
}

// match returns the first rule whose pattern matches the repository. A
// pattern is matched with path.Match (so "*" never crosses a "/") against
// both the full name with registry ("ghcr.io/siderolabs/imager") and the
// path without it ("siderolabs/imager"), so policies can be written once for
// the upstream registry and a local mirror.
func (p *Policy) match(repo name.Repository) *rule {
	names := []string{repo.Name(), repo.RepositoryStr()}
	// Docker Hub is index.docker.io to go-containerregistry and docker.io
	// to everyone writing a policy (and in a mirror path).
	if repo.RegistryStr() == name.DefaultRegistry {
		names = append(names, "docker.io/"+repo.RepositoryStr())
	}
	for _, r := range p.rules {
		for _, pat := range r.patterns {
			for _, n := range names {
				if ok, _ := path.Match(pat, n); ok {
					return r
				}
			}
		}
	}
	return nil
}

// TUFRoot is the TUF root.json the trusted root that came with the mirror
// is checked against: the policy's tufRoot, or Sigstore's public-good root.
func (p *Policy) TUFRoot() []byte {
	if p.tufRoot != nil {
		return p.tufRoot
	}

	return PublicGoodTUFRoot()
}

// UsesMirrorRoot reports whether a keyless rule uses the trusted root that
// came with the mirror.
func (p *Policy) UsesMirrorRoot() bool {
	for _, r := range p.rules {
		if r.keyless != nil && r.keyless.mirror {
			return true
		}
	}

	return false
}

// RuleFor reports the name of the rule that governs repo, if any; useful for
// diagnostics and for tests of the policy itself.
func (p *Policy) RuleFor(repo name.Repository) (string, bool) {
	r := p.match(repo)
	if r == nil {
		return "", false
	}
	return r.name, true
}
