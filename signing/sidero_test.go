package signing_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
	"github.com/kiln-dev/kiln/signing/signingtest/localsigstore"
)

// siderolabs is the identity the fixture signs as, and another that is not trusted.
var (
	sidero  = localsigstore.Identity{Subject: "releasemgr-svc@talos-production.iam.gserviceaccount.com", Issuer: "https://accounts.google.com"}
	mallory = localsigstore.Identity{Subject: "mallory@evil.example", Issuer: "https://accounts.google.com"}
)

var (
	localOnce        sync.Once
	localSS, otherSS *localsigstore.Sigstore
	localRootDir     string
	localErr         error
	localRootJSON    []byte
)

// localFixture is one local Sigstore (and a second, untrusted one) with the
// first's trusted root written to a directory, shared by the tests here.
func localFixture(t *testing.T) (*localsigstore.Sigstore, *localsigstore.Sigstore, string) {
	t.Helper()
	localOnce.Do(func() {
		if localSS, localErr = localsigstore.New(); localErr != nil {
			return
		}
		if otherSS, localErr = localsigstore.New(); localErr != nil {
			return
		}
		if localRootJSON, localErr = localSS.TrustedRootJSON(); localErr != nil {
			return
		}
		if localRootDir, localErr = os.MkdirTemp("", "signing-local-"); localErr != nil {
			return
		}
		localErr = os.WriteFile(filepath.Join(localRootDir, "trusted_root.json"), localRootJSON, 0o644)
	})
	if localErr != nil {
		t.Fatal(localErr)
	}
	return localSS, otherSS, localRootDir
}

// siderolabsPolicy is the README's policy for Sidero releases, against the
// local Sigstore: SCTs required (the default), as for the public-good one.
func siderolabsPolicy(t *testing.T, dir string) *signing.Verifier {
	t.Helper()
	y := `
rules:
  - name: siderolabs
    repositories: ["*/siderolabs/*"]
    keyless:
      trustedRoot: trusted_root.json
      identities:
        - subjectRegExp: '@siderolabs\.com$'
          issuer: https://accounts.google.com
        - subject: releasemgr-svc@talos-production.iam.gserviceaccount.com
          issuer: https://accounts.google.com
`
	p, err := signing.ParsePolicy([]byte(y), dir)
	if err != nil {
		t.Fatal(err)
	}
	v, err := signing.NewVerifier(p)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestSideroShapedSignatures: every signature shape Sidero's signer (and
// cosign v2/v3) can produce, made by a local Sigstore that embeds SCTs,
// verifies offline; each tampered variant is refused with its reason.
func TestSideroShapedSignatures(t *testing.T) {
	t.Parallel()
	ss, other, dir := localFixture(t)
	ctx := context.Background()
	host := signingtest.NewRegistry(t)
	v := siderolabsPolicy(t, dir)

	push := func(t *testing.T, repo string) name.Digest {
		r, err := name.NewRepository(host + "/siderolabs/" + repo)
		if err != nil {
			t.Fatal(err)
		}
		d, err := signingtest.PushRandomImage(ctx, r)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	bundle := func(o localsigstore.Options) func(name.Digest) error {
		return func(d name.Digest) error { return ss.SignBundle(ctx, d, o) }
	}
	certExpired := time.Now().Add(localsigstore.CertLifetime + time.Hour)

	accepts := []struct {
		name         string
		sign         func(name.Digest) error
		method       string
		evidence     []string
		notEvidences []string
	}{
		{"legacy .sig, Rekor v1 SET", func(d name.Digest) error { return ss.SignLegacy(ctx, d, localsigstore.Options{Identity: sidero}) },
			signing.MethodKeylessLegacy, []string{"Rekor v1 signed entry timestamp"}, nil},
		{"bundle, Rekor v2 + RFC 3161 timestamp", bundle(localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2, TSA: true}),
			signing.MethodKeylessBundle, []string{"Rekor v2 hashedrekord/0.0.2 entry (inclusion proof)", "RFC 3161 timestamp"}, []string{"SET"}},
		{"bundle, Rekor v1 SET + inclusion proof", bundle(localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV1}),
			signing.MethodKeylessBundle, []string{"Rekor v1 dsse/0.0.1 entry (SET, inclusion proof)"}, []string{"RFC 3161"}},
		{"bundle, Rekor v1 + RFC 3161 timestamp", bundle(localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV1, TSA: true}),
			signing.MethodKeylessBundle, []string{"Rekor v1 dsse/0.0.1 entry (SET, inclusion proof)", "RFC 3161 timestamp"}, nil},
		{"like Sidero: legacy .sig and a Rekor v2 + TSA bundle", func(d name.Digest) error { return ss.SignLikeSidero(ctx, d, sidero) },
			signing.MethodKeylessLegacy, nil, nil},
	}
	for i, tc := range accepts {
		t.Run("accepts/"+tc.name, func(t *testing.T) {
			d := push(t, "ok"+string(rune('a'+i)))
			if err := tc.sign(d); err != nil {
				t.Fatal(err)
			}
			got, err := v.Verify(ctx, d)
			if err != nil {
				t.Fatalf("Verify = %v", err)
			}
			if got.Method() != tc.method || !strings.Contains(got.Signer(), sidero.Subject) {
				t.Errorf("method %q signer %q", got.Method(), got.Signer())
			}
			for _, w := range tc.evidence {
				if !strings.Contains(got.Evidence(), w) {
					t.Errorf("evidence %q lacks %q", got.Evidence(), w)
				}
			}
			for _, w := range tc.notEvidences {
				if strings.Contains(got.Evidence(), w) {
					t.Errorf("evidence %q has %q", got.Evidence(), w)
				}
			}
		})
	}

	refuses := []struct {
		name string
		sign func(t *testing.T, d name.Digest) error
		want []string
	}{
		{"Rekor v2 without a timestamp", func(t *testing.T, d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2})
		}, []string{"bundle 0 with identity", "Rekor v2 hashedrekord/0.0.2 entry (inclusion proof)", "neither a Rekor v1 integrated time", "nor an RFC 3161 timestamp"}},
		{"wrong digest (bundle made for another image)", func(t *testing.T, d name.Digest) error {
			b, err := ss.Bundle(push(t, "elsewhere"), localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2, TSA: true})
			if err != nil {
				return err
			}
			return signingtest.AttachBundle(ctx, d, b)
		}, []string{"provided artifact digest does not match any digest in statement"}},
		{"wrong identity", func(t *testing.T, d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: mallory, Log: localsigstore.RekorV2, TSA: true})
		}, []string{`got "mallory@evil.example"`}},
		{"wrong identity, legacy", func(t *testing.T, d name.Digest) error {
			return ss.SignLegacy(ctx, d, localsigstore.Options{Identity: mallory})
		}, []string{"none of the expected identities matched", "mallory@evil.example"}},
		{"TSA time after the certificate expired", func(t *testing.T, d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2, TSA: true, Time: certExpired})
		}, []string{"failed to verify leaf certificate", "certificate valid from", "RFC 3161 timestamp " + certExpired.UTC().Format(time.RFC3339)}},
		{"Rekor v1 integrated time after the certificate expired", func(t *testing.T, d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV1, Time: certExpired})
		}, []string{"integrated time outside certificate validity"}},
		{"legacy, integrated time after the certificate expired", func(t *testing.T, d name.Digest) error {
			return ss.SignLegacy(ctx, d, localsigstore.Options{Identity: sidero, Time: certExpired})
		}, []string{"certificate expired before signatures were entered in log"}},
		{"Rekor v2 inclusion proof that does not lead to the checkpoint", func(t *testing.T, d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2, TSA: true, BreakInclusionProof: true})
		}, []string{"verifying inclusion"}},
		{"Rekor v1 inclusion proof that does not lead to the checkpoint", func(t *testing.T, d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV1, BreakInclusionProof: true})
		}, []string{"bundle 0 with identity", "inclusion"}},
		{"timestamp only, no log entry", func(t *testing.T, d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.NoLog, TSA: true})
		}, []string{"no transparency log entry, RFC 3161 timestamp", "not enough verified log entries"}},
		{"Rekor v2 + TSA from an untrusted Sigstore", func(t *testing.T, d name.Digest) error {
			return other.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2, TSA: true})
		}, []string{"bundle 0 with identity"}},
		{"Rekor v2 deprecated dsse v0.0.2 entry", func(t *testing.T, d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2DSSE, TSA: true})
		}, []string{"not a recognizable Rekor v1 or Rekor v2 type"}},
	}
	for i, tc := range refuses {
		t.Run("refuses/"+tc.name, func(t *testing.T) {
			d := push(t, "bad"+string(rune('a'+i)))
			if err := tc.sign(t, d); err != nil {
				t.Fatal(err)
			}
			got, err := v.Verify(ctx, d)
			if err == nil {
				t.Fatalf("Verify accepted it: %v %s", got.Method(), got.Evidence())
			}
			if !errors.Is(err, signing.ErrUntrusted) {
				t.Errorf("%v does not match ErrUntrusted", err)
			}
			t.Log(err)
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error does not contain %q", w)
				}
			}
		})
	}
}
