package access

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"

	"github.com/distribution/distribution/v3/registry/auth"
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd" // registers "htpasswd"
)

// Realm is the basic-auth realm kiln challenges with.
const Realm = "kiln"

// Challenge is the WWW-Authenticate value of a 401: clients (crane, skopeo,
// cosign, containerd, curl --anyauth) answer it with basic credentials.
const Challenge = `Basic realm="` + Realm + `"`

// ErrNoCredentials is a request that presents no credential at all.
var ErrNoCredentials = errors.New("no credentials")

// ErrBadCredentials is a request whose credential does not check out.
var ErrBadCredentials = errors.New("invalid credentials")

// Authenticator checks the credentials of a request: HTTP basic auth
// against the htpasswd file, by distribution's htpasswd access controller
// (which rereads the file when it changes), or a TLS client certificate the
// listener verified against its client CA.
type Authenticator struct {
	basic auth.AccessController
}

// NewAuthenticator checks basic credentials against htpasswdPath, which
// must exist (Files.EnsureAdmin): distribution's controller would otherwise
// create one with a user of its own and log its password.
func NewAuthenticator(htpasswdPath string) (*Authenticator, error) {
	if _, err := readable(htpasswdPath); err != nil {
		return nil, fmt.Errorf("htpasswd: %w", err)
	}

	c, err := auth.GetAccessController("htpasswd", map[string]any{"realm": Realm, "path": htpasswdPath})
	if err != nil {
		return nil, fmt.Errorf("htpasswd %s: %w", htpasswdPath, err)
	}

	return &Authenticator{basic: c}, nil
}

// Authenticate returns the user r proves to be: the common name of a
// verified client certificate ("cert:<CN>"), else the basic-auth user. It
// fails with ErrNoCredentials when r presents neither, ErrBadCredentials
// when the basic credentials are wrong.
func (a *Authenticator) Authenticate(r *http.Request) (string, error) {
	if u := ClientCertUser(r.TLS); u != "" {
		return u, nil
	}

	if _, _, ok := r.BasicAuth(); !ok {
		return "", ErrNoCredentials
	}

	grant, err := a.basic.Authorized(r)
	if err != nil {
		var ch auth.Challenge
		if errors.As(err, &ch) {
			return "", ErrBadCredentials
		}

		return "", fmt.Errorf("checking credentials: %w", err)
	}

	return grant.User.Name, nil
}

// AuthenticateHeader is Authenticate for an Authorization header value
// alone (gRPC metadata).
func (a *Authenticator) AuthenticateHeader(ctx context.Context, authorization string) (string, error) {
	if authorization == "" {
		return "", ErrNoCredentials
	}

	r, err := http.NewRequestWithContext(ctx, http.MethodGet, "/", nil)
	if err != nil {
		return "", err
	}

	r.Header.Set("Authorization", authorization)

	return a.Authenticate(r)
}

// ClientCertUser is "cert:<common name>" of a client certificate the TLS
// handshake verified (the listener asks for one only with a client CA), or
// "" when there is none.
func ClientCertUser(state *tls.ConnectionState) string {
	if state == nil || len(state.VerifiedChains) == 0 || len(state.VerifiedChains[0]) == 0 {
		return ""
	}

	leaf := state.VerifiedChains[0][0]

	cn := leaf.Subject.CommonName
	if cn == "" && len(leaf.DNSNames) > 0 {
		cn = leaf.DNSNames[0]
	}

	return "cert:" + cn
}

type internalKey struct{}

// Internal marks ctx as kiln's own call to its embedded registry (reading
// releases, seeding the demo, importing a layout), which no network client
// can make: a context value never crosses a socket.
func Internal(ctx context.Context) context.Context {
	return context.WithValue(ctx, internalKey{}, true)
}

// IsInternal reports whether ctx was marked by Internal.
func IsInternal(ctx context.Context) bool {
	v, _ := ctx.Value(internalKey{}).(bool)

	return v
}
