package signing

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/sigstore/cosign/v2/pkg/cosign"
	"github.com/sigstore/cosign/v2/pkg/oci"
	sgbundle "github.com/sigstore/sigstore-go/pkg/bundle"
	sigpayload "github.com/sigstore/sigstore/pkg/signature/payload"
)

type signedIdentityKey struct{}

// WithSignedIdentity asks Verify, under the returned context, to accept only
// signatures that name repo as the image they sign: an image mirrored from
// ghcr.io/siderolabs/imager must carry a signature made for
// ghcr.io/siderolabs/imager, wherever it is stored now. Without it any
// signature over the digest will do (cosign's own default), so a signature
// of one repository's image, copied with it into another repository, would
// pass there.
//
// What each format names:
//   - a legacy .sig signs a simple-signing payload whose
//     critical.identity.docker-reference names the image ("ghcr.io/siderolabs/imager",
//     or with a tag, "…:v1.13.0"): its repository must be repo;
//   - a Sigstore bundle signs an in-toto statement whose subjects carry the
//     digest and an optional name; `cosign sign` writes no name at all, so
//     such a bundle binds the digest alone and cannot satisfy this check. A
//     subject with a name is accepted when that name's repository is repo
//     and its digest is the image's.
//
// It is carried by the context because the verifier is reached through
// interfaces that take a digest alone (the mirror's, the artifact
// manager's); only the caller knows what an image is used as.
func WithSignedIdentity(ctx context.Context, repo name.Repository) context.Context {
	return context.WithValue(ctx, signedIdentityKey{}, repo)
}

// SignedIdentity is the repository WithSignedIdentity asked for, if any.
func SignedIdentity(ctx context.Context) (name.Repository, bool) {
	repo, ok := ctx.Value(signedIdentityKey{}).(name.Repository)

	return repo, ok
}

// IdentityError is a signature that verified but names another image than
// the one it is used as (WithSignedIdentity).
type IdentityError struct {
	// Want is the repository the image is used as.
	Want string
	// Got is what the signature names; empty when it names nothing.
	Got string
	// Format is "legacy .sig" or "bundle".
	Format string
}

func (e *IdentityError) Error() string {
	if e.Got == "" {
		return fmt.Sprintf("the %s names no image (cosign's bundles bind the digest alone), so it does not show the image was signed as %s", e.Format, e.Want)
	}

	return fmt.Sprintf("the %s was made for %s, not for %s", e.Format, e.Got, e.Want)
}

// sameRepository reports whether ref (a repository, or a reference with a
// tag or digest) names repo.
func sameRepository(ref string, repo name.Repository) bool {
	r, err := name.ParseReference(ref, name.WeakValidation)
	if err != nil {
		r2, err2 := name.NewRepository(ref, name.WeakValidation)
		if err2 != nil {
			return false
		}

		return r2.Name() == repo.Name()
	}

	return r.Context().Name() == repo.Name()
}

// identityClaimVerifier is cosign's SimpleClaimVerifier (the payload names
// the digest asked for) plus, when want is set, the docker-reference check.
// cosign calls it on the payload only after the signature over it verified.
func identityClaimVerifier(want *name.Repository) func(oci.Signature, v1.Hash, map[string]any) error {
	return func(sig oci.Signature, h v1.Hash, annotations map[string]any) error {
		if err := cosign.SimpleClaimVerifier(sig, h, annotations); err != nil {
			return err
		}

		if want == nil {
			return nil
		}

		p, err := sig.Payload()
		if err != nil {
			return err
		}

		var ss sigpayload.SimpleContainerImage
		if err := json.Unmarshal(p, &ss); err != nil {
			return fmt.Errorf("simple-signing payload: %w", err)
		}

		got := ss.Critical.Identity.DockerReference
		if got == "" || !sameRepository(got, *want) {
			return &IdentityError{Want: want.Name(), Got: got, Format: "legacy .sig"}
		}

		return nil
	}
}

// checkBundleIdentity accepts a bundle whose in-toto statement has a
// subject named as want with the image's digest.
func checkBundleIdentity(b *sgbundle.Bundle, h v1.Hash, want name.Repository) error {
	var st struct {
		Subject []struct {
			Name   string            `json:"name"`
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
	}

	if err := json.Unmarshal(b.GetDsseEnvelope().GetPayload(), &st); err != nil {
		return fmt.Errorf("bundle payload is not an in-toto statement: %w", err)
	}

	got := ""

	for _, s := range st.Subject {
		if s.Name == "" || s.Digest[h.Algorithm] != h.Hex {
			continue
		}

		if sameRepository(s.Name, want) {
			return nil
		}

		got = s.Name
	}

	return &IdentityError{Want: want.Name(), Got: got, Format: "bundle"}
}

// identityRefusal is the refusal reason when every signature that verified
// was made for another image.
func identityRefusal(failures []error) (string, bool) {
	for _, f := range failures {
		var ie *IdentityError
		if errors.As(f, &ie) {
			if ie.Got == "" {
				return "no signature names it as " + ie.Want, true
			}

			return "signed as " + ie.Got + ", not as " + ie.Want + " (a signature of another repository's image)", true
		}
	}

	return "", false
}
