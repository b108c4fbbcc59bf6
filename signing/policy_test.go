package signing_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

func TestPolicyFirstMatchWins(t *testing.T) {
	k := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "k.pub"), k.PublicKeyPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	y := `
rules:
  - name: imager
    repositories: ["siderolabs/imager"]
    keys: [{path: k.pub}]
  - name: siderolabs
    repositories: ["*/siderolabs/*", "siderolabs/*"]
    keys: [{path: k.pub}]
  - name: mirror
    repositories: ["mirror.local:5000/*/*"]
    keys: [{path: k.pub}]
  - name: hub
    repositories: ["docker.io/library/*"]
    keys: [{path: k.pub}]
`
	file := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(file, []byte(y), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := signing.LoadPolicy(file)
	if err != nil {
		t.Fatal(err)
	}
	for repo, want := range map[string]string{
		"ghcr.io/siderolabs/imager":              "imager",
		"127.0.0.1:5000/siderolabs/imager":       "imager",
		"ghcr.io/siderolabs/installer":           "siderolabs",
		"docker.io/siderolabs/installer":         "siderolabs",
		"mirror.local:5000/siderolabs/installer": "siderolabs",
		"mirror.local:5000/other/thing":          "mirror",
		"ghcr.io/other/thing":                    "",
		"ghcr.io/siderolabs/nested/x":            "",
		// Docker Hub by any of its names, upstream or in a mirror.
		"docker.io/library/nginx":                   "hub",
		"index.docker.io/library/nginx":             "hub",
		"nginx":                                     "hub",
		"mirror.local:5000/docker.io/library/nginx": "hub",
		"127.0.0.1:5000/docker.io/library/nginx":    "hub",
		"quay.io/library/nginx":                     "",
	} {
		r, err := name.NewRepository(repo)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := p.RuleFor(r)
		if got != want {
			t.Errorf("RuleFor(%s) = %q, want %q", repo, got, want)
		}
	}
}

func TestParsePolicyErrors(t *testing.T) {
	k := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)
	pemKey := "          " + strings.ReplaceAll(strings.TrimSpace(string(k.PublicKeyPEM())), "\n", "\n          ")
	tests := []struct {
		name, yaml, want string
	}{
		{"empty", ``, "no rules"},
		{"unknown field", "rules:\n  - repositories: ['a/*']\n    keys: [{pem: x}]\n    extra: 1\n", "unknown field"},
		{"no repositories", "rules:\n  - keys: [{path: k.pub}]\n", "no repositories"},
		{"bad pattern", "rules:\n  - repositories: ['a/[']\n    keys: [{path: k.pub}]\n", "syntax error in pattern"},
		{"no trust", "rules:\n  - repositories: ['a/*']\n", "neither keys nor keyless"},
		{"missing key file", "rules:\n  - repositories: ['a/*']\n    keys: [{path: nope.pub}]\n", "nope.pub"},
		{"bad pem", "rules:\n  - repositories: ['a/*']\n    keys: [{pem: nonsense}]\n", "parsing public key"},
		{"bad hash", "rules:\n  - repositories: ['a/*']\n    keys:\n      - hashAlgorithm: md5\n        pem: |\n" + pemKey + "\n", "unsupported hashAlgorithm"},
		{"keyless without root", "rules:\n  - repositories: ['a/*']\n    keyless: {identities: [{subject: a, issuer: b}]}\n", "trustedRoot is required"},
		{"duplicate names", "rules:\n  - name: x\n    repositories: ['a/*']\n    keys:\n      - pem: |\n" + pemKey + "\n  - name: x\n    repositories: ['b/*']\n    keys:\n      - pem: |\n" + pemKey + "\n", "duplicate rule name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := signing.ParsePolicy([]byte(tt.yaml), t.TempDir())
			if err == nil {
				t.Fatal("ParsePolicy succeeded, want error")
			}
			if !errors.Is(err, signing.ErrInvalidPolicy) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %v, want ErrInvalidPolicy containing %q", err, tt.want)
			}
		})
	}
}

func TestParsePolicyIdentityErrors(t *testing.T) {
	f := getFixture(t)
	for name, id := range map[string]string{
		"no issuer":      "{subject: a@b}",
		"no subject":     "{issuer: https://x}",
		"both subjects":  "{subject: a@b, subjectRegExp: 'a', issuer: https://x}",
		"bad regexp":     "{subjectRegExp: '(', issuer: https://x}",
		"bad issuer re":  "{subject: a@b, issuerRegExp: '['}",
		"misspelt field": "{subject: a@b, issuerRegex: 'x'}",
	} {
		t.Run(name, func(t *testing.T) {
			y := "rules:\n  - repositories: ['a/*']\n    keyless:\n      trustedRoot: trusted_root.json\n      identities: [" + id + "]\n"
			if _, err := signing.ParsePolicy([]byte(y), f.dir); !errors.Is(err, signing.ErrInvalidPolicy) {
				t.Errorf("ParsePolicy = %v, want ErrInvalidPolicy", err)
			}
		})
	}
}

// FuzzParsePolicy: no input makes the parser panic, and every error it
// returns is classified as ErrInvalidPolicy.
func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte("rules:\n  - repositories: ['*/siderolabs/*']\n    keys: [{pem: x}]\n"))
	f.Add([]byte("rules:\n  - repositories: ['a/[']\n    keyless: {trustedRoot: x, identities: [{subject: a, issuer: b}]}\n"))
	f.Add([]byte("rules: [{}]"))
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := signing.ParsePolicy(data, t.TempDir())
		if err != nil && !errors.Is(err, signing.ErrInvalidPolicy) {
			t.Errorf("error %v does not match ErrInvalidPolicy", err)
		}
		if err == nil {
			p.RuleFor(name.MustParseReference("example.com/a/b").Context())
		}
	})
}

// TestPolicyPrepend: the rules prepended (the demo's key) govern the
// repositories they name, the rest keep the loaded policy's rules, and a
// rule name in both is refused rather than one shadowing the other.
func TestPolicyPrepend(t *testing.T) {
	k := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)

	demo, err := signing.KeyPolicy("demo", k.PublicKeyPEM(), "*/kiln-demo/siderolabs/*")
	if err != nil {
		t.Fatal(err)
	}

	site, err := signing.KeyPolicy("site", k.PublicKeyPEM(), "*/*/siderolabs/*", "*/siderolabs/*")
	if err != nil {
		t.Fatal(err)
	}

	p, err := site.Prepend(demo)
	if err != nil {
		t.Fatal(err)
	}

	for repo, want := range map[string]string{
		"mirror.local/kiln-demo/siderolabs/imager": "demo",
		"mirror.local/harbor/siderolabs/imager":    "site",
		"ghcr.io/siderolabs/imager":                "site",
		"ghcr.io/other/thing":                      "",
	} {
		r, err := name.NewRepository(repo)
		if err != nil {
			t.Fatal(err)
		}

		if got, _ := p.RuleFor(r); got != want {
			t.Errorf("RuleFor(%s) = %q, want %q", repo, got, want)
		}
	}

	// site itself is unchanged.
	if got, _ := site.RuleFor(name.MustParseReference("mirror.local/kiln-demo/siderolabs/imager:x").Context()); got != "site" {
		t.Errorf("Prepend changed the policy it was called on: RuleFor = %q", got)
	}

	var none *signing.Policy
	if p, err := none.Prepend(demo); err != nil || p != demo {
		t.Errorf("nil.Prepend(demo) = %v, %v; want demo", p, err)
	}

	clash, err := signing.KeyPolicy("site", k.PublicKeyPEM(), "*/kiln-demo/*")
	if err != nil {
		t.Fatal(err)
	}

	if _, err := site.Prepend(clash); !errors.Is(err, signing.ErrInvalidPolicy) || !strings.Contains(err.Error(), `"site"`) {
		t.Errorf("Prepend with a rule name in both: %v, want ErrInvalidPolicy naming it", err)
	}
}
