package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kiln-dev/kiln/internal/echo"
)

// factoryRoutes are the public Image Factory's own HTTP routes, answering as
// it does so that its clients (pkg/client, Omni, talosctl, curl) work as is.
type factoryRoutes struct {
	schematics *schematics
	releases   *releases
	images     *images
	logger     *slog.Logger
}

func (f *factoryRoutes) register(mux *http.ServeMux) {
	mux.HandleFunc("POST /schematics", f.createSchematic)
	mux.HandleFunc("GET /schematics/{id}", f.getSchematic)
	f.registerReleases(mux)
	f.registerImages(mux)
	f.registerTalosctl(mux)
}

// createSchematic answers 201 with {"id", "schematic"} whether or not the
// schematic was new, as the public factory does. The body is held in memory
// only within the schematic body budget: a declared length over the limit is
// refused before anything is read.
func (f *factoryRoutes) createSchematic(w http.ResponseWriter, r *http.Request) {
	lim := f.schematics.limits

	if r.ContentLength > lim.MaxBytes {
		f.writeError(w, r, &tooLargeError{max: lim.MaxBytes})

		return
	}

	reserve := r.ContentLength
	if reserve < 0 {
		reserve = lim.MaxBytes
	}

	if err := f.schematics.bodies.Acquire(r.Context(), max(reserve, 1)); err != nil {
		f.writeError(w, r, err)

		return
	}
	defer f.schematics.bodies.Release(max(reserve, 1))

	body, err := readBody(http.MaxBytesReader(w, r.Body, lim.MaxBytes), r.ContentLength)
	if err != nil {
		if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
			err = &tooLargeError{max: lim.MaxBytes}
		}

		f.writeError(w, r, err)

		return
	}

	c, err := f.schematics.createRaw(r.Context(), body)
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusCreated)

	_ = json.NewEncoder(w).Encode(struct { //nolint:errcheck // the client is gone
		ID        string `json:"id"`
		Schematic string `json:"schematic"`
	}{c.id, string(c.canonical)})
}

// readBody reads a body of known length into a buffer of that size, and
// one of unknown length growing as it comes.
func readBody(r io.Reader, length int64) ([]byte, error) {
	if length < 0 {
		var buf bytes.Buffer

		_, err := buf.ReadFrom(r)

		return buf.Bytes(), wrapBodyError(err)
	}

	buf := make([]byte, length)

	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, wrapBodyError(err)
	}

	// A body longer than it said is cut by the server; read to EOF so
	// MaxBytesReader and the deadline see the end.
	if _, err := r.Read(make([]byte, 1)); err != nil && !errors.Is(err, io.EOF) {
		return nil, wrapBodyError(err)
	}

	return buf, nil
}

// bodyError is a request body that could not be read whole: cut off, or
// too slow (see deadlines).
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading the request body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

func wrapBodyError(err error) error {
	if err == nil {
		return nil
	}

	if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
		return err
	}

	return &bodyError{err}
}

func (f *factoryRoutes) getSchematic(w http.ResponseWriter, r *http.Request) {
	canonical, _, err := f.schematics.get(r.Context(), r.PathValue("id"))
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(canonical) //nolint:errcheck // the client is gone
}

// writeError answers as the public factory does: the status of the error's
// class and a plain-text message with a trailing newline.
func (f *factoryRoutes) writeError(w http.ResponseWriter, r *http.Request, err error) {
	var (
		tooLarge *tooLargeError
		body     *bodyError
	)

	switch {
	case errors.As(err, &tooLarge):
		http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)

		return
	case errors.As(err, &body):
		code := http.StatusBadRequest
		if isTimeout(err) {
			code = http.StatusRequestTimeout
		}

		w.Header().Set("Connection", "close")
		http.Error(w, err.Error(), code)

		return
	}

	st, _ := status.FromError(toStatus(err))
	code, retryAfter := httpStatusOf(st)

	if code >= http.StatusInternalServerError {
		// ERROR is for kiln's own failures, as on gRPC. A 501 is a client
		// asking for what kiln does not build yet; a 503 or 504 is load or a
		// slow peer, a 507 a full disk the builder has logged.
		level := slog.LevelWarn

		switch st.Code() {
		case codes.Unimplemented:
			level = slog.LevelInfo
		case codes.Internal, codes.Unknown, codes.DataLoss:
			level = slog.LevelError
		}

		f.logger.Log(r.Context(), level, "request failed", "method", r.Method, "path", echo.Clip(r.URL.Path), "status", code,
			"request_id", requestIDFrom(r.Context()), "error", err)
	}

	if retryAfter != "" {
		w.Header().Set("Retry-After", retryAfter)
	}

	http.Error(w, st.Message(), code)
}
