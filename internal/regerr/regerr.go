// Package regerr classifies errors from OCI registries.
package regerr

import (
	"errors"
	"net/http"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// IsNotFound reports a registry's "not there": a 404, or one of the
// distribution *_UNKNOWN codes some registries send with other statuses.
func IsNotFound(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}

	if te.StatusCode == http.StatusNotFound {
		return true
	}

	for _, d := range te.Errors {
		switch d.Code {
		case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode, transport.BlobUnknownErrorCode:
			return true
		}
	}

	return false
}
