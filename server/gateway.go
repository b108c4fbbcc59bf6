package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/test/bufconn"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/kiln-dev/kiln/access"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// newGateway returns the REST gateway and the in-memory listener its gRPC
// client dials. Going through a real gRPC connection (not the in-process
// Register...HandlerServer) gives REST the same interceptors, error mapping
// and streaming as gRPC; an in-memory pipe avoids dialling our own TLS port.
func newGateway(ctx context.Context, maxSchematic int64) (http.Handler, *bufconn.Listener, *grpc.ClientConn, error) {
	lis := bufconn.Listen(1 << 20)

	// A CreateSchematic answer holds the canonical schematic (at most twice
	// the limit) twice: as YAML and typed.
	maxMsg := int(4*maxSchematic) + 64<<10

	conn, err := grpc.NewClient("passthrough:///kiln-gateway",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxMsg), grpc.MaxCallSendMsgSize(maxMsg)),
	)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("gateway client: %w", err)
	}

	mux := runtime.NewServeMux(
		runtime.WithIncomingHeaderMatcher(func(key string) (string, bool) {
			if strings.EqualFold(key, "X-Request-ID") {
				return "x-request-id", true
			}

			if forgedGatewayHeader(key) {
				return "", false
			}

			return runtime.DefaultHeaderMatcher(key)
		}),
		runtime.WithMetadata(gatewayMetadata),
		// gRPC's own content-type (application/grpc) is transport, not a
		// header for REST clients; metadata a handler sets still goes out.
		runtime.WithOutgoingHeaderMatcher(func(key string) (string, bool) {
			if strings.EqualFold(key, "content-type") {
				return "", false
			}

			return runtime.MetadataHeaderPrefix + key, true
		}),
		// Unset fields are left out rather than sent as null/""/[]: a typed
		// schematic then reads like its YAML, which also omits them.
		// Statuses come from the one classifier, so REST and the public
		// routes agree on every code.
		runtime.WithErrorHandler(func(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
			st := status.Convert(err)
			body, merr := m.Marshal(st.Proto())
			if merr != nil {
				body = []byte(`{"code":13,"message":"internal server error"}`)
			}

			code, retryAfter := httpStatusOf(st)
			if retryAfter != "" {
				w.Header().Set("Retry-After", retryAfter)
			}

			w.Header().Set("Content-Type", m.ContentType(st.Proto()))
			if st.Code() == codes.Unauthenticated {
				w.Header().Set("WWW-Authenticate", access.Challenge)
			}
			w.WriteHeader(code)
			_, _ = w.Write(body) //nolint:errcheck // the client is gone
		}),
		// A stream that fails before its first message gets the same HTTP
		// status as any other error (the gateway's own table would answer
		// FailedPrecondition with 400, not 412).
		runtime.WithStreamErrorHandler(func(ctx context.Context, err error) *status.Status {
			st := status.Convert(err)
			if o, ok := ctx.Value(streamStatusKey{}).(*streamStatus); ok {
				o.code, o.retryAfter = httpStatusOf(st)
			}

			return st
		}),
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &runtime.HTTPBodyMarshaler{
			Marshaler: &runtime.JSONPb{
				MarshalOptions:   protojson.MarshalOptions{EmitUnpopulated: false},
				UnmarshalOptions: protojson.UnmarshalOptions{DiscardUnknown: false},
			},
		}),
	)

	for _, register := range []func(context.Context, *runtime.ServeMux, *grpc.ClientConn) error{
		kilnv1.RegisterSchematicServiceHandler,
		kilnv1.RegisterReleaseServiceHandler,
		kilnv1.RegisterImageServiceHandler,
		kilnv1.RegisterImageCacheServiceHandler,
	} {
		if err := register(ctx, mux, conn); err != nil {
			conn.Close() //nolint:errcheck // already failing

			return nil, nil, nil, fmt.Errorf("gateway: %w", err)
		}
	}

	return withStreamStatus(mux), lis, conn, nil
}

// limitBodies bounds the REST gateway's request bodies as POST /schematics
// bounds its own: the gateway reads a body whole before it calls gRPC, and
// its largest request holds one schematic (as YAML or as typed JSON).
func limitBodies(next http.Handler, s *schematics) http.Handler {
	limit := s.limits.MaxBytes + 64<<10

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)

			return
		}

		if r.ContentLength > limit {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			fmt.Fprintf(w, `{"code":3,"message":"request body is larger than %s (the schematic limit, --max-schematic-size)"}`+"\n", sizeText(s.limits.MaxBytes)) //nolint:errcheck // the client is gone

			return
		}

		reserve := r.ContentLength
		if reserve <= 0 {
			reserve = limit
		}

		if err := s.bodies.Acquire(r.Context(), reserve); err != nil {
			return // the client is gone
		}
		defer s.bodies.Release(reserve)

		r.Body = http.MaxBytesReader(w, r.Body, limit)
		next.ServeHTTP(w, r)
	})
}

type streamStatusKey struct{}

// streamStatus carries the status of a stream's error from the gateway's
// stream error handler to the WriteHeader that follows it.
type streamStatus struct {
	code       int
	retryAfter string
}

// withStreamStatus lets the stream error handler choose the HTTP status.
func withStreamStatus(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		o := &streamStatus{}
		next.ServeHTTP(&streamStatusWriter{ResponseWriter: w, status: o}, r.WithContext(context.WithValue(r.Context(), streamStatusKey{}, o)))
	})
}

type streamStatusWriter struct {
	http.ResponseWriter

	status *streamStatus
}

func (w *streamStatusWriter) WriteHeader(code int) {
	if w.status.code != 0 {
		code = w.status.code
	}

	if w.status.retryAfter != "" {
		w.Header().Set("Retry-After", w.status.retryAfter)
	}

	w.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController flush each streamed line.
func (w *streamStatusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
