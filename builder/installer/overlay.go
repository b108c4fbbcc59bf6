package installer

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/kiln-dev/kiln/internal/iox"
)

// MaxOverlaySize bounds the bytes OverlayFromImage stores (real overlays
// are tens of MB; a sparse or hostile tar entry can claim terabytes).
const MaxOverlaySize = 1 << 30

// OverlayFromImage reads what the overlay layer needs from an overlay image
// (its linux/<arch> image, whose root holds artifacts/, installers/<name>
// and profiles/): the artifacts tree and the installer called name, as
// outInstaller extracts them. Files are copied into dir (which must exist;
// the caller removes it) so that nothing large is held in memory.
// extraOptions is the YAML of the schematic's overlay options.
func OverlayFromImage(ctx context.Context, img v1.Image, overlayName string, extraOptions []byte, dir string) (*Overlay, error) {
	if overlayName == "" || strings.ContainsAny(overlayName, "/\\") || overlayName == "." || overlayName == ".." {
		return nil, fmt.Errorf("%w: overlay name %q", ErrInvalid, overlayName)
	}

	rc := mutate.Extract(img)
	defer rc.Close() //nolint:errcheck // read-only

	o := &Overlay{ExtraOptions: extraOptions}
	installer := "installers/" + overlayName
	stored := map[string]Blob{} // for hard links
	dirs := map[string]bool{}
	budget := int64(MaxOverlaySize)

	tr := tar.NewReader(rc)

	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}

		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return nil, fmt.Errorf("reading overlay image: %w", err)
		}

		p := strings.TrimSuffix(strings.TrimPrefix(path.Clean("/"+hdr.Name), "/"), "/")
		mode := hdr.Mode & 0o777

		if hdr.Typeflag == tar.TypeReg && (p == "installers/"+overlayName || strings.HasPrefix(p, "artifacts/")) {
			if budget -= hdr.Size; budget < 0 {
				return nil, fmt.Errorf("%w: overlay image holds more than %d bytes of artifacts and installer", ErrInvalid, MaxOverlaySize)
			}
		}

		switch {
		case p == installer:
			b, err := storeEntry(ctx, hdr, tr, stored, dir)
			if err != nil {
				return nil, err
			}

			o.Installer, o.InstallerMode = b, mode
		case strings.HasPrefix(p, "artifacts/"):
			rel := strings.TrimPrefix(p, "artifacts/")
			if hdr.Typeflag == tar.TypeDir {
				o.Artifacts = append(o.Artifacts, File{Path: rel, Mode: mode, Dir: true})
				dirs[rel] = true

				continue
			}

			b, err := storeEntry(ctx, hdr, tr, stored, dir)
			if err != nil {
				return nil, err
			}

			o.Artifacts = append(o.Artifacts, File{Path: rel, Mode: mode, Content: b})
			stored[p] = b
		}
	}

	if o.Installer.IsZero() {
		return nil, fmt.Errorf("%w: overlay image has no installer %q (no %s)", ErrInvalid, overlayName, installer)
	}

	// A directory the image holds only implicitly is still a directory
	// entry in Talos's walk of the extracted tree, with the mode a
	// tar extraction gives it.
	for _, f := range o.Artifacts {
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			if !dirs[d] {
				dirs[d] = true
				o.Artifacts = append(o.Artifacts, File{Path: d, Mode: 0o755, Dir: true})
			}
		}
	}

	return o, nil
}

// storeEntry copies a regular file (or resolves a hard link to one already
// stored) into dir.
func storeEntry(ctx context.Context, hdr *tar.Header, r io.Reader, stored map[string]Blob, dir string) (Blob, error) {
	switch hdr.Typeflag {
	case tar.TypeReg:
	case tar.TypeLink:
		target := strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")
		if b, ok := stored[target]; ok {
			return b, nil
		}

		return Blob{}, fmt.Errorf("%w: overlay image: %s is a hard link to %s, which is not an overlay artifact", ErrInvalid, hdr.Name, hdr.Linkname)
	default:
		return Blob{}, fmt.Errorf("%w: overlay image: %s is not a regular file (tar type %q)", ErrInvalid, hdr.Name, hdr.Typeflag)
	}

	f, err := os.CreateTemp(dir, "overlay-*")
	if err != nil {
		return Blob{}, err
	}

	n, err := io.Copy(f, iox.ContextReader(ctx, r))
	if cerr := f.Close(); err == nil {
		err = cerr
	}

	if err != nil {
		return Blob{}, fmt.Errorf("overlay image: %s: %w", hdr.Name, err)
	}

	b, err := FileBlob(f.Name())
	if err == nil && b.Size != n {
		err = fmt.Errorf("overlay image: %s: stored %d of %d bytes", hdr.Name, b.Size, n)
	}

	return b, err
}
