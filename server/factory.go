package server

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// maxSchematicBytes bounds a POST /schematics body. An embedded machine config
// makes schematics the largest requests kiln takes; 4 MiB is also gRPC's
// default message limit, so every surface accepts the same schematics.
const maxSchematicBytes = 4 << 20

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
}

// createSchematic answers 201 with {"id", "schematic"} whether or not the
// schematic was new, as the public factory does.
func (f *factoryRoutes) createSchematic(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSchematicBytes))
	if err != nil {
		if maxErr := (*http.MaxBytesError)(nil); errors.As(err, &maxErr) {
			http.Error(w, "schematic is larger than 4 MiB", http.StatusRequestEntityTooLarge)

			return
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
	st, _ := status.FromError(toStatus(err))
	code := httpStatus(st.Code())

	if code >= http.StatusInternalServerError {
		// ERROR is for kiln's own failures, as on gRPC. A 501 is a client
		// asking for what kiln does not build yet; a 503 or 504 is load or a
		// slow peer.
		level := slog.LevelWarn

		switch st.Code() {
		case codes.Unimplemented:
			level = slog.LevelInfo
		case codes.Internal, codes.Unknown, codes.DataLoss:
			level = slog.LevelError
		}

		f.logger.Log(r.Context(), level, "request failed", "method", r.Method, "path", r.URL.Path, "status", code,
			"request_id", requestIDFrom(r.Context()), "error", err)
	}

	http.Error(w, st.Message(), code)
}
