package mirror

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kiln-dev/kiln/demo"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
	"github.com/kiln-dev/kiln/signing/signingtest"
)

// TestCopyChecksSignedIdentity: with the real verifier, a Talos release
// image whose signature was made for another repository is refused before
// anything is written; a Kubernetes image is not held to the name its
// signature carries (Kubernetes signs under other registries' names).
func TestCopyChecksSignedIdentity(t *testing.T) {
	key := signingtest.MustGenerateKey(t, signingtest.ECDSAP256)

	policy, err := signing.ParsePolicy([]byte("rules:\n  - name: all\n    repositories: ['*', '*/*', '*/*/*', '*/*/*/*']\n    keys:\n      - pem: |\n"+
		indent(string(key.PublicKeyPEM()), "          ")), ".")
	if err != nil {
		t.Fatal(err)
	}

	v, err := signing.NewVerifier(policy)
	if err != nil {
		t.Fatal(err)
	}

	push := func(t *testing.T, claim func(upstream name.Repository) string) Registry {
		reg := newRegistry(t, true)
		if _, err := demo.Push(t.Context(), demo.Options{Version: testVersion, Registry: reg,
			Sign: func(ctx context.Context, ref name.Digest, upstream name.Repository) error {
				return signingtest.SignLegacyAs(ctx, ref, claim(upstream), key)
			}}); err != nil {
			t.Fatal(err)
		}

		return Registry{Mirror: release.Mirror{Registry: reg}}
	}

	sel := fullSelection()

	t.Run("signed as upstream", func(t *testing.T) {
		src := push(t, func(u name.Repository) string {
			if strings.HasPrefix(u.Name(), "registry.k8s.io/") {
				return "us-west2-docker.pkg.dev/k8s-artifacts-prod/images/" + u.RepositoryStr()
			}

			return u.Name()
		})

		plan, err := NewPlan(t.Context(), src, sel)
		if err != nil {
			t.Fatal(err)
		}

		if _, err := Copy(t.Context(), plan, Layout{Dir: t.TempDir()}, Options{Verifier: v}); err != nil {
			t.Fatalf("Copy: %v", err)
		}
	})

	t.Run("imager signed as installer-base", func(t *testing.T) {
		src := push(t, func(u name.Repository) string {
			if u.RepositoryStr() == "siderolabs/imager" {
				return "ghcr.io/siderolabs/installer-base"
			}

			return u.Name()
		})

		plan, err := NewPlan(t.Context(), src, sel)
		if err != nil {
			t.Fatal(err)
		}

		dir := t.TempDir()

		_, err = Copy(t.Context(), plan, Layout{Dir: dir}, Options{Verifier: v})

		var ve *VerifyError
		if !errors.As(err, &ve) || ve.Item.Repo != "siderolabs/imager" || !errors.Is(err, signing.ErrUntrusted) ||
			!strings.Contains(err.Error(), "signed as ghcr.io/siderolabs/installer-base, not as ghcr.io/siderolabs/imager") {
			t.Fatalf("Copy = %v, want the imager refused as signed for installer-base", err)
		}
	})
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix) + "\n"
}
