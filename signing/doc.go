// Package signing is the step of kiln's data path that turns an artifact
// reference into a verified artifact: it checks cosign signatures of OCI
// artifacts entirely offline, against a trust policy that says which public
// keys and keyless (Fulcio) identities may sign which repositories.
//
// Every user of signatures asks one interface, [Checker] ([Verifier] by the
// trust policy, [CheckFunc] for a plain function). Only a Checker can create
// a [Verified] value, so code that builds from a Verified (the build plan's
// inputs) cannot be handed an artifact that was never checked.
//
// The signature checks themselves are cosign's (pkg/cosign of cosign v2) and
// sigstore-go's; this package only selects the trust material, fetches the
// signatures from the registry that holds the image, and turns every failure
// into an error that matches [ErrUntrusted]. Verifying contacts nothing but
// that registry (and wherever [WithMirrorRoot] reads the trusted root that
// came with the mirror): no TUF, Rekor, Fulcio or timestamp authority.
//
// [FetchTrustedRoot] is the one exception, for the connected side of an air
// gap: it fetches Sigstore's trusted root through TUF, keeping the metadata
// that vouches for it, so that [CarriedRoot.Verify] can check it again on
// the far side with no network.
//
// [Signer] is the other direction: it signs what kiln builds (installer
// indexes) with kiln's own key, in both of cosign's formats, offline.
package signing
