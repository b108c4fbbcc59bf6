package server

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kiln-dev/kiln/artifacts"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/release"
)

// releases is the release domain service over the artifact manager.
type releases struct {
	manager *artifacts.Manager
}

func (r *releases) versions(ctx context.Context, broken bool) ([]string, error) {
	if broken {
		return r.manager.BrokenVersions(), nil
	}

	vs, err := r.manager.Versions(ctx)
	if err != nil {
		return nil, err
	}

	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.String()
	}

	return out, nil
}

func (r *releases) extensions(ctx context.Context, version string) ([]*kilnv1.ExtensionInfo, error) {
	exts, err := r.manager.Extensions(ctx, version)
	if err != nil {
		return nil, err
	}

	src := r.manager.Source()
	out := make([]*kilnv1.ExtensionInfo, 0, len(exts))

	for _, e := range exts {
		out = append(out, &kilnv1.ExtensionInfo{
			Name:        e.Name(),
			Ref:         src.PublicRef(release.MirrorPath(e.Ref.Context()), e.Ref.TagStr()),
			Digest:      e.Digest,
			Author:      e.Author,
			Description: e.Description,
		})
	}

	return out, nil
}

func (r *releases) overlays(ctx context.Context, version string) ([]*kilnv1.OverlayInfo, error) {
	ovs, err := r.manager.Overlays(ctx, version)
	if err != nil {
		return nil, err
	}

	src := r.manager.Source()
	out := make([]*kilnv1.OverlayInfo, 0, len(ovs))

	for _, o := range ovs {
		out = append(out, &kilnv1.OverlayInfo{
			Name:   o.Name,
			Image:  o.Image(),
			Ref:    src.PublicRef(release.MirrorPath(o.Ref.Context()), o.Ref.TagStr()),
			Digest: o.Digest,
		})
	}

	return out, nil
}

// releaseService is the gRPC adapter of releases.
type releaseService struct {
	kilnv1.UnsafeReleaseServiceServer

	domain *releases
}

var _ kilnv1.ReleaseServiceServer = (*releaseService)(nil)

func (s *releaseService) ListVersions(ctx context.Context, req *kilnv1.ListVersionsRequest) (*kilnv1.ListVersionsResponse, error) {
	vs, err := s.domain.versions(ctx, req.GetBroken())
	if err != nil {
		return nil, err
	}

	return &kilnv1.ListVersionsResponse{Versions: vs}, nil
}

func (s *releaseService) ListExtensions(ctx context.Context, req *kilnv1.ListExtensionsRequest) (*kilnv1.ListExtensionsResponse, error) {
	exts, err := s.domain.extensions(ctx, req.GetVersion())
	if err != nil {
		return nil, err
	}

	return &kilnv1.ListExtensionsResponse{Extensions: exts}, nil
}

func (s *releaseService) ListOverlays(ctx context.Context, req *kilnv1.ListOverlaysRequest) (*kilnv1.ListOverlaysResponse, error) {
	ovs, err := s.domain.overlays(ctx, req.GetVersion())
	if err != nil {
		return nil, err
	}

	return &kilnv1.ListOverlaysResponse{Overlays: ovs}, nil
}

func (s *releaseService) GetReleaseLock(_ context.Context, req *kilnv1.GetReleaseLockRequest) (*kilnv1.GetReleaseLockResponse, error) {
	l, err := s.domain.manager.Lock(req.GetVersion())
	if err != nil {
		return nil, err
	}

	if l == nil {
		return nil, status.Errorf(codes.NotFound, "no release lock for %s: it is recorded when kiln mirror copies the version into kiln, or at the version's first use", req.GetVersion())
	}

	return &kilnv1.GetReleaseLockResponse{Lock: lockProto(l)}, nil
}

// LockRelease records a version's lock for kiln mirror (an admin call: the
// guard let it through with a credential only).
func (s *releaseService) LockRelease(ctx context.Context, req *kilnv1.LockReleaseRequest) (*kilnv1.LockReleaseResponse, error) {
	m := s.domain.manager

	if got, serves := strings.Trim(req.GetNamespace(), "/"), strings.Trim(m.Source().Namespace, "/"); got != serves {
		return nil, &invalidArgumentError{fmt.Sprintf("the release was copied into namespace %q, and this kiln serves releases from namespace %q: nothing to lock", got, serves)}
	}

	previous, err := m.Lock(req.GetVersion())
	if err != nil {
		return nil, err
	}

	by := "kiln mirror"
	if u := userFrom(ctx); u != "" {
		by += " (" + u + ")"
	}

	l, err := m.RecordLock(ctx, req.GetVersion(), req.GetImages(), by)
	if err != nil {
		return nil, err
	}

	resp := &kilnv1.LockReleaseResponse{Lock: lockProto(l)}
	if previous != nil {
		resp.Previous = lockProto(previous)
	}

	return resp, nil
}

func lockProto(l *artifacts.Lock) *kilnv1.ReleaseLock {
	return &kilnv1.ReleaseLock{
		Version:    l.Version.String(),
		Recorded:   timestamppb.New(l.Recorded),
		RecordedBy: l.RecordedBy,
		Images:     l.Images,
		Extensions: l.Extensions,
		Overlays:   l.Overlays,
	}
}

// Public routes. The public factory writes these JSON bodies without a
// Content-Type (clients get text/plain by sniffing); kiln says what they are.

type extensionJSON struct {
	Name        string `json:"name"`
	Ref         string `json:"ref"`
	Digest      string `json:"digest"`
	Author      string `json:"author"`
	Description string `json:"description"`
}

type overlayJSON struct {
	Name   string `json:"name"`
	Image  string `json:"image"`
	Ref    string `json:"ref"`
	Digest string `json:"digest"`
}

func (f *factoryRoutes) registerReleases(mux *http.ServeMux) {
	mux.HandleFunc("GET /versions", f.versions)
	mux.HandleFunc("GET /version/{version}/extensions/official", f.officialExtensions)
	mux.HandleFunc("GET /version/{version}/overlays/official", f.officialOverlays)
}

func (f *factoryRoutes) versions(w http.ResponseWriter, r *http.Request) {
	vs, err := f.releases.versions(r.Context(), r.URL.Query().Get("broken") == "true")
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	if vs == nil {
		vs = []string{}
	}

	writeJSON(w, vs)
}

func (f *factoryRoutes) officialExtensions(w http.ResponseWriter, r *http.Request) {
	exts, err := f.releases.extensions(r.Context(), r.PathValue("version"))
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	out := make([]extensionJSON, len(exts))
	for i, e := range exts {
		out[i] = extensionJSON{e.GetName(), e.GetRef(), e.GetDigest(), e.GetAuthor(), e.GetDescription()}
	}

	writeJSON(w, out)
}

func (f *factoryRoutes) officialOverlays(w http.ResponseWriter, r *http.Request) {
	ovs, err := f.releases.overlays(r.Context(), r.PathValue("version"))
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	out := make([]overlayJSON, len(ovs))
	for i, o := range ovs {
		out[i] = overlayJSON{o.GetName(), o.GetImage(), o.GetRef(), o.GetDigest()}
	}

	writeJSON(w, out)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v) //nolint:errcheck // the client is gone
}
