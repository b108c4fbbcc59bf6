package disk

import (
	"context"
	"fmt"
	"io"
	"os"
)

// Write writes the disk image described by p into out, which must be a
// regular file opened for writing (and reading, for in-place formatters). out
// is truncated first, then sized to the image size as a sparse file; only the
// partition table and the partitions' content are written, all other bytes
// stay holes. On error, out holds garbage and the caller discards it.
//
// Errors wrap ErrUnsupported (GRUB, dual-boot) or ErrInvalid (bad parameters)
// where they apply.
func Write(ctx context.Context, out *os.File, p Params) error {
	t, err := Layout(p)
	if err != nil {
		return err
	}
	if p.EFI == nil {
		return fmt.Errorf("%w: no EFI content", ErrInvalid)
	}
	if err := out.Truncate(0); err != nil {
		return fmt.Errorf("disk: truncating output: %w", err)
	}
	if err := out.Truncate(t.Size); err != nil {
		return fmt.Errorf("disk: sizing output to %d bytes: %w", t.Size, err)
	}
	primary, backup, backupOff := t.primaryAndBackup()
	if _, err := out.WriteAt(primary, 0); err != nil {
		return fmt.Errorf("disk: writing primary GPT: %w", err)
	}
	if _, err := out.WriteAt(backup, backupOff); err != nil {
		return fmt.Errorf("disk: writing backup GPT: %w", err)
	}

	target := func(e Entry) Target {
		return Target{File: out, Offset: e.Offset, Size: e.Size, SectorSize: t.SectorSize, Name: e.Name}
	}
	contents := map[string]Content{LabelEFI: p.EFI}
	if p.META != nil {
		contents[LabelMETA] = ContentFunc(func(ctx context.Context, tg Target) error {
			n, err := copySparse(ctx, tg, p.META)
			if err != nil {
				return err
			}
			if n != METASize {
				return fmt.Errorf("%w: META content is %d bytes, want exactly %d", ErrInvalid, n, METASize)
			}
			return nil
		})
	}
	for _, x := range p.Extra {
		if x.Content != nil {
			contents[x.Name] = x.Content
		}
	}
	for _, e := range t.Partitions {
		c := contents[e.Name]
		if c == nil {
			continue
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := c.WriteContent(ctx, target(e)); err != nil {
			return fmt.Errorf("disk: partition %s: %w", e.Name, err)
		}
	}
	return nil
}

var (
	_ io.WriterAt = Target{}
	_ io.ReaderAt = Target{}
)
