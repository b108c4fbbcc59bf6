package installer

import (
	"context"
	"fmt"
	"io"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/kiln-dev/kiln/release"
)

// TarballTag is the tag the public factory's installer-<arch>.tar carries:
// the imager writes the image with tarball.WriteToFile under the base
// installer's reference, which image-factory sets to "<repo>:<version>"
// with the repository as configured, by default siderolabs/installer-base
// (siderolabs/installer before 1.10) without a registry.
func TarballTag(v release.Version) (name.Tag, error) {
	if v.IsZero() {
		return name.Tag{}, fmt.Errorf("%w: no Talos version", ErrInvalid)
	}

	return name.NewTag(release.BaseInstallerRepo(v) + ":" + v.String())
}

// WriteTarball writes img to w as a docker-archive tarball (what `docker
// load`, `crane push` and skopeo's docker-archive: read) tagged tag, the
// format of the factory's /image/<schematic>/<version>/installer-<arch>.tar.
// Layers are streamed from where they are (kiln's files, the mirror); it
// stops when ctx ends. Equal images give equal bytes.
func WriteTarball(ctx context.Context, w io.Writer, img v1.Image, tag name.Tag) error {
	if err := tarball.Write(tag, img, &ctxWriter{ctx: ctx, w: w}); err != nil {
		return fmt.Errorf("writing installer tarball: %w", err)
	}

	return nil
}

// ctxWriter fails writes once ctx has ended, so that a download whose
// client left stops reading the layers.
type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c *ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}

	return c.w.Write(p)
}
