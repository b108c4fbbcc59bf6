package server

import (
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/artifacts"
)

// The public factory's talosctl downloads (Omni's TalosctlList and the
// factory UI read them): GET /talosctl/<version> lists the binaries of the
// release's talosctl-all as absolute URLs, GET|HEAD
// /talosctl/<version>/<file> serves one. Both take the version with or
// without its "v", as the factory does.
func (f *factoryRoutes) registerTalosctl(mux *http.ServeMux) {
	mux.HandleFunc("GET /talosctl/{version}", f.talosctlList)
	mux.HandleFunc("GET /talosctl/{version}/{file}", f.talosctl)
	mux.HandleFunc("HEAD /talosctl/{version}/{file}", f.talosctl)
}

func withV(version string) string {
	if strings.HasPrefix(version, "v") {
		return version
	}

	return "v" + version
}

// talosctlList answers [] for a version that has no talosctl-all (before
// 1.11), as the factory does; an unknown version is a 404.
func (f *factoryRoutes) talosctlList(w http.ResponseWriter, r *http.Request) {
	version := withV(r.PathValue("version"))

	t, err := f.releases.manager.Talosctl(r.Context(), version)
	if errors.Is(err, artifacts.ErrNoTalosctl) {
		writeJSON(w, []string{})

		return
	}

	var files []string
	if err == nil {
		files, err = t.Files(r.Context())
	}

	if err != nil {
		f.writeError(w, r, err)

		return
	}

	base := f.images.externalURL + "/talosctl/" + url.PathEscape(t.Version.String()) + "/"

	out := make([]string, len(files))
	for i, file := range files {
		out[i] = base + url.PathEscape(file)
	}

	writeJSON(w, out)
}

// talosctl serves one binary, with Range and ETag (unlike the factory,
// which answers neither).
func (f *factoryRoutes) talosctl(w http.ResponseWriter, r *http.Request) {
	file := r.PathValue("file")

	t, err := f.releases.manager.Talosctl(r.Context(), withV(r.PathValue("version")))
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	asset, err := t.Open(r.Context(), file)
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	defer asset.Close()

	w.Header().Set("Content-Type", "application/octet-stream")
	w.Header().Set("Content-Disposition", `attachment; filename="`+file+`"`)
	w.Header().Set("ETag", `"`+asset.ETag()+`"`)
	w.Header().Set("Content-Length", strconv.FormatInt(asset.Size(), 10))

	http.ServeContent(w, r, "", asset.ModTime(), asset)
}
