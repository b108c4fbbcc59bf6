package server

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/access"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// gatewayCertKey is the metadata key under which the REST gateway passes
// on the user of a verified TLS client certificate (the gRPC call it makes
// runs over an in-memory connection, without TLS). It is trusted only on
// that connection, and the gateway forwards no client header under it.
const gatewayCertKey = "kiln-client-cert"

// guard decides which gRPC calls (and so REST calls, which go through
// gRPC) need a credential: the admin calls. Everything else is as open as
// the public factory.
type guard struct {
	authn *access.Authenticator
	// publicList lets anyone list schematics (--public-schematic-list).
	publicList bool
}

// needsAdmin reports whether a method needs a credential.
func (g *guard) needsAdmin(method string) bool {
	switch method {
	case kilnv1.ReleaseService_LockRelease_FullMethodName:
		return true
	case kilnv1.SchematicService_ListSchematics_FullMethodName:
		return !g.publicList
	}

	return false
}

type userKey struct{}

// userFrom is the user a guarded call was made by.
func userFrom(ctx context.Context) string {
	u, _ := ctx.Value(userKey{}).(string)

	return u
}

func (g *guard) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if !g.needsAdmin(info.FullMethod) {
		return handler(ctx, req)
	}

	user, err := g.user(ctx)
	if err != nil {
		return nil, err
	}

	return handler(context.WithValue(ctx, userKey{}, user), req)
}

// user authenticates a call: a verified client certificate (gRPC over TLS
// on kiln's port, or REST over TLS through the gateway), else basic
// credentials in the authorization metadata (grpcurl -H, or the REST
// request's Authorization header, which the gateway passes on).
func (g *guard) user(ctx context.Context) (string, error) {
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok {
			if u := access.ClientCertUser(&ti.State); u != "" {
				return u, nil
			}
		}

		if p.Addr != nil && p.Addr.Network() == "bufconn" {
			if u := metadata.ValueFromIncomingContext(ctx, gatewayCertKey); len(u) == 1 && u[0] != "" {
				return u[0], nil
			}
		}
	}

	if g.authn == nil {
		return "", status.Error(codes.Unauthenticated, "this call needs the admin credential, and this kiln has none configured")
	}

	var authorization string
	if v := metadata.ValueFromIncomingContext(ctx, "authorization"); len(v) > 0 {
		authorization = v[0]
	}

	user, err := g.authn.AuthenticateHeader(ctx, authorization)

	switch {
	case errors.Is(err, access.ErrNoCredentials):
		return "", status.Error(codes.Unauthenticated,
			"this call needs the admin credential: basic auth as "+access.AdminUser+" with the password kiln wrote to <data-dir>/auth/admin-password (or a client certificate of --client-ca)")
	case errors.Is(err, access.ErrBadCredentials):
		return "", status.Error(codes.Unauthenticated, "invalid credentials")
	case err != nil:
		return "", err
	}

	return user, nil
}

// gatewayMetadata passes a REST request's verified client certificate on
// to the gRPC call the gateway makes for it.
func gatewayMetadata(_ context.Context, r *http.Request) metadata.MD {
	if u := access.ClientCertUser(r.TLS); u != "" {
		return metadata.Pairs(gatewayCertKey, u)
	}

	return nil
}

// forgedGatewayHeader reports an incoming header that the gateway would
// turn into metadata kiln trusts from the gateway alone
// ("Grpc-Metadata-Kiln-Client-Cert").
func forgedGatewayHeader(key string) bool {
	k := strings.ToLower(key)

	return strings.HasPrefix(k, "grpc-metadata-kiln-") || strings.HasPrefix(k, "kiln-")
}

// withClientCA makes the listener ask for a client certificate and verify
// it against the CA bundle in path; a client without one is anonymous.
func withClientCA(cfg *tls.Config, path string) error {
	if path == "" {
		return nil
	}

	pem, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("client CA: %w", err)
	}

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return fmt.Errorf("client CA: no PEM certificate in %s", path)
	}

	cfg.ClientCAs = pool
	cfg.ClientAuth = tls.VerifyClientCertIfGiven

	return nil
}
