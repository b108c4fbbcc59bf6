package signing

import (
	"errors"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
)

// ErrUntrusted is matched (errors.Is) by every refusal: no matching policy
// rule, no signature, or no signature that verifies against the rule.
var ErrUntrusted = errors.New("untrusted artifact")

// RefusalError explains why an artifact was refused. It matches ErrUntrusted
// and unwraps to the individual verification failures.
type RefusalError struct {
	Image  string // repository, e.g. "ghcr.io/siderolabs/imager"
	Digest string // "sha256:…"
	Rule   string // policy rule consulted; empty when none matched
	Reason string // short, stable reason
	Err    error  // details (per signature and trust anchor), may be nil
}

func (e *RefusalError) Error() string {
	msg := fmt.Sprintf("untrusted artifact %s@%s: %s", e.Image, e.Digest, e.Reason)
	if e.Rule != "" {
		msg += fmt.Sprintf(" (policy rule %q)", e.Rule)
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Is makes every RefusalError match ErrUntrusted.
func (e *RefusalError) Is(target error) bool { return target == ErrUntrusted }

func (e *RefusalError) Unwrap() error { return e.Err }

func refuse(ref name.Digest, rule, reason string, err error) error {
	return &RefusalError{
		Image:  ref.Context().Name(),
		Digest: ref.DigestStr(),
		Rule:   rule,
		Reason: reason,
		Err:    err,
	}
}
