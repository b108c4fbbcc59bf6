package signing_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// TestSignedIdentity: under WithSignedIdentity a signature counts only if
// it was made for the repository the image is used as. A .sig names it
// (docker-reference); cosign's bundles name nothing and so never count; a
// bundle whose statement names the image does. Without the option, any
// signature over the digest verifies, as before.
func TestSignedIdentity(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	ctx := f.ctx

	imager, _ := name.NewRepository("ghcr.io/siderolabs/imager")
	installer, _ := name.NewRepository("ghcr.io/siderolabs/installer-base")

	tests := []struct {
		name   string
		repo   string
		sign   func(d name.Digest) error
		want   name.Repository
		accept bool
		reason string
	}{
		{
			name: "legacy .sig made for the repository", repo: "keys/ok",
			sign: func(d name.Digest) error {
				return signingtest.SignLegacyAs(ctx, d, "ghcr.io/siderolabs/imager", f.current)
			},
			want:   imager,
			accept: true,
		},
		{
			name: "legacy .sig with a tag in its docker-reference", repo: "keys/tagged",
			sign: func(d name.Digest) error {
				return signingtest.SignLegacyAs(ctx, d, "ghcr.io/siderolabs/imager:v1.13.0", f.current)
			},
			want:   imager,
			accept: true,
		},
		{
			name: "legacy .sig of another repository's image", repo: "keys/copied",
			sign: func(d name.Digest) error {
				return signingtest.SignLegacyAs(ctx, d, "ghcr.io/siderolabs/installer-base", f.current)
			},
			want:   imager,
			reason: "signed as ghcr.io/siderolabs/installer-base, not as ghcr.io/siderolabs/imager",
		},
		{
			name: "legacy .sig naming where it is stored, not what it is", repo: "keys/local",
			sign:   func(d name.Digest) error { return signingtest.SignLegacy(ctx, d, f.current) },
			want:   imager,
			reason: "not as ghcr.io/siderolabs/imager",
		},
		{
			name: "keyless .sig of another repository's image", repo: "keyless/copied",
			sign: func(d name.Digest) error {
				return f.ca.SignLegacy(ctx, d, testIdentity, testIssuer, signingtest.DefaultIntegratedTime())
			},
			want:   installer,
			reason: "not as ghcr.io/siderolabs/installer-base",
		},
		{
			name: "cosign bundle: names no image", repo: "keys/bundle",
			sign:   func(d name.Digest) error { return signingtest.SignBundle(ctx, d, f.current) },
			want:   imager,
			reason: "no signature names it as ghcr.io/siderolabs/imager",
		},
		{
			name: "bundle whose statement names the image", repo: "keys/named-bundle",
			sign: func(d name.Digest) error {
				b, err := signingtest.KeyBundleNamed(d, "ghcr.io/siderolabs/imager", f.current)
				if err != nil {
					return err
				}
				return signingtest.AttachBundle(ctx, d, b)
			},
			want:   imager,
			accept: true,
		},
		{
			name: "bundle whose statement names another image", repo: "keys/misnamed-bundle",
			sign: func(d name.Digest) error {
				b, err := signingtest.KeyBundleNamed(d, "ghcr.io/siderolabs/installer-base", f.current)
				if err != nil {
					return err
				}
				return signingtest.AttachBundle(ctx, d, b)
			},
			want:   imager,
			reason: "signed as ghcr.io/siderolabs/installer-base, not as ghcr.io/siderolabs/imager",
		},
		{
			name: "a misnamed .sig next to a good one", repo: "keys/two",
			sign: func(d name.Digest) error {
				if err := signingtest.SignLegacyAs(ctx, d, "ghcr.io/siderolabs/installer-base", f.current); err != nil {
					return err
				}
				return signingtest.SignLegacyAs(ctx, d, "ghcr.io/siderolabs/imager", f.current)
			},
			want:   imager,
			accept: true,
		},
	}

	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := f.push(t, tc.repo)
			if err := tc.sign(d); err != nil {
				t.Fatal(err)
			}

			v := f.verifier(t)

			// Without an identity asked for, the digest alone decides.
			if _, err := v.Verify(ctx, d); err != nil {
				t.Fatalf("Verify without identity: %v", err)
			}

			_, err := v.Verify(signing.WithSignedIdentity(ctx, tc.want), d)
			if tc.accept {
				if err != nil {
					t.Fatalf("Verify as %s: %v", tc.want, err)
				}
				return
			}

			var re *signing.RefusalError
			if !errors.As(err, &re) || !errors.Is(err, signing.ErrUntrusted) {
				t.Fatalf("Verify as %s = %v, want a refusal", tc.want, err)
			}
			if !strings.Contains(re.Reason, tc.reason) {
				t.Errorf("reason = %q, want it to contain %q", re.Reason, tc.reason)
			}
			var ie *signing.IdentityError
			if !errors.As(err, &ie) {
				t.Errorf("the refusal does not carry the IdentityError: %v", err)
			}
		})
	}
}

// TestSignedIdentityCopiedSig is the attack itself: an image signed for one
// repository is copied with its .sig into another repository. Its digest is
// the same, so cosign's default claim check passes; the docker-reference
// does not.
func TestSignedIdentityCopiedSig(t *testing.T) {
	t.Parallel()
	f := getFixture(t)
	ctx := f.ctx

	src := f.push(t, "keys/installer-base")
	if err := signingtest.SignLegacyAs(ctx, src, "ghcr.io/siderolabs/installer-base", f.current); err != nil {
		t.Fatal(err)
	}

	dstRepo, _ := name.NewRepository(f.host + "/keys/imager")
	img, err := remote.Image(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dstRepo.Tag("v1.13.0"), img); err != nil {
		t.Fatal(err)
	}
	sigTag := "sha256-" + strings.TrimPrefix(src.DigestStr(), "sha256:") + ".sig"
	sig, err := remote.Image(src.Context().Tag(sigTag))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(dstRepo.Tag(sigTag), sig); err != nil {
		t.Fatal(err)
	}

	dst := dstRepo.Digest(src.DigestStr())
	v := f.verifier(t)
	if _, err := v.Verify(ctx, dst); err != nil {
		t.Fatalf("the copy verifies by digest alone (cosign's default): %v", err)
	}

	imager, _ := name.NewRepository("ghcr.io/siderolabs/imager")
	_, err = v.Verify(signing.WithSignedIdentity(ctx, imager), dst)
	if !errors.Is(err, signing.ErrUntrusted) || !strings.Contains(err.Error(), "signed as ghcr.io/siderolabs/installer-base") {
		t.Fatalf("Verify of the copied .sig as the imager = %v, want a refusal naming installer-base", err)
	}

	// A verdict for one identity is not reused for another.
	installer, _ := name.NewRepository("ghcr.io/siderolabs/installer-base")
	if _, err := v.Verify(signing.WithSignedIdentity(ctx, installer), dst); err != nil {
		t.Fatalf("Verify as installer-base: %v", err)
	}
	if _, err := v.Verify(signing.WithSignedIdentity(ctx, imager), dst); err == nil {
		t.Fatal("a cached verdict for installer-base admitted the image as the imager")
	}
}
