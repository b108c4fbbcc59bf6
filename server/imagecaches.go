package server

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/kiln-dev/kiln/builder"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
)

// imageCacheService is the gRPC adapter of the builder's image caches.
type imageCacheService struct {
	kilnv1.UnsafeImageCacheServiceServer

	domain *images
}

var _ kilnv1.ImageCacheServiceServer = (*imageCacheService)(nil)

func (s *imageCacheService) Create(req *kilnv1.CreateRequest, stream kilnv1.ImageCacheService_CreateServer) error {
	out := newEventStream(stream.Send)

	res, err := s.domain.builder.ImageCache(stream.Context(), builder.CacheRequest{
		Images: req.GetImages(), KubernetesForTalos: req.GetKubernetesForTalos(),
		Platforms: req.GetPlatforms(), Layout: req.GetLayout(),
	}, func(e builder.Event) {
		if e.CacheHit {
			out.progress(&kilnv1.CreateResponse{Event: &kilnv1.CreateResponse_CacheHit{CacheHit: true}})

			return
		}

		out.progress(&kilnv1.CreateResponse{Event: &kilnv1.CreateResponse_Progress{
			Progress: progressEvent(e.Phase, e.Artifact, e.Message, e.Done, e.Total),
		}})
	})

	var last *kilnv1.CreateResponse

	if err == nil {
		defer res.Asset.Close()

		// Computed when first asked for, as for ImageService.Build's Done.
		var sum string
		if sum, err = res.Asset.SHA256(stream.Context()); err == nil {
			last = &kilnv1.CreateResponse{Event: &kilnv1.CreateResponse_Done{Done: &kilnv1.CacheDone{
				CacheId: res.ID,
				Url:     s.domain.externalURL + "/imagecache/" + res.ID + ".tar",
				Size:    res.Asset.Size(),
				Sha256:  sum,
				Images:  int32(res.Images), //nolint:gosec // a cache of 2^31 images is not a concern
			}}}
		}
	}

	return out.finish(last, err)
}

// imageCacheDownload serves a built cache as a tar.
func (f *factoryRoutes) imageCacheDownload(w http.ResponseWriter, r *http.Request) {
	id, ok := strings.CutSuffix(r.PathValue("file"), ".tar")
	if !ok {
		http.NotFound(w, r)

		return
	}

	asset, err := f.images.builder.OpenImageCache(r.Context(), id)
	if err != nil {
		f.writeError(w, r, err)

		return
	}
	defer asset.Close()

	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", `attachment; filename="imagecache-`+id+`.tar"`)
	w.Header().Set("ETag", `"`+asset.ETag()+`"`)
	w.Header().Set("Content-Length", strconv.FormatInt(asset.Size(), 10))
	http.ServeContent(w, r, "", asset.ModTime(), asset)
}
