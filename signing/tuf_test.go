package signing_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
	"github.com/kiln-dev/kiln/signing/signingtest/localsigstore"
)

func fetch(t *testing.T, repo *localsigstore.TUFRepository, anchor []byte) *signing.CarriedRoot {
	t.Helper()
	c, err := signing.FetchTrustedRoot(context.Background(), signing.TUFOptions{URL: repo.URL, Root: anchor})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestFetchTrustedRootThroughTUF(t *testing.T) {
	t.Parallel()
	_, _, _ = localFixture(t)
	repo := localsigstore.NewTUFRepository(t, map[string][]byte{signing.TrustedRootTarget: localRootJSON, "other.txt": []byte("x")})
	anchor := repo.Root1()

	c := fetch(t, repo, anchor)
	if !bytes.Equal(c.TrustedRoot, localRootJSON) {
		t.Fatal("fetched trusted root differs from the published one")
	}
	if c.Repository != repo.URL {
		t.Errorf("repository %q, want %q", c.Repository, repo.URL)
	}
	tr, err := c.Verify(anchor)
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.RekorLogs()) != 2 || len(tr.TimestampingAuthorities()) != 1 {
		t.Errorf("parsed root has %d Rekor logs and %d TSAs", len(tr.RekorLogs()), len(tr.TimestampingAuthorities()))
	}

	// Carried as two documents and read back, it still verifies.
	tj, err := c.TUFJSON()
	if err != nil {
		t.Fatal(err)
	}
	back, err := signing.ParseCarriedRoot(c.TrustedRoot, tj)
	if err != nil {
		t.Fatal(err)
	}
	if back.Digest() != c.Digest() {
		t.Error("digest changed through TUFJSON/ParseCarriedRoot")
	}
	if _, err := back.Verify(anchor); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(c.Describe(), c.TrustedRootDigest()) || !strings.Contains(c.Describe(), "timestamp version 1") {
		t.Errorf("Describe() = %q", c.Describe())
	}
}

// TestTrustedRootAcrossRootRotations: the client starts from version 1;
// the repository has rotated every key twice since. What is carried lets a
// far side that knows only version 1 check the new trusted root.
func TestTrustedRootAcrossRootRotations(t *testing.T) {
	t.Parallel()
	_, _, _ = localFixture(t)
	repo := localsigstore.NewTUFRepository(t, map[string][]byte{signing.TrustedRootTarget: []byte(`{"old": true}`)})
	anchor := repo.Root1()
	repo.RotateRoot(t)
	repo.RotateRoot(t)
	repo.SetTarget(t, signing.TrustedRootTarget, localRootJSON)

	c := fetch(t, repo, anchor)
	if len(c.Roots) != 3 {
		t.Fatalf("carried %d root.json versions, want 3 (1, 2, 3)", len(c.Roots))
	}
	if !bytes.Equal(c.TrustedRoot, localRootJSON) {
		t.Fatal("not the newest trusted root")
	}
	if _, err := c.Verify(anchor); err != nil {
		t.Fatalf("far side from root v1: %v", err)
	}

	// Without the intermediate roots the chain is broken.
	broken := *c
	broken.Roots = [][]byte{c.Roots[0], c.Roots[2]}
	if _, err := broken.Verify(anchor); err == nil || !strings.Contains(err.Error(), "root.json version 3") {
		t.Errorf("Verify without root v2 = %v, want a refusal naming version 3", err)
	}
}

// TestCarriedRootRefusals: whatever is changed on the way, or checked
// against another TUF root, does not verify.
func TestCarriedRootRefusals(t *testing.T) {
	t.Parallel()
	_, _, _ = localFixture(t)
	repo := localsigstore.NewTUFRepository(t, map[string][]byte{signing.TrustedRootTarget: localRootJSON})
	anchor := repo.Root1()
	c := fetch(t, repo, anchor)
	other := localsigstore.NewTUFRepository(t, map[string][]byte{signing.TrustedRootTarget: localRootJSON})
	oc := fetch(t, other, other.Root1())

	mod := func(f func(*signing.CarriedRoot)) *signing.CarriedRoot {
		cp := *c
		f(&cp)
		return &cp
	}
	evil := bytes.Replace(localRootJSON, []byte(`"https://rekor.localhost"`), []byte(`"https://rekor.evil"`), 1)
	for _, tc := range []struct {
		name   string
		c      *signing.CarriedRoot
		anchor []byte
		want   string
	}{
		{"another trusted root", mod(func(c *signing.CarriedRoot) { c.TrustedRoot = evil }), anchor, "is not the one targets.json (version 1) names"},
		{"another repository's targets", mod(func(c *signing.CarriedRoot) { c.Targets = oc.Targets }), anchor, "targets.json"},
		{"another repository's timestamp", mod(func(c *signing.CarriedRoot) { c.Timestamp = oc.Timestamp }), anchor, "timestamp.json"},
		{"checked against another TUF root", c, other.Root1(), "timestamp.json"},
		{"the public-good TUF root", c, signing.PublicGoodTUFRoot(), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := tc.c.Verify(tc.anchor); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Verify = %v, want an error containing %q", err, tc.want)
			} else {
				t.Log(err)
			}
		})
	}

	// The client itself refuses a mirror serving another target file.
	repo.ReplaceFile(repo.TargetPath(signing.TrustedRootTarget), evil)
	if _, err := signing.FetchTrustedRoot(context.Background(), signing.TUFOptions{URL: repo.URL, Root: anchor}); err == nil {
		t.Error("FetchTrustedRoot accepted a target the metadata does not name")
	} else {
		t.Log(err)
	}
}

// TestCarriedRootOutlivesItsExpiry: on the far side the TUF metadata has
// expired; the carried root is still checked, by signatures, not by clock.
func TestCarriedRootOutlivesItsExpiry(t *testing.T) {
	t.Parallel()
	_, _, _ = localFixture(t)
	repo := localsigstore.NewTUFRepository(t, map[string][]byte{signing.TrustedRootTarget: localRootJSON})
	repo.Expire(t, time.Now().Add(2*time.Second))
	c := fetch(t, repo, repo.Root1())
	time.Sleep(3 * time.Second)
	if _, err := signing.FetchTrustedRoot(context.Background(), signing.TUFOptions{URL: repo.URL, Root: repo.Root1()}); err == nil {
		t.Error("the TUF client accepted expired metadata on the connected side")
	}
	if _, err := c.Verify(repo.Root1()); err != nil {
		t.Fatalf("carried root after its metadata expired: %v", err)
	}
}

// TestVerifierWithMirrorRoot: a policy whose keyless rule says
// `trustedRoot: mirror` verifies with the root the mirror carries, checked
// against the policy's tufRoot, and refuses clearly without one.
func TestVerifierWithMirrorRoot(t *testing.T) {
	t.Parallel()
	ss, _, _ := localFixture(t)
	ctx := context.Background()
	repo := localsigstore.NewTUFRepository(t, map[string][]byte{signing.TrustedRootTarget: localRootJSON})
	c := fetch(t, repo, repo.Root1())
	other := localsigstore.NewTUFRepository(t, map[string][]byte{signing.TrustedRootTarget: localRootJSON})
	oc := fetch(t, other, other.Root1())

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "tuf-root.json"), repo.Root1(), 0o644); err != nil {
		t.Fatal(err)
	}
	rule := `
rules:
  - name: siderolabs
    repositories: ["*/siderolabs/*"]
    keyless:
      trustedRoot: mirror
      identities:
        - subject: ` + sidero.Subject + `
          issuer: ` + sidero.Issuer + `
`
	withTUF, err := signing.ParsePolicy([]byte("tufRoot: tuf-root.json\n"+rule), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !withTUF.UsesMirrorRoot() || !bytes.Equal(withTUF.TUFRoot(), repo.Root1()) {
		t.Fatal("policy did not record the mirror root and its TUF root")
	}
	publicGood, err := signing.ParsePolicy([]byte(rule), dir)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(publicGood.TUFRoot(), signing.PublicGoodTUFRoot()) {
		t.Fatal("default TUF root is not the public-good one")
	}

	host := signingtest.NewRegistry(t)
	r, _ := name.NewRepository(host + "/siderolabs/imager")
	d, err := signingtest.PushRandomImage(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2, TSA: true}); err != nil {
		t.Fatal(err)
	}

	calls := 0
	provide := func(c *signing.CarriedRoot) signing.Option {
		return signing.WithMirrorRoot(func(context.Context) (*signing.CarriedRoot, error) { calls++; return c, nil })
	}
	for _, tc := range []struct {
		name string
		p    *signing.Policy
		opts []signing.Option
		want string // "" = accepted
	}{
		{"carried root, policy's TUF root", withTUF, []signing.Option{provide(c)}, ""},
		{"no provider", withTUF, nil, "no trusted root came with the mirror"},
		{"mirror carries none", withTUF, []signing.Option{provide(nil)}, "no trusted root came with the mirror"},
		{"provider fails", withTUF, []signing.Option{signing.WithMirrorRoot(func(context.Context) (*signing.CarriedRoot, error) {
			return nil, errors.New("registry down")
		})}, "reading the trusted root that came with the mirror: registry down"},
		{"root from another TUF repository", withTUF, []signing.Option{provide(oc)}, "does not verify against the policy's TUF root"},
		{"public-good TUF root", publicGood, []signing.Option{provide(c)}, "does not verify against the policy's TUF root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := signing.NewVerifier(tc.p, tc.opts...)
			if err != nil {
				t.Fatal(err)
			}
			got, err := v.Verify(ctx, d)
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				if got.Method() != signing.MethodKeylessBundle {
					t.Errorf("method %q", got.Method())
				}
				return
			}
			if err == nil || !errors.Is(err, signing.ErrUntrusted) || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "keyless rule without a usable trusted root") {
				t.Fatalf("Verify = %v, want a refusal containing %q", err, tc.want)
			}
			t.Log(err)
		})
	}
	if calls == 0 {
		t.Error("the provider was never asked")
	}

	// Within MirrorRootRefresh a found root is not read again, even for
	// another image.
	calls = 0
	v, err := signing.NewVerifier(withTUF, provide(c))
	if err != nil {
		t.Fatal(err)
	}
	d2, err := signingtest.PushRandomImage(ctx, r)
	if err != nil {
		t.Fatal(err)
	}
	if err := ss.SignLegacy(ctx, d2, localsigstore.Options{Identity: sidero}); err != nil {
		t.Fatal(err)
	}
	for _, ref := range []name.Digest{d, d2, d} {
		if _, err := v.Verify(ctx, ref); err != nil {
			t.Fatal(err)
		}
	}
	if calls != 1 {
		t.Errorf("the provider was asked %d times for three verifications, want 1", calls)
	}
}

func TestPolicyTUFRootErrors(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.json"), []byte(`{"signed":{}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	rule := "rules:\n  - repositories: ['a/*']\n    keyless: {trustedRoot: mirror, identities: [{subject: a, issuer: b}]}\n"
	for _, tc := range []struct{ name, yaml, want string }{
		{"missing", "tufRoot: nope.json\n" + rule, "nope.json"},
		{"not a TUF root", "tufRoot: bad.json\n" + rule, "tufRoot bad.json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := signing.ParsePolicy([]byte(tc.yaml), dir); !errors.Is(err, signing.ErrInvalidPolicy) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("ParsePolicy = %v, want ErrInvalidPolicy containing %q", err, tc.want)
			}
		})
	}
}

// FuzzCarriedRoot: whatever a registry or archive holds where the trusted
// root should be, parsing and verifying it never panics, and nothing but
// the real thing verifies against the TUF root.
func FuzzCarriedRoot(f *testing.F) {
	ss, err := localsigstore.New()
	if err != nil {
		f.Fatal(err)
	}
	tr, err := ss.TrustedRootJSON()
	if err != nil {
		f.Fatal(err)
	}
	repo := localsigstore.NewTUFRepository(f, map[string][]byte{signing.TrustedRootTarget: tr})
	c, err := signing.FetchTrustedRoot(context.Background(), signing.TUFOptions{URL: repo.URL, Root: repo.Root1()})
	if err != nil {
		f.Fatal(err)
	}
	tj, err := c.TUFJSON()
	if err != nil {
		f.Fatal(err)
	}
	anchor := repo.Root1()
	f.Add(c.TrustedRoot, tj)
	f.Add([]byte("{}"), []byte(`{"mediaType":"application/vnd.dev.kiln.tuf-evidence.v1+json","target":"trusted_root.json","roots":["e30="],"timestamp":"e30=","snapshot":"e30=","targets":"e30="}`))
	f.Fuzz(func(t *testing.T, trusted, tufJSON []byte) {
		got, err := signing.ParseCarriedRoot(trusted, tufJSON)
		if err != nil {
			return
		}
		_ = got.Describe()
		if _, err := got.Verify(anchor); err == nil && (!bytes.Equal(trusted, c.TrustedRoot)) {
			t.Fatalf("a trusted root other than the published one verified")
		}
	})
}
