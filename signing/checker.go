package signing

import (
	"context"

	"github.com/google/go-containerregistry/pkg/name"
)

// Checker is what every user of signatures asks (the artifact manager, the
// mirror engine, the image cache): is this artifact, by digest, fit to be
// used? A *Verifier answers by the trust policy; CheckFunc adapts a plain
// function. Any error refuses the artifact. Only a Checker makes a
// non-zero Verified, so code holding a Verified holds what one accepted.
type Checker interface {
	Verify(ctx context.Context, ref name.Digest) (Verified, error)
}

var (
	_ Checker = (*Verifier)(nil)
	_ Checker = CheckFunc(nil)
)

// MethodFunc is the Verified.Method of an artifact a CheckFunc accepted.
const MethodFunc = "check function"

// CheckFunc adapts a function that refuses an artifact with an error (the
// refusal of everything when no trust policy is configured; a test's
// stand-in for a policy) to a Checker. What it accepts is Verified with
// Method MethodFunc and no rule or signer.
type CheckFunc func(ctx context.Context, ref name.Digest) error

// Verify implements Checker.
func (f CheckFunc) Verify(ctx context.Context, ref name.Digest) (Verified, error) {
	if err := f(ctx, ref); err != nil {
		return Verified{}, err
	}

	return Verified{ref: ref, method: MethodFunc}, nil
}
