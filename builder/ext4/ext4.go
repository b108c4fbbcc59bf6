package ext4

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	dext4 "github.com/diskfs/go-diskfs/filesystem/ext4"
	"github.com/google/uuid"

	"github.com/kiln-dev/kiln/builder/disk"
)

// maxLabelLen is the size of the ext4 volume label field.
const maxLabelLen = 16

// Option modifies a build.
type Option func(*options)

type options struct {
	time time.Time
}

// WithTime sets the timestamp of every inode and of the superblock (default:
// the Unix epoch, like Talos's tar --mtime=@EPOCH with SOURCE_DATE_EPOCH=0).
func WithTime(t time.Time) Option { return func(o *options) { o.time = t } }

func newOptions(opts []Option) options {
	o := options{time: time.Unix(0, 0)}
	for _, f := range opts {
		f(&o)
	}
	return o
}

// Size returns the IMAGECACHE partition size for the tree at root: Talos's
// rule (content × 1.2, rounded up to 1 MiB), or more when that cannot hold
// the tree in this ext4 layout (small trees, trees of many tiny files; see
// the package documentation). The result is a multiple of 1 MiB.
func Size(root string) (int64, error) {
	t, err := scan(root)
	if err != nil {
		return 0, err
	}
	return sizeFor(t), nil
}

// Partition returns the IMAGECACHE partition for disk.Params.Extra: named
// disk.LabelIMAGECACHE, sized by Size, formatted by Content.
func Partition(root string, opts ...Option) (disk.Partition, error) {
	size, err := Size(root)
	if err != nil {
		return disk.Partition{}, err
	}
	return disk.Partition{
		Name:    disk.LabelIMAGECACHE,
		Type:    disk.TypeLinuxData,
		Size:    size,
		Content: Content(root, disk.LabelIMAGECACHE, opts...),
	}, nil
}

// Content returns disk.Content that formats the partition in place as ext4
// labelled label (UUID and directory hash seed disk.GUIDFromLabel(label)) and
// copies the tree at root into it: directories and regular files with their
// permission bits, owned by root. The tree is read when the content is
// written. It fails with ErrTooSmall, before writing anything, if the
// partition is smaller than the tree needs (Size).
func Content(root, label string, opts ...Option) disk.Content {
	o := newOptions(opts)
	return disk.ContentFunc(func(ctx context.Context, t disk.Target) error {
		if t.SectorSize != 512 && t.SectorSize != 4096 {
			return fmt.Errorf("ext4: sector size %d (want 512 or 4096)", t.SectorSize)
		}
		tr, err := scan(root)
		if err != nil {
			return err
		}
		return buildAt(ctx, t.File, t.Offset, t.Size, tr, label, o)
	})
}

// Build writes an ext4 image of the tree at root, labelled label, into out
// (truncated first, then sized to Size(root) as a sparse file) and returns its
// size. sectorSize (512 or 4096) is the logical sector size of the device the
// image is meant for; the layout (4 KiB blocks) suits both. On error out holds
// garbage and the caller discards it.
func Build(ctx context.Context, out *os.File, root, label string, sectorSize int, opts ...Option) (int64, error) {
	if sectorSize != 512 && sectorSize != 4096 {
		return 0, fmt.Errorf("ext4: sector size %d (want 512 or 4096)", sectorSize)
	}
	tr, err := scan(root)
	if err != nil {
		return 0, err
	}
	size := sizeFor(tr)
	if err := out.Truncate(0); err != nil {
		return 0, fmt.Errorf("ext4: truncating output: %w", err)
	}
	if err := out.Truncate(size); err != nil {
		return 0, fmt.Errorf("ext4: sizing output to %d bytes: %w", size, err)
	}
	if err := buildAt(ctx, out, 0, size, tr, label, newOptions(opts)); err != nil {
		return 0, err
	}
	return size, nil
}

// storage is what go-diskfs needs of the image (an *os.File, or a wrapper in
// tests).
type storage interface {
	fs.File
	io.ReaderAt
	io.WriterAt
	io.Seeker
}

// buildAt formats [offset, offset+size) of f and fills it with tr.
func buildAt(ctx context.Context, f storage, offset, size int64, tr *tree, label string, o options) error {
	if label == "" || len(label) > maxLabelLen {
		return fmt.Errorf("ext4: label %q must be 1–%d bytes", label, maxLabelLen)
	}
	if offset < 0 || offset%blockSize != 0 {
		return fmt.Errorf("ext4: offset %d is not a multiple of %d", offset, blockSize)
	}
	size -= size % blockSize
	if need := required(tr, size); need > size {
		return fmt.Errorf("%w: %d bytes, the tree at %s (%d files, %d bytes) needs %d (use Size)",
			ErrTooSmall, size, tr.root, tr.files, tr.content, need)
	}
	if err := ctx.Err(); err != nil {
		return err
	}

	guid := disk.GUIDFromLabel(label)
	u := uuid.UUID(guid)
	b := file.New(f, false)
	efs, err := dext4.Create(b, size, offset, 512, &dext4.Params{
		UUID:            &u,
		SectorsPerBlock: blockSize / 512,
		InodeCount:      uint32(inodeCount(tr, size)),
		VolumeName:      label,
		Features:        []dext4.FeatureOpt{dext4.WithFeatureReservedGDTBlocksForExpansion(false)},
	})
	if err != nil {
		return fmt.Errorf("ext4: formatting %d bytes at %d: %w", size, offset, err)
	}

	buf := make([]byte, copyChunk)
	for _, n := range tr.nodes {
		if err := ctx.Err(); err != nil {
			return err
		}
		if n.dir {
			if err := efs.Mkdir(n.rel); err != nil {
				return fmt.Errorf("ext4: mkdir %s: %w", n.rel, err)
			}
		} else if err := copyFile(ctx, efs, tr.root, n, buf); err != nil {
			return err
		}
		// Always: go-diskfs creates files 0755 and directories with their
		// parent's mode.
		if err := efs.Chmod(n.rel, n.perm); err != nil {
			return fmt.Errorf("ext4: chmod %s: %w", n.rel, err)
		}
	}
	if err := efs.Close(); err != nil {
		return fmt.Errorf("ext4: closing: %w", err)
	}
	if err := finalize(f, offset, guid, o.time); err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	return nil
}

// copyFile copies one regular file in copyChunk writes. A Write larger than
// the declared size means the tree changed under us.
func copyFile(ctx context.Context, efs *dext4.FileSystem, root string, n node, buf []byte) error {
	src, err := os.Open(filepath.Join(root, filepath.FromSlash(n.rel)))
	if err != nil {
		return fmt.Errorf("ext4: %w", err)
	}
	defer src.Close()
	dst, err := efs.OpenFile(n.rel, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return fmt.Errorf("ext4: create %s: %w", n.rel, err)
	}
	defer dst.Close()
	var done int64
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		m, rerr := io.ReadFull(src, buf)
		if m > 0 {
			if done+int64(m) > n.size {
				return fmt.Errorf("ext4: %s grew beyond %d bytes while copying", n.rel, n.size)
			}
			if _, err := dst.Write(buf[:m]); err != nil {
				if strings.Contains(err.Error(), "space") {
					return fmt.Errorf("%w: writing %s: %v", ErrTooSmall, n.rel, err)
				}
				return fmt.Errorf("ext4: write %s: %w", n.rel, err)
			}
			done += int64(m)
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return fmt.Errorf("ext4: read %s: %w", n.rel, rerr)
		}
	}
	if done != n.size {
		return fmt.Errorf("ext4: %s: read %d bytes, expected %d (changed while copying)", n.rel, done, n.size)
	}
	return dst.Close()
}
