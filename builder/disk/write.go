package disk

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/kiln-dev/kiln/builder/grub"
)

// Write writes the disk image described by p into out, which must be a
// regular file opened for writing (and reading, for in-place formatters). out
// is truncated first, then sized to the image size as a sparse file; only the
// partition table and the partitions' content are written, all other bytes
// stay holes. On error, out holds garbage and the caller discards it.
//
// For grub and dual-boot images, the MBR's boot code is GRUB's boot.img and
// the BIOS partition holds core.img, both patched for where core.img lies.
//
// Errors wrap ErrInvalid (bad parameters) where they apply.
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
	var biosContent Content
	if p.BIOS != nil {
		bios, _ := t.Partition(LabelBIOS)
		boot, core := bytes.Clone(p.BIOS.BootImage), bytes.Clone(p.BIOS.CoreImage)
		// Talos patches with the partition's first LBA in the disk's own
		// sectors, whatever their size (PatchBlocklistsForDiskImage).
		if err := grub.PatchForGPTDisk(boot, core, bios.FirstLBA); err != nil {
			return fmt.Errorf("%w: %v", ErrInvalid, err)
		}
		if _, err := out.WriteAt(boot[:grub.MBRCodeSize], 0); err != nil {
			return fmt.Errorf("disk: writing GRUB's boot code into the MBR: %w", err)
		}
		biosContent = FromReader(bytes.NewReader(core))
	}

	target := func(e Entry) Target {
		return Target{File: out, Offset: e.Offset, Size: e.Size, SectorSize: t.SectorSize, Name: e.Name}
	}
	contents := map[string]Content{LabelEFI: p.EFI}
	if biosContent != nil {
		contents[LabelBIOS] = biosContent
	}
	if p.Boot != nil && p.Boot.Content != nil {
		contents[LabelBOOT] = p.Boot.Content
	}
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
