package imagecache

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Layout is the output format of Write.
type Layout int

const (
	// OCI packs the tree into a one-layer OCI image in an OCI image layout
	// (talosctl's default, what the imager's --image-cache takes).
	OCI Layout = iota
	// Flat writes the tree itself.
	Flat
)

func (l Layout) String() string {
	switch l {
	case OCI:
		return "oci"
	case Flat:
		return "flat"
	default:
		return fmt.Sprintf("layout(%d)", int(l))
	}
}

// ParseLayout parses "oci" or "flat" (talosctl's --layout).
func ParseLayout(s string) (Layout, error) {
	switch s {
	case "oci", "":
		return OCI, nil
	case "flat":
		return Flat, nil
	default:
		return 0, fmt.Errorf("layout %q: want oci or flat: %w", s, ErrInvalid)
	}
}

// AllPlatforms as the only platform caches every child of each index.
const AllPlatforms = "all"

// Options control Plan and Write. Start from DefaultOptions: the zero value
// does not cache signatures.
type Options struct {
	// Platforms are "os/arch[/variant]" values, or just "all". Empty means
	// linux/amd64. With OCI the first one (linux/amd64 for "all") is the
	// platform of the layout's descriptor, which the imager matches against
	// its target architecture.
	Platforms []string
	// Layout is the output format; it is part of the plan's ID.
	Layout Layout
	// Jobs bounds parallel blob downloads, and images planned at once
	// (default 4).
	Jobs int
	// LayerCache is an optional directory of blobs by digest, reused across
	// runs (layout: <dir>/sha256/<hex>). It only saves downloads.
	LayerCache string
	// Signatures caches cosign signatures (tags sha256-<hex>.sig or
	// sha256-<hex> of each image digest), as talosctl's --cosign-signatures.
	Signatures bool
	// Created is the OCI config's "created" time. Zero means the Unix
	// epoch, so that the same plan always gives the same bytes; talosctl
	// writes time.Now(). It is not part of the plan's ID.
	Created time.Time
	// NoSync skips the syncfs before the output is renamed into place and
	// writes through the page cache (scratch that is read back at once):
	// a crash may leave a complete-looking directory whose files were not
	// flushed.
	NoSync bool
	// Progress, when set, receives events; calls are serialised.
	Progress func(Event)
	// Logger defaults to discarding (no process-wide logger is used).
	Logger *slog.Logger

	// spoolMemory overrides the spools' memory bound (tests).
	spoolMemory int
}

// DefaultOptions are talosctl's defaults: linux/amd64, OCI layout,
// signatures cached.
func DefaultOptions() Options {
	return Options{Platforms: []string{"linux/amd64"}, Layout: OCI, Jobs: 4, Signatures: true}
}

// Errors; wrapped with the image or path that failed.
var (
	// ErrNotFound: an image, tag or platform is not in the source.
	ErrNotFound = errors.New("not found")
	// ErrInvalid: a bad reference, platform or option.
	ErrInvalid = errors.New("invalid")
	// ErrExists: the output directory exists and is not empty.
	ErrExists = errors.New("output exists")
	// ErrDigest: a blob did not match its digest or size.
	ErrDigest = errors.New("digest mismatch")
)

// platforms parses opts.Platforms; all is true for "all".
func (o Options) platforms() (ps []v1.Platform, all bool, err error) {
	if len(o.Platforms) == 0 {
		return []v1.Platform{{OS: "linux", Architecture: "amd64"}}, false, nil
	}

	if len(o.Platforms) == 1 && o.Platforms[0] == AllPlatforms {
		return nil, true, nil
	}

	for _, s := range o.Platforms {
		if s == AllPlatforms {
			return nil, false, fmt.Errorf("platform %q must be given alone: %w", s, ErrInvalid)
		}

		p, err := v1.ParsePlatform(s)
		if err != nil || p.OS == "" || p.Architecture == "" {
			return nil, false, fmt.Errorf("platform %q: %w", s, ErrInvalid)
		}

		ps = append(ps, *p)
	}

	return ps, false, nil
}

// outerPlatform is the platform of the OCI layout's descriptor.
func (o Options) outerPlatform() v1.Platform {
	ps, all, err := o.platforms()
	if all || err != nil || len(ps) == 0 {
		return v1.Platform{OS: "linux", Architecture: "amd64"}
	}

	return ps[0]
}

func (o Options) logger() *slog.Logger {
	if o.Logger != nil {
		return o.Logger
	}

	return slog.New(slog.DiscardHandler)
}

func (o Options) spoolLimit() int {
	if o.spoolMemory > 0 {
		return o.spoolMemory
	}

	return spoolMemory
}

func (o Options) jobs() int {
	if o.Jobs > 0 {
		return o.Jobs
	}

	return 4
}

// Phase of an Event.
type Phase string

// Phases, in order.
const (
	PhaseResolve Phase = "resolve" // an image was resolved and verified (Plan)
	PhaseBlob    Phase = "blob"    // a blob was written (Write)
	PhasePack    Phase = "pack"    // every blob is fetched; the OCI layer is being finished (Write, OCI only)
	PhaseDone    Phase = "done"    // the output is in place (Write)
)

// Event reports progress.
type Event struct {
	Phase Phase
	// Image is the input reference (PhaseResolve).
	Image string
	// Digest is the image digest (PhaseResolve) or blob digest (PhaseBlob).
	Digest string
	// Cached is true when a blob came from the layer cache.
	Cached bool
	// Done and Total count blob bytes written so far and in all.
	Done, Total int64
}
