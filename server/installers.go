package server

import (
	"net/http"

	"github.com/kiln-dev/kiln/signing"
)

// signingKeyHandler serves the public half of kiln's signing key as the
// public factory serves its own: the PEM users give `cosign verify --key`.
func signingKeyHandler(s *signing.Signer) http.HandlerFunc {
	pem := s.PublicKeyPEM()

	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/x-pem-file")
		w.Write(pem) //nolint:errcheck // the client is gone
	}
}
