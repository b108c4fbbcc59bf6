package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/kiln-dev/kiln/builder"
	"github.com/kiln-dev/kiln/builder/cmdline"
	kilnv1 "github.com/kiln-dev/kiln/gen/kiln/v1"
	"github.com/kiln-dev/kiln/internal/echo"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/storage"
)

// images is the boot-asset domain service over the builder.
type images struct {
	builder     *builder.Builder
	externalURL string
	// pxeURL is where iPXE clients fetch kernels: the PXE base URL, which
	// may differ from the external URL (iPXE often cannot do modern TLS).
	pxeURL string
	// installers is the registry frontend, nil without an embedded
	// registry.
	installers *installerFrontend
}

func (im *images) url(schematicID string, version release.Version, path string) string {
	return im.externalURL + "/image/" + url.PathEscape(schematicID) + "/" + url.PathEscape(version.String()) + "/" + url.PathEscape(path)
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
		if err := checkFilename(name); err != nil {
			f.writeError(w, r, err)

			return
		}

		filename = name
	}

	var (
		asset storage.Asset
		built bool // this request waited for the build
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
			asset, built = res.Asset, !res.CacheHit
		}
	}

	if err != nil {
		f.writeError(w, r, err)

		return
	}

	defer asset.Close()

	setDownloadHeaders(w, req.Path, filename)
	w.Header().Set("X-Kiln-Cache", cacheHeader(built))
	w.Header().Set("ETag", `"`+asset.ETag()+`"`)
	w.Header().Set("Content-Length", strconv.FormatInt(asset.Size(), 10))

	http.ServeContent(w, r, "", asset.ModTime(), asset)
}

// cacheHeader is X-Kiln-Cache: "miss" when the request had to wait for a
// build (its own or one it joined), "hit" when the asset was there.
func cacheHeader(built bool) string {
	if built {
		return "miss"
	}

	return "hit"
}

func setDownloadHeaders(w http.ResponseWriter, path, filename string) {
	w.Header().Set("Content-Type", builder.ContentType(path))
	w.Header().Set("Content-Disposition", contentDisposition(filename))
	w.Header().Set("Accept-Ranges", "bytes")
}

// maxFilename is the longest ?filename= taken (a file name on most file
// systems).
const maxFilename = 255

// checkFilename refuses a ?filename= that is not a plain file name: a
// browser or `curl -OJ` saves under it, so no directory part, no control
// characters (they would break the header), nothing but UTF-8.
func checkFilename(name string) error {
	bad := func(why string) error {
		return &invalidArgumentError{fmt.Sprintf("filename %q is not a plain file name: %s", echo.Clip(name), why)}
	}

	switch {
	case len(name) > maxFilename:
		return bad(fmt.Sprintf("longer than %d bytes", maxFilename))
	case !utf8.ValidString(name):
		return bad("not UTF-8")
	case strings.ContainsAny(name, `/\`):
		return bad("it has a path separator")
	case name == "." || name == "..":
		return bad("it names a directory")
	}

	for _, r := range name {
		if unicode.IsControl(r) {
			return bad("it has a control character")
		}
	}

	return nil
}

// contentDisposition is "attachment" with the file name as RFC 6266 wants
// it: a quoted-string (the public factory's form, `filename="x.iso"`) with
// '"' and '\' escaped, and for a name beyond ASCII also filename* in UTF-8
// (RFC 8187), the plain filename then holding an ASCII stand-in.
func contentDisposition(name string) string {
	var ascii strings.Builder

	plain := true

	for _, r := range name {
		switch {
		case r == '"' || r == '\\':
			ascii.WriteByte('\\')
			ascii.WriteRune(r)
		case r < 0x80:
			ascii.WriteRune(r)
		default:
			plain = false

			ascii.WriteByte('_')
		}
	}

	v := `attachment; filename="` + ascii.String() + `"`
	if !plain {
		v += "; filename*=UTF-8''" + rfc8187(name)
	}

	return v
}

// rfc8187 percent-encodes all but RFC 8187's attr-char.
func rfc8187(s string) string {
	const hexDigits = "0123456789ABCDEF"

	var b strings.Builder

	for i := range len(s) {
		c := s[i]
		if c < 0x80 && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0) {
			b.WriteByte(c)

			continue
		}

		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}

	return b.String()
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

		// Done promises the content's sha256, which the asset cache computes
		// only when asked (the first time: a second for a 2 GiB raw disk's
		// holes), unlike the ETag the downloads carry.
		var sum string
		if sum, err = res.Asset.SHA256(ctx); err == nil {
			last = &kilnv1.BuildResponse{Event: &kilnv1.BuildResponse_Done{Done: &kilnv1.Done{
				Url:      s.domain.url(breq.SchematicID, res.Plan.Version, breq.Path),
				Size:     res.Asset.Size(),
				Sha256:   sum,
				Filename: breq.Path,
			}}}
		}
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
