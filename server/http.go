package server

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/kiln-dev/kiln/internal/echo"
	"github.com/kiln-dev/kiln/internal/version"
)

type requestIDKey struct{}

// requestIDFrom returns the request ID a middleware attached to ctx.
func requestIDFrom(ctx context.Context) string {
	id, _ := ctx.Value(requestIDKey{}).(string)

	return id
}

func newRequestID() string {
	var b [8]byte

	_, _ = rand.Read(b[:]) //nolint:errcheck // crypto/rand.Read never fails

	return hex.EncodeToString(b[:])
}

// rootHandler splits the one listener between gRPC, the REST gateway and the
// public routes, and wraps the HTTP ones in the public factory's headers.
func rootHandler(grpcServer *grpc.Server, gateway, public http.Handler, logger *slog.Logger, dl deadlines) http.Handler {
	serverHeader := "Image Factory (kiln " + version.Version() + ")"

	httpHandler := http.NewServeMux()
	httpHandler.Handle("/v1/", gateway)
	httpHandler.Handle("/", public)

	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if healthOnly(r) && !isHealthCheck(r) {
			// Admitted past the connection cap for health checks only.
			w.Header().Set("Connection", "close")
			w.Header().Set("Retry-After", "5")
			http.Error(w, "kiln is at its connection limit; retry later", http.StatusServiceUnavailable)

			return
		}

		w, r, done := dl.wrap(w, r, isStreamed(r))
		defer done()

		if isGRPC(r) {
			grpcServer.ServeHTTP(w, r)

			return
		}

		id := r.Header.Get("X-Request-ID")
		if id == "" {
			id = newRequestID()
			r.Header.Set("X-Request-ID", id) // the gateway forwards it to gRPC
		}

		w.Header().Set("X-Request-ID", id)
		w.Header().Set("Server", serverHeader)

		if corsRoute(r.URL.Path) {
			cors(w.Header())

			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				w.WriteHeader(http.StatusNoContent)

				return
			}
		}

		ctx := context.WithValue(r.Context(), requestIDKey{}, id)
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		start := time.Now()

		httpHandler.ServeHTTP(rec, r.WithContext(ctx))

		level := slog.LevelInfo
		if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
			level = slog.LevelDebug
		}

		logger.Log(ctx, level, "http request", "method", r.Method, "path", echo.Clip(r.URL.Path), "status", rec.status,
			"duration", time.Since(start), "request_id", id)
	})
}

// corsRoute reports whether a path is one of the public factory's routes,
// which browsers on other origins may read (its web UI is served from
// elsewhere). The embedded registry and the REST gateway are not: nothing
// in a browser needs them cross-origin, and the registry's writes must not
// be reachable from any page a user happens to open.
func corsRoute(path string) bool {
	for _, prefix := range []string{"/schematics", "/versions", "/version/", "/image/", "/pxe/", "/imagecache/"} {
		if strings.HasPrefix(path, prefix) {
			return true
		}
	}

	return false
}

// cors matches the public factory's: any origin may read, browsers may see the
// download headers.
func cors(h http.Header) {
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS")
	h.Set("Access-Control-Allow-Headers", "Cache-Control, Content-Type")
	h.Set("Access-Control-Expose-Headers", "Content-Disposition, Content-Length, Content-Type")
}

type statusRecorder struct {
	http.ResponseWriter

	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Unwrap lets http.ResponseController reach the real writer (flushing
// streamed downloads).
func (s *statusRecorder) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// ReadFrom passes a download on to the writer beneath, so that a file
// reaches the connection's sendfile (see deadlineWriter.ReadFrom).
func (s *statusRecorder) ReadFrom(r io.Reader) (int64, error) { return io.Copy(s.ResponseWriter, r) }
