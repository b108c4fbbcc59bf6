package server

import (
	"net/http"
	"strconv"

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
	ctx := stream.Context()

	// One goroutine writes the stream; progress from the build goroutine
	// is dropped rather than blocking it when the client is slow.
	events := make(chan *kilnv1.CreateResponse, 64)
	sendDone := make(chan error, 1)

	go func() {
		var err error

		for ev := range events {
			if err == nil {
				err = stream.Send(ev)
			}
		}

		sendDone <- err
	}()

	res, err := s.domain.builder.ImageCache(ctx, builder.CacheRequest{
		Images: req.GetImages(), KubernetesForTalos: req.GetKubernetesForTalos(),
		Platforms: req.GetPlatforms(), Layout: req.GetLayout(),
	}, func(e builder.Event) {
		ev := &kilnv1.CreateResponse{Event: &kilnv1.CreateResponse_Progress{Progress: &kilnv1.Progress{
			Phase: e.Phase, Artifact: e.Artifact, BytesDone: e.Done, BytesTotal: e.Total, Message: e.Message,
		}}}
		if e.CacheHit {
			ev = &kilnv1.CreateResponse{Event: &kilnv1.CreateResponse_CacheHit{CacheHit: true}}
		}

		select {
		case events <- ev:
		default:
		}
	})

	if err == nil {
		defer res.Asset.Close()

		events <- &kilnv1.CreateResponse{Event: &kilnv1.CreateResponse_Done{Done: &kilnv1.CacheDone{
			CacheId: res.ID,
			Url:     s.domain.externalURL + "/imagecache/" + res.ID + ".tar",
			Size:    res.Asset.Size(),
			Sha256:  res.Asset.SHA256(),
			Images:  int32(res.Images), //nolint:gosec // a cache of 2^31 images is not a concern
		}}}
	}

	close(events)

	if sendErr := <-sendDone; err == nil {
		err = sendErr
	}

	return err
}

// imageCacheDownload serves a built cache as a tar.
func (f *factoryRoutes) imageCacheDownload(w http.ResponseWriter, r *http.Request) {
	id, ok := cutSuffix(r.PathValue("file"), ".tar")
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
	w.Header().Set("ETag", `"`+asset.SHA256()+`"`)
	w.Header().Set("Content-Length", strconv.FormatInt(asset.Size(), 10))
	http.ServeContent(w, r, "", asset.ModTime(), asset)
}

func cutSuffix(s, suffix string) (string, bool) {
	if len(s) > len(suffix) && s[len(s)-len(suffix):] == suffix {
		return s[:len(s)-len(suffix)], true
	}

	return "", false
}
