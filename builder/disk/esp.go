package disk

import (
	"context"
	"fmt"

	"github.com/kiln-dev/kiln/builder/esp"
)

// ESP returns Content that formats the partition in place as the EFI system
// partition holding files (builder/esp.BuildAt). opts.SectorSize is taken
// from the disk; the label defaults to "EFI" as in Talos.
func ESP(files []esp.File, opts esp.Options) Content {
	return ContentFunc(func(ctx context.Context, t Target) error {
		opts.SectorSize = t.SectorSize
		if opts.Label == "" {
			opts.Label = LabelEFI
		}
		if _, err := esp.BuildAt(ctx, t.File, t.Offset, t.Size, files, opts); err != nil {
			return fmt.Errorf("formatting ESP: %w", err)
		}
		return nil
	})
}
