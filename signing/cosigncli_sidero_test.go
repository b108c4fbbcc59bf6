//go:build cosigncli

package signing_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/signing/signingtest"
	"github.com/kiln-dev/kiln/signing/signingtest/localsigstore"
)

// TestCosignVerifiesLocalSigstore: the real cosign CLI, offline, with the
// local Sigstore's trusted_root.json, accepts what localsigstore signs and
// kiln accepts (legacy .sig with SCT and SET; bundles with Rekor v2 + TSA
// and with Rekor v1), and refuses what kiln refuses. So the fixture is
// not something only kiln's own verifier believes.
func TestCosignVerifiesLocalSigstore(t *testing.T) {
	c := newCosign(t)
	ss, _, _ := localFixture(t)
	ctx := context.Background()
	host := signingtest.NewRegistry(t)
	trPath := filepath.Join(c.dir, "trusted_root.json")
	if err := os.WriteFile(trPath, localRootJSON, 0o644); err != nil {
		t.Fatal(err)
	}
	v := siderolabsPolicy(t, filepath.Dir(trPath))

	id := []string{"--certificate-identity", sidero.Subject, "--certificate-oidc-issuer", sidero.Issuer}
	legacy := append([]string{"verify", "--offline", "--trusted-root", trPath, "--new-bundle-format=false"}, id...)
	bundle := append([]string{"verify", "--offline", "--new-bundle-format", "--trusted-root", trPath}, id...)
	tsa := append(append([]string{}, bundle...), "--use-signed-timestamps")

	for i, tc := range []struct {
		name   string
		sign   func(name.Digest) error
		args   []string
		accept bool
		// kilnDiffers: cosign v2.6.5 (sigstore-go v1.1.4) accepts it and
		// kiln's sigstore-go v1.3.0 does not (see signing/README.md).
		kilnDiffers bool
	}{
		{"legacy .sig (SCT, Rekor v1 SET)", func(d name.Digest) error {
			return ss.SignLegacy(ctx, d, localsigstore.Options{Identity: sidero})
		}, legacy, true, false},
		{"bundle, Rekor v2 + RFC 3161 timestamp", func(d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2, TSA: true})
		}, tsa, true, false},
		{"bundle, Rekor v1 SET + inclusion proof", func(d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV1})
		}, bundle, true, false},
		{"bundle, Rekor v2 without a timestamp", func(d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2})
		}, tsa, false, false},
		{"bundle, Rekor v2 without a timestamp (integrated time required)", func(d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2})
		}, bundle, false, false},
		{"bundle, Rekor v2 deprecated dsse v0.0.2 entry", func(d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2DSSE, TSA: true})
		}, tsa, true, true},
		{"bundle, Rekor v2 inclusion proof broken", func(d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2, TSA: true, BreakInclusionProof: true})
		}, tsa, false, false},
		{"bundle, Rekor v2 + TSA, wrong identity", func(d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: mallory, Log: localsigstore.RekorV2, TSA: true})
		}, tsa, false, false},
		{"bundle, Rekor v2 + TSA after the certificate expired", func(d name.Digest) error {
			return ss.SignBundle(ctx, d, localsigstore.Options{Identity: sidero, Log: localsigstore.RekorV2, TSA: true, Time: timeAfterCert()})
		}, tsa, false, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r, _ := name.NewRepository(host + "/siderolabs/cli" + string(rune('a'+i)))
			d, err := signingtest.PushRandomImage(ctx, r)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.sign(d); err != nil {
				t.Fatal(err)
			}
			_, cerr := c.run(t, append(append([]string{}, tc.args...), d.String())...)
			_, kerr := v.Verify(ctx, d)
			if (cerr == nil) != tc.accept || (kerr == nil) != (tc.accept != tc.kilnDiffers) {
				t.Errorf("cosign: %v; kiln: %v; want accepted=%t by cosign, %t by kiln", cerr, kerr, tc.accept, tc.accept != tc.kilnDiffers)
			}
		})
	}
}

func timeAfterCert() time.Time { return time.Now().Add(localsigstore.CertLifetime + time.Hour) }
