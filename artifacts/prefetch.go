package artifacts

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/kiln-dev/kiln/release"
)

// PrefetchBootFiles verifies and extracts into the store the boot files of
// the newest Talos version the mirror offers with a recorded release lock
// (what kiln mirror leaves), for each of arches in turn, one at a time: what
// the first build of a fresh kiln would otherwise do before it can start.
// A build that needs them meanwhile joins the extraction in progress (the
// same flight), and files already in the store are only checked, as their
// first open after a start checks them anyway. Nothing is prefetched for
// a version without a lock, so that prefetching never records one. It
// returns what failed, for each architecture; an architecture the
// imager does not carry is not a failure.
func (m *Manager) PrefetchBootFiles(ctx context.Context, arches []string) error {
	if len(arches) == 0 || m.store == nil {
		return nil
	}

	// Listed afresh, not through Versions: its list is kept for a while,
	// and a version tagged just after the start would not show up in it.
	tags, err := m.src.Tags(ctx, release.ImagerRepo)
	if err != nil {
		return fmt.Errorf("prefetch boot files: %w", err)
	}

	vs := release.Versions(tags, m.cfg.BrokenVersions)

	var v release.Version

	for _, have := range slices.Backward(vs) {
		l, err := m.locks.Lock(have)
		if err != nil {
			return fmt.Errorf("prefetch boot files: %w", err)
		}

		if l != nil {
			v = have

			break
		}
	}

	if v.IsZero() {
		m.logger.InfoContext(ctx, "prefetch boot files: no mirrored version has a release lock; nothing prefetched")

		return nil
	}

	var errs []error

	for _, arch := range arches {
		start := time.Now()

		n, err := m.prefetch(ctx, v, arch)
		if err != nil {
			errs = append(errs, fmt.Errorf("prefetch boot files of Talos %s %s: %w", v, arch, err))

			continue
		}

		m.logger.InfoContext(ctx, "boot files prefetched", "version", v, "arch", arch, "files", n, "duration", time.Since(start).Round(time.Millisecond))
	}

	return errors.Join(errs...)
}

// prefetch opens each boot file of v for arch (extracting them if the
// store lacks them) and says how many the imager has.
func (m *Manager) prefetch(ctx context.Context, v release.Version, arch string) (int, error) {
	b, err := m.BootAssets(ctx, v, arch)
	if err != nil {
		return 0, err
	}

	var n int

	for _, file := range bootFiles {
		a, err := b.Open(ctx, file)
		if err != nil {
			if m.lacks(b.key(file)) {
				continue
			}

			return n, err
		}

		a.Close()
		n++
	}

	return n, nil
}
