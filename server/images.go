package server

import (
	"context"
	"errors"
	"io"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/builder/cmdline"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/storage"
)

// images is the boot-asset domain service over the builder.
type images struct {
	builder     *builder.Builder
	externalURL string
	// pxeURL is where iPXE clients fetch kernels: the PXE base URL, which
	// may differ from the external URL (iPXE often cannot do modern TLS).
	pxeURL string
}

func (im *images) url(schematicID, version, path string) string {
	return im.externalURL + "/image/" + url.PathEscape(schematicID) + "/" + url.PathEscape(version) + "/" + url.PathEscape(path)
}

func (f *factoryRoutes) registerImages(mux *http.ServeMux) {
	mux.HandleFunc("GET /image/{schematic}/{version}/{path}", f.image)
	mux.HandleFunc("HEAD /image/{schematic}/{version}/{path}", f.image)
	mux.HandleFunc("GET /pxe/{schematic}/{version}/{path}", f.pxe)
	mux.HandleFunc("GET /imagecache/{file}", f.imageCacheDownload)
}

// pxe answers the iPXE script for <platform>-<arch>[-secureboot]: it builds
// the matching cmdline asset and chains to kernel and initramfs (or the UKI
// for SecureBoot) under the PXE base URL; cmdline.PXEScript says where it
// differs from the public factory's (the initrd named on EFI).
func (f *factoryRoutes) pxe(w http.ResponseWriter, r *http.Request) {
	req := builder.Request{SchematicID: r.PathValue("schematic"), Version: r.PathValue("version"), Path: "cmdline-" + r.PathValue("path")}

	res, err := f.images.builder.Build(r.Context(), req, nil)
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	defer res.Asset.Close()

	line, err := io.ReadAll(io.LimitReader(res.Asset, 64<<10))
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	script, err := cmdline.PXEScript(cmdline.PXEOptions{
		BaseURL:     f.images.pxeURL,
		SchematicID: req.SchematicID,
		Version:     res.Plan.Version,
		Platform:    res.Plan.Output.Platform,
		Arch:        res.Plan.Output.Arch,
		Cmdline:     string(line),
		SecureBoot:  res.Plan.Output.SecureBoot,
	})
	if err != nil {
		f.writeError(w, r, err)

		return
	}

	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = io.WriteString(w, script) //nolint:errcheck // the client is gone
}

// image serves an asset. Unlike the public factory it answers Range,
// If-None-Match and If-Range (through http.ServeContent), and HEAD answers
// from the cache without building.
func (f *factoryRoutes) image(w http.ResponseWriter, r *http.Request) {
	req := builder.Request{SchematicID: r.PathValue("schematic"), Version: r.PathValue("version"), Path: r.PathValue("path")}

	filename := req.Path
	if name := r.URL.Query().Get("filename"); name != "" {
		filename = name
	}

	var (
		asset storage.Asset
		err   error
	)

	if r.Method == http.MethodHead {
		var p *builder.Plan

		p, err = f.images.builder.Plan(r.Context(), req)
		if err == nil {
			asset, err = f.images.builder.Lookup(r.Context(), p)
			if errors.Is(err, storage.ErrNotFound) {
				// Not built yet: say what a GET would return, without building.
				setDownloadHeaders(w, req.Path, filename)
				w.Header().Set("X-Kiln-Cache", "miss")
				w.WriteHeader(http.StatusOK)

				return
			}
		}
	} else {
		var res *builder.Result

		res, err = f.images.builder.Build(r.Context(), req, nil)
		if err == nil {
			asset = res.Asset
		}
	}

	if err != nil {
		f.writeError(w, r, err)

		return
	}

	defer asset.Close()

	setDownloadHeaders(w, req.Path, filename)
	w.Header().Set("X-Kiln-Cache", "hit")
	w.Header().Set("ETag", `"`+asset.SHA256()+`"`)
	w.Header().Set("Content-Length", strconv.FormatInt(asset.Size(), 10))

	http.ServeContent(w, r, "", asset.ModTime(), asset)
}

func setDownloadHeaders(w http.ResponseWriter, path, filename string) {
	w.Header().Set("Content-Type", builder.ContentType(path))
	w.Header().Set("Content-Disposition", mime.FormatMediaType("attachment", map[string]string{"filename": filename}))
	w.Header().Set("Accept-Ranges", "bytes")
}

// imageService is the gRPC adapter of images.
type imageService struct {
	kilnv1.UnsafeImageServiceServer

	domain *images
}

var _ kilnv1.ImageServiceServer = (*imageService)(nil)

func (s *imageService) Build(req *kilnv1.BuildRequest, stream kilnv1.ImageService_BuildServer) error {
	ctx := stream.Context()
	breq := builder.Request{SchematicID: req.GetSchematicId(), Version: req.GetVersion(), Path: req.GetPath()}
	out := newEventStream(stream.Send)

	res, err := s.domain.builder.Build(ctx, breq, func(e builder.Event) {
		if e.CacheHit {
			out.progress(&kilnv1.BuildResponse{Event: &kilnv1.BuildResponse_CacheHit{CacheHit: true}})

			return
		}

		out.progress(&kilnv1.BuildResponse{Event: &kilnv1.BuildResponse_Progress{
			Progress: progressEvent(e.Phase, e.Artifact, e.Message, e.Done, e.Total),
		}})
	})

	var last *kilnv1.BuildResponse

	if err == nil {
		defer res.Asset.Close()

		last = &kilnv1.BuildResponse{Event: &kilnv1.BuildResponse_Done{Done: &kilnv1.Done{
			Url:      s.domain.url(breq.SchematicID, res.Plan.Version, breq.Path),
			Size:     res.Asset.Size(),
			Sha256:   res.Asset.SHA256(),
			Filename: breq.Path,
		}}}
	}

	return out.finish(last, err)
}

func (s *imageService) GetBootAssetURL(ctx context.Context, req *kilnv1.GetBootAssetURLRequest) (*kilnv1.GetBootAssetURLResponse, error) {
	p, err := s.domain.builder.Plan(ctx, builder.Request{SchematicID: req.GetSchematicId(), Version: req.GetVersion(), Path: req.GetPath()})
	if err != nil {
		return nil, err
	}

	return &kilnv1.GetBootAssetURLResponse{Url: s.domain.url(p.SchematicID, p.Version, strings.TrimSpace(req.GetPath()))}, nil
}
