package registry

import (
	"errors"
	"fmt"
	"net/http"

	"github.com/distribution/distribution/v3/registry/auth"
	"github.com/sirupsen/logrus"

	"github.com/kiln-dev/kiln/access"
)

// accessControllerName is the name kiln's controller is registered under
// with distribution, which builds access controllers from its
// configuration by name.
const accessControllerName = "kiln"

func init() {
	// distribution offers no other way to give an App an access controller
	// than its registry of named constructors; the constructor only hands
	// back the controller passed in the configuration.
	if err := auth.Register(accessControllerName, func(opts map[string]any) (auth.AccessController, error) {
		c, ok := opts["controller"].(auth.AccessController)
		if !ok {
			return nil, errors.New("kiln access controller: no controller in the configuration")
		}

		return c, nil
	}); err != nil {
		logrus.Errorf("registering kiln's access controller: %v", err)
	}
}

// Access is who may do what on the embedded registry: writes and deletes
// (push, tag, .sig and referrers, the trusted root) need a user the
// Authenticator accepts; reads (pull, the catalog, /v2/ itself) do too
// unless AnonymousReads. kiln's own in-process calls (access.Internal) may
// do anything.
type Access struct {
	Authenticator  *access.Authenticator
	AnonymousReads bool
}

// Authorized implements distribution's auth.AccessController. A refusal is
// a basic-auth challenge, which distribution answers 401 with
// WWW-Authenticate, so clients send (or ask for) credentials.
func (a Access) Authorized(r *http.Request, records ...auth.Access) (*auth.Grant, error) {
	if access.IsInternal(r.Context()) {
		return &auth.Grant{User: auth.UserInfo{Name: "kiln"}}, nil
	}

	user, password, hasBasic := r.BasicAuth()

	// containers/image (skopeo, podman) answers a basic challenge with
	// empty credentials when it has none: that is no credential.
	anonymous := (!hasBasic || (user == "" && password == "")) && access.ClientCertUser(r.TLS) == ""

	// A read that presents no credentials is anonymous; one that does has
	// them checked, so a wrong password is refused even where anonymous
	// would do. The /v2/ base route, which asks for nothing (no records),
	// challenges a client without credentials all the same: docker and
	// containers/image learn from its answer alone whether and how to send
	// credentials, so a 200 there would make them push without any, and a
	// pull works anyway (every other read route is open).
	if a.AnonymousReads && anonymous && len(records) > 0 && readOnly(records) {
		return &auth.Grant{User: auth.UserInfo{Name: "anonymous"}}, nil
	}

	user, err := a.Authenticator.Authenticate(r)
	if err != nil {
		if errors.Is(err, access.ErrNoCredentials) || errors.Is(err, access.ErrBadCredentials) {
			return nil, challenge{err: err}
		}

		return nil, err
	}

	return &auth.Grant{User: auth.UserInfo{Name: user}}, nil
}

// readOnly reports whether records ask for nothing but reading: pulls and
// the catalog.
func readOnly(records []auth.Access) bool {
	for _, rec := range records {
		switch {
		case rec.Type == "repository" && rec.Action == "pull":
		case rec.Type == "registry" && rec.Name == "catalog":
		default:
			return false
		}
	}

	return true
}

// challenge asks for basic credentials.
type challenge struct{ err error }

func (c challenge) SetHeaders(_ *http.Request, w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", access.Challenge)
}

func (c challenge) Error() string { return fmt.Sprintf("authentication required: %v", c.err) }

func (c challenge) Unwrap() error { return c.err }
