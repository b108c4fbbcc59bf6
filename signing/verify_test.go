package signing_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	ociremote "github.com/sigstore/cosign/v2/pkg/oci/remote"
	"github.com/sigstore/cosign/v2/pkg/oci/static"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"

	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

const (
	testIssuer   = "https://accounts.example.com"
	testIdentity = "release@siderolabs.example"
)

// TestMain points HOME and every Sigstore cache variable at an empty
// directory, so that any attempt to read or initialise a TUF root would be
// seen (TestNoNetwork checks it stays empty).
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "signing-home-")
	if err != nil {
		panic(err)
	}
	for _, k := range []string{"HOME", "TUF_ROOT", "SIGSTORE_ROOT_FILE", "XDG_CACHE_HOME"} {
		os.Setenv(k, dir)
	}
	os.Setenv("SIGSTORE_NO_CACHE", "true")
	emptyHome = dir
	code := m.Run()
	os.RemoveAll(dir)
	if fix != nil {
		os.RemoveAll(fix.dir)
	}
	os.Exit(code)
}

var emptyHome string

// fixture is one registry, keys and a keyless CA shared by a test.
type fixture struct {
	ctx     context.Context
	host    string
	current *signingtest.Key
	retired *signingtest.Key
	other   *signingtest.Key
	ca      *signingtest.KeylessCA
	otherCA *signingtest.KeylessCA
	dir     string
}

var (
	fixOnce sync.Once
	fix     *fixture
	fixErr  error
)

// keys and CAs are expensive enough (RSA) to share between tests; every test
// uses its own repositories so they do not interfere.
func getFixture(t *testing.T) *fixture {
	t.Helper()
	fixOnce.Do(func() {
		f := &fixture{ctx: context.Background()}
		for _, k := range []**signingtest.Key{&f.current, &f.retired, &f.other} {
			if *k, fixErr = signingtest.GenerateKey(signingtest.ECDSAP256); fixErr != nil {
				return
			}
		}
		if f.ca, fixErr = signingtest.NewKeylessCA(); fixErr != nil {
			return
		}
		if f.otherCA, fixErr = signingtest.NewKeylessCA(); fixErr != nil {
			return
		}
		if f.dir, fixErr = os.MkdirTemp("", "signing-fixture-"); fixErr != nil {
			return
		}
		tr, err := f.ca.TrustedRootJSON()
		if err != nil {
			fixErr = err
			return
		}
		// The CA of ca, the logs of otherCA: otherCA's log proofs verify,
		// its certificates must not.
		mixed, err := signingtest.MixedTrustedRootJSON(f.ca, f.otherCA)
		if err != nil {
			fixErr = err
			return
		}
		files := map[string][]byte{
			"trusted_root.json": tr,
			"mixed_root.json":   mixed,
			"keys/current.pub":  f.current.PublicKeyPEM(),
			"keys/retired.pub":  f.retired.PublicKeyPEM(),
		}
		for p, b := range files {
			p = filepath.Join(f.dir, p)
			if fixErr = os.MkdirAll(filepath.Dir(p), 0o755); fixErr != nil {
				return
			}
			if fixErr = os.WriteFile(p, b, 0o644); fixErr != nil {
				return
			}
		}
		fix = f
	})
	if fixErr != nil {
		t.Fatal(fixErr)
	}
	// The registry is per test so that tests can run in parallel and a
	// test's transport restrictions see only its own registry.
	f := *fix
	f.host = signingtest.NewRegistry(t)
	return &f
}

// policyYAML trusts current+retired keys for */keys/*, the CA's release
// identity for */keyless/*, and both for */both/*.
func (f *fixture) policy(t *testing.T) *signing.Policy {
	t.Helper()
	y := `
rules:
  - name: keys
    repositories: ["*/keys/*"]
    keys:
      - name: current
        path: keys/current.pub
      - name: retired
        path: keys/retired.pub
  - name: keyless
    repositories: ["*/keyless/*", "keyless-short/*"]
    keyless:
      trustedRoot: trusted_root.json
      ignoreSCT: true # the virtual CA issues no SCTs
      identities:
        - subject: ` + testIdentity + `
          issuer: ` + testIssuer + `
        - subjectRegExp: '^ci-.*@siderolabs\.example$'
          issuerRegExp: '^https://accounts\.example\.com$'
  - name: keyless-sct
    repositories: ["*/keyless-sct/*"]
    keyless:
      trustedRoot: trusted_root.json # SCTs required (the default)
      identities:
        - subject: ` + testIdentity + `
          issuer: ` + testIssuer + `
  - name: keyless-mixed
    repositories: ["*/keyless-mixed/*"]
    keyless:
      trustedRoot: mixed_root.json
      ignoreSCT: true
      identities:
        - subject: ` + testIdentity + `
          issuer: ` + testIssuer + `
  - name: only-current
    repositories: ["*/current/*"]
    keys:
      - name: current
        path: keys/current.pub
`
	p, err := signing.ParsePolicy([]byte(y), f.dir)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (f *fixture) push(t *testing.T, repo string) name.Digest {
	t.Helper()
	r, err := name.NewRepository(f.host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	d, err := signingtest.PushRandomImage(f.ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func (f *fixture) verifier(t *testing.T, opts ...signing.Option) *signing.Verifier {
	t.Helper()
	v, err := signing.NewVerifier(f.policy(t), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestVerifyAccepts(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	ctx := f.ctx
	tests := []struct {
		name       string
		repo       string
		sign       func(t *testing.T, d name.Digest) error
		wantMethod string
		wantRule   string
		wantSigner string
	}{
		{
			name: "key legacy .sig", repo: "keys/imager", wantMethod: signing.MethodKeyLegacy, wantRule: "keys", wantSigner: `"current"`,
			sign: func(t *testing.T, d name.Digest) error { return signingtest.SignLegacy(ctx, d, f.current) },
		},
		{
			name: "key bundle", repo: "keys/installer", wantMethod: signing.MethodKeyBundle, wantRule: "keys", wantSigner: `"current"`,
			sign: func(t *testing.T, d name.Digest) error { return signingtest.SignBundle(ctx, d, f.current) },
		},
		{
			name: "rotation: retired key still listed (legacy)", repo: "keys/old-release", wantMethod: signing.MethodKeyLegacy, wantRule: "keys", wantSigner: `"retired"`,
			sign: func(t *testing.T, d name.Digest) error { return signingtest.SignLegacy(ctx, d, f.retired) },
		},
		{
			name: "rotation: retired key still listed (bundle)", repo: "keys/old-bundle", wantMethod: signing.MethodKeyBundle, wantRule: "keys", wantSigner: `"retired"`,
			sign: func(t *testing.T, d name.Digest) error { return signingtest.SignBundle(ctx, d, f.retired) },
		},
		{
			name: "one bad and one good signature", repo: "keys/mixed", wantMethod: signing.MethodKeyLegacy, wantRule: "keys", wantSigner: `"current"`,
			sign: func(t *testing.T, d name.Digest) error {
				if err := signingtest.SignLegacy(ctx, d, f.other); err != nil {
					return err
				}
				return signingtest.SignLegacy(ctx, d, f.current)
			},
		},
		{
			name: "keyless legacy (SET)", repo: "keyless/imager", wantMethod: signing.MethodKeylessLegacy, wantRule: "keyless", wantSigner: testIdentity,
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignLegacy(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
		},
		{
			name: "keyless bundle (inclusion proof)", repo: "keyless/installer", wantMethod: signing.MethodKeylessBundle, wantRule: "keyless", wantSigner: testIdentity,
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignBundle(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
		},
		{
			name: "keyless regexp identity", repo: "keyless/extensions", wantMethod: signing.MethodKeylessLegacy, wantRule: "keyless", wantSigner: "ci-42@siderolabs.example",
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignLegacy(ctx, d, "ci-42@siderolabs.example", testIssuer, signingtest.DefaultIntegratedTime())
			},
		},
		{
			name: "pattern without registry", repo: "keyless-short/overlays", wantMethod: signing.MethodKeylessBundle, wantRule: "keyless", wantSigner: testIdentity,
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignBundle(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
		},
	}
	v := f.verifier(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.push(t, tt.repo)
			if err := tt.sign(t, d); err != nil {
				t.Fatalf("signing: %v", err)
			}
			got, err := v.Verify(ctx, d)
			if err != nil {
				t.Fatalf("Verify(%s) = %v, want success", d, err)
			}
			if got.Digest() != d || got.Method() != tt.wantMethod || got.Rule() != tt.wantRule {
				t.Errorf("got %v %q %q, want %v %q %q", got.Digest(), got.Method(), got.Rule(), d, tt.wantMethod, tt.wantRule)
			}
			if !strings.Contains(got.Signer(), tt.wantSigner) {
				t.Errorf("got signer %q, want it to contain %q", got.Signer(), tt.wantSigner)
			}
		})
	}
}

func TestKeyTypes(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	for _, kt := range []signingtest.KeyType{signingtest.ECDSAP256, signingtest.ECDSAP384, signingtest.Ed25519, signingtest.RSA3072} {
		t.Run(string(kt), func(t *testing.T) {
			k := signingtest.MustGenerateKey(t, kt)
			y := fmt.Sprintf("rules:\n  - repositories: ['*/kt/*']\n    keys:\n      - pem: |\n%s", indent(string(k.PublicKeyPEM()), "          "))
			p, err := signing.ParsePolicy([]byte(y), "")
			if err != nil {
				t.Fatal(err)
			}
			v, err := signing.NewVerifier(p)
			if err != nil {
				t.Fatal(err)
			}
			for _, sign := range []func(context.Context, name.Digest, *signingtest.Key, ...remote.Option) error{signingtest.SignLegacy, signingtest.SignBundle} {
				d := f.push(t, "kt/"+strings.ToLower(string(kt)))
				if err := sign(f.ctx, d, k); err != nil {
					t.Fatal(err)
				}
				if _, err := v.Verify(f.ctx, d); err != nil {
					t.Errorf("Verify = %v", err)
				}
			}
		})
	}
}

// signBundleFor attaches to d a valid bundle made for src.
func signBundleFor(ctx context.Context, src, d name.Digest, k *signingtest.Key) error {
	b, err := signingtest.KeyBundle(src, k)
	if err != nil {
		return err
	}
	return signingtest.AttachBundle(ctx, d, b)
}

func indent(s, prefix string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	for i := range lines {
		lines[i] = prefix + lines[i]
	}
	return strings.Join(lines, "\n") + "\n"
}

// copySignatures copies the legacy signatures of from onto to: validly
// signed, but for another digest.
func copySignatures(ctx context.Context, from, to name.Digest) error {
	st, err := ociremote.SignatureTag(from)
	if err != nil {
		return err
	}
	sigs, err := ociremote.Signatures(st)
	if err != nil {
		return err
	}
	list, err := sigs.Get()
	if err != nil {
		return err
	}
	for _, s := range list {
		if err := signingtest.AttachLegacy(ctx, to, s); err != nil {
			return err
		}
	}
	return nil
}

func TestVerifyRefuses(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	ctx := f.ctx
	tests := []struct {
		name string
		repo string
		sign func(t *testing.T, d name.Digest) error
		want []string // substrings of the error message
	}{
		{
			name: "no policy rule", repo: "elsewhere/imager",
			sign: func(t *testing.T, d name.Digest) error { return signingtest.SignLegacy(ctx, d, f.current) },
			want: []string{"no trust policy matches repository " + f.host + "/elsewhere/imager"},
		},
		{
			name: "unsigned", repo: "keys/unsigned",
			sign: func(t *testing.T, d name.Digest) error { return nil },
			want: []string{"no signatures found", `policy rule "keys"`},
		},
		{
			name: "wrong key legacy", repo: "keys/wrong-legacy",
			sign: func(t *testing.T, d name.Digest) error { return signingtest.SignLegacy(ctx, d, f.other) },
			want: []string{"no signature verifies against the policy", `legacy signature 0 with key "current"`, "invalid signature"},
		},
		{
			name: "wrong key bundle", repo: "keys/wrong-bundle",
			sign: func(t *testing.T, d name.Digest) error { return signingtest.SignBundle(ctx, d, f.other) },
			want: []string{"no signature verifies against the policy", `bundle 0 with key "current"`, "could not verify envelope"},
		},
		{
			name: "retired key not listed by the rule", repo: "current/old",
			sign: func(t *testing.T, d name.Digest) error { return signingtest.SignLegacy(ctx, d, f.retired) },
			want: []string{"no signature verifies", "invalid signature"},
		},
		{
			name: "legacy signature for another digest", repo: "keys/other-digest",
			sign: func(t *testing.T, d name.Digest) error {
				src := f.push(t, "keys/other-digest-src")
				if err := signingtest.SignLegacy(ctx, src, f.current); err != nil {
					return err
				}
				return copySignatures(ctx, src, d)
			},
			want: []string{"no signature verifies", "invalid or missing digest in claim: " + "sha256:"},
		},
		{
			name: "bundle for another digest", repo: "keys/other-digest-bundle",
			sign: func(t *testing.T, d name.Digest) error {
				src := f.push(t, "keys/other-digest-bundle-src")
				// a bundle for src attached to d
				return signBundleFor(ctx, src, d, f.current)
			},
			want: []string{"no signature verifies", "bundle 0", "provided artifact digest does not match any digest in statement"},
		},
		{
			name: "tampered signature", repo: "keys/tampered-sig",
			sign: func(t *testing.T, d name.Digest) error {
				payload, _ := signingtest.SimpleSigningPayload(d)
				raw, err := f.current.SignerVerifier().SignMessage(strings.NewReader(string(payload)))
				if err != nil {
					return err
				}
				raw[len(raw)/2] ^= 0xff
				s, err := static.NewSignature(payload, base64.StdEncoding.EncodeToString(raw))
				if err != nil {
					return err
				}
				return signingtest.AttachLegacy(ctx, d, s)
			},
			want: []string{"no signature verifies", "invalid signature"},
		},
		{
			name: "tampered payload", repo: "keys/tampered-payload",
			sign: func(t *testing.T, d name.Digest) error {
				payload, _ := signingtest.SimpleSigningPayload(d)
				raw, err := f.current.SignerVerifier().SignMessage(strings.NewReader(string(payload)))
				if err != nil {
					return err
				}
				// Same digest, but an extra claim the signer never made.
				altered, err := (&sigpayload.Cosign{Image: d, Annotations: map[string]any{"approved": "yes"}}).MarshalJSON()
				if err != nil {
					return err
				}
				s, err := static.NewSignature(altered, base64.StdEncoding.EncodeToString(raw))
				if err != nil {
					return err
				}
				return signingtest.AttachLegacy(ctx, d, s)
			},
			want: []string{"no signature verifies", "invalid signature"},
		},
		{
			name: "keyless identity mismatch", repo: "keyless/wrong-identity",
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignLegacy(ctx, d, "mallory@evil.example", testIssuer, signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "none of the expected identities matched", "mallory@evil.example"},
		},
		{
			name: "keyless issuer mismatch", repo: "keyless/wrong-issuer",
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignLegacy(ctx, d, testIdentity, "https://evil.example", signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "none of the expected identities matched", "with issuer https://evil.example"},
		},
		{
			name: "keyless bundle identity mismatch", repo: "keyless/wrong-identity-bundle",
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignBundle(ctx, d, "mallory@evil.example", testIssuer, signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "bundle 0 with identity", `got "mallory@evil.example"`},
		},
		{
			name: "keyless bundle issuer mismatch", repo: "keyless/wrong-issuer-bundle",
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignBundle(ctx, d, testIdentity, "https://evil.example", signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "bundle 0 with identity", `expected issuer value "https://accounts.example.com", got "https://evil.example"`},
		},
		{
			name: "keyless cert expired when logged", repo: "keyless/expired",
			sign: func(t *testing.T, d name.Digest) error {
				// The certificate is valid for ten minutes from now; the log
				// entry claims a time after that.
				return f.ca.SignLegacy(ctx, d, testIdentity, testIssuer, time.Now().Add(30*time.Minute))
			},
			want: []string{"no signature verifies", "certificate expired before signatures were entered in log"},
		},
		{
			name: "keyless bundle cert expired when logged", repo: "keyless/expired-bundle",
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignBundle(ctx, d, testIdentity, testIssuer, time.Now().Add(30*time.Minute))
			},
			want: []string{"no signature verifies", "bundle 0", "integrated time outside certificate validity"},
		},
		{
			name: "keyless from an untrusted CA", repo: "keyless/untrusted-ca",
			sign: func(t *testing.T, d name.Digest) error {
				return f.otherCA.SignLegacy(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "legacy signature 0 with identity", "rekor log public key not found"},
		},
		{
			name: "keyless bundle from an untrusted CA", repo: "keyless/untrusted-ca-bundle",
			sign: func(t *testing.T, d name.Digest) error {
				return f.otherCA.SignBundle(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "bundle 0 with identity", "not enough verified log entries"},
		},
		{
			name: "keyless cert without SCT when the policy requires one", repo: "keyless-sct/imager",
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignLegacy(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "certificate does not include required embedded SCT"},
		},
		{
			name: "keyless bundle cert without SCT when the policy requires one", repo: "keyless-sct/installer",
			sign: func(t *testing.T, d name.Digest) error {
				return f.ca.SignBundle(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "bundle 0 with identity", "SCT"},
		},
		{
			name: "keyless cert from an untrusted CA, logged in a trusted log", repo: "keyless-mixed/imager",
			sign: func(t *testing.T, d name.Digest) error {
				return f.otherCA.SignLegacy(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "legacy signature 0 with identity", "leaf certificate verification failed"},
		},
		{
			name: "keyless bundle cert from an untrusted CA, logged in a trusted log", repo: "keyless-mixed/installer",
			sign: func(t *testing.T, d name.Digest) error {
				return f.otherCA.SignBundle(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
			want: []string{"no signature verifies", "bundle 0 with identity", "failed to verify leaf certificate"},
		},
		{
			name: "key signature where keyless is required", repo: "keyless/by-key",
			sign: func(t *testing.T, d name.Digest) error { return signingtest.SignLegacy(ctx, d, f.current) },
			want: []string{"no signature verifies", "offline verification failed"},
		},
	}
	v := f.verifier(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := f.push(t, tt.repo)
			if err := tt.sign(t, d); err != nil {
				t.Fatalf("signing: %v", err)
			}
			got, err := v.Verify(ctx, d)
			if err == nil {
				t.Fatalf("Verify(%s) = %v, want refusal", d, got)
			}
			if !got.IsZero() {
				t.Errorf("refusal returned non-zero Verified %v", got)
			}
			if !errors.Is(err, signing.ErrUntrusted) {
				t.Errorf("errors.Is(%v, ErrUntrusted) = false", err)
			}
			msg := err.Error()
			t.Log(msg)
			for _, w := range append([]string{d.Context().Name(), d.DigestStr()}, tt.want...) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q\ndoes not contain %q", msg, w)
				}
			}
		})
	}
}

// countingTransport counts requests and fails any that leave the registry.
type countingTransport struct {
	allowed string
	n       atomic.Int64
	denied  atomic.Int64
	base    http.RoundTripper
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.n.Add(1)
	if r.URL.Host != c.allowed {
		c.denied.Add(1)
		return nil, fmt.Errorf("test: request to %s is not allowed", r.URL)
	}
	return c.base.RoundTrip(r)
}

// registryOnlyTransport dials nothing but the registry's address, whatever
// the request asks for.
func registryOnlyTransport(host string, denied *atomic.Int64) *http.Transport {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			if addr != host {
				denied.Add(1)
				return nil, fmt.Errorf("test: dial %s %s is not allowed", network, addr)
			}
			return d.DialContext(ctx, network, addr)
		},
	}
}

func TestNoNetworkButRegistry(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	ctx := f.ctx
	var dialDenied atomic.Int64
	ct := &countingTransport{allowed: f.host, base: registryOnlyTransport(f.host, &dialDenied)}
	v := f.verifier(t, signing.WithRemoteOptions(remote.WithTransport(ct)))

	signs := map[string]func(name.Digest) error{
		"keys/nonet-legacy": func(d name.Digest) error { return signingtest.SignLegacy(ctx, d, f.current) },
		"keys/nonet-bundle": func(d name.Digest) error { return signingtest.SignBundle(ctx, d, f.current) },
		"keyless/nonet-legacy": func(d name.Digest) error {
			return f.ca.SignLegacy(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
		},
		"keyless/nonet-bundle": func(d name.Digest) error {
			return f.ca.SignBundle(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
		},
		"keyless/nonet-refused": func(d name.Digest) error {
			return f.otherCA.SignBundle(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
		},
	}
	for repo, sign := range signs {
		d := f.push(t, repo)
		if err := sign(d); err != nil {
			t.Fatal(err)
		}
		_, err := v.Verify(ctx, d)
		if wantErr := strings.HasSuffix(repo, "refused"); (err != nil) != wantErr {
			t.Errorf("%s: Verify = %v, want error %t", repo, err, wantErr)
		}

		// The second call is answered from the cache: no request at all.
		if err == nil {
			before := ct.n.Load()
			if _, err := v.Verify(ctx, d); err != nil {
				t.Errorf("%s: second Verify = %v", repo, err)
			}
			if n := ct.n.Load() - before; n != 0 {
				t.Errorf("%s: second Verify made %d requests, want 0 (cached)", repo, n)
			}
		}
	}
	if ct.denied.Load() != 0 || dialDenied.Load() != 0 {
		t.Errorf("requests outside the registry: %d, dials: %d", ct.denied.Load(), dialDenied.Load())
	}
	if ct.n.Load() == 0 {
		t.Error("the test transport was not used")
	}
	entries, err := os.ReadDir(emptyHome)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("something wrote to HOME/TUF_ROOT (%s): %v", emptyHome, entries)
	}
}

func TestVerifyConcurrentAndCanceled(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	v := f.verifier(t)
	d := f.push(t, "keys/concurrent")
	if err := signingtest.SignLegacy(f.ctx, d, f.current); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := v.Verify(f.ctx, d)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}

	ctx, cancel := context.WithCancel(f.ctx)
	cancel()
	d2 := f.push(t, "keys/canceled")
	if _, err := v.Verify(ctx, d2); !errors.Is(err, context.Canceled) {
		t.Errorf("Verify with canceled context = %v, want context.Canceled", err)
	}
}
