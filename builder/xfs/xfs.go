package xfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"time"

	"github.com/kiln-dev/kiln/builder/disk"
)

const (
	// MiB is 1 MiB in bytes.
	MiB = int64(1) << 20

	// Label is the label (and GPT partition name) of Talos's GRUB boot
	// partition.
	Label = "BOOT"

	// BootSize is the BOOT partition size of Talos ≥ 1.11 (GrubBootSize).
	BootSize = 2000 * MiB
	// LegacyBootSize is the BOOT partition size of Talos < 1.11.
	LegacyBootSize = 1000 * MiB

	// MinSize and MaxSize bound the file system sizes Write lays out the
	// way mkfs.xfs does: four allocation groups and a 64 MiB internal log
	// (below 300 MiB and above 128 GiB mkfs sizes the log differently).
	MinSize = 300 * MiB
	MaxSize = 64 << 30

	// MaxNameLen is the longest file name XFS stores.
	MaxNameLen = 255
	// MaxEntries bounds the number of files and directories (one inode B+tree
	// leaf of inode chunks).
	MaxEntries = 16000
)

var (
	// ErrInvalid wraps errors about the input: bad paths or names,
	// duplicates, sizes, options.
	ErrInvalid = errors.New("xfs: invalid input")
	// ErrNoSpace is returned when the files do not fit in the file system.
	ErrNoSpace = errors.New("xfs: file system too small")
)

// File is one file or directory to place in the file system.
type File struct {
	// Path inside the file system, slash-separated ("A/vmlinuz"). A leading
	// "/" is ignored; missing parent directories are created (mode 0755).
	Path string
	// Mode holds the permission bits (0 means 0644 for files, 0755 for
	// directories) and fs.ModeDir for a directory (which may also be
	// implied by the paths below it). Other type bits are refused.
	Mode fs.FileMode
	// Size is the exact number of bytes Open yields; a mismatch is an error.
	Size int64
	// Open returns the content; Write closes it. Unused for directories.
	Open func() (io.ReadCloser, error)
}

// Options tune the file system.
type Options struct {
	// Label is the file system label, at most 12 bytes; default Label.
	Label string
	// UUID is the file system UUID; default disk.GUIDFromLabel(label), as
	// Talos passes -m uuid=<GUIDFromLabel(label)>.
	UUID *disk.GUID
	// SectorSize is 512 (default) or 4096 (mkfs.xfs -s size=4096).
	SectorSize int
	// Time is every inode's timestamp; zero means the Unix epoch.
	Time time.Time
	// Features is the feature set; the zero value means LTS618. Use
	// ForConfig to get the set of a Talos release.
	Features *Features
}

func (o Options) withDefaults() (Options, error) {
	if o.Label == "" {
		o.Label = Label
	}
	if len(o.Label) > 12 {
		return o, fmt.Errorf("%w: label %q is longer than 12 bytes", ErrInvalid, o.Label)
	}
	if o.UUID == nil {
		u := disk.GUIDFromLabel(o.Label)
		o.UUID = &u
	}
	if o.SectorSize == 0 {
		o.SectorSize = 512
	}
	if o.SectorSize != 512 && o.SectorSize != 4096 {
		return o, fmt.Errorf("%w: sector size %d (want 512 or 4096)", ErrInvalid, o.SectorSize)
	}
	if o.Time.IsZero() {
		o.Time = time.Unix(0, 0)
	}
	if o.Features == nil {
		f := LTS618
		o.Features = &f
	}
	if !o.Features.Bigtime {
		if s := o.Time.Unix(); s < -1<<31 || s >= 1<<31 {
			return o, fmt.Errorf("%w: time %v needs bigtime", ErrInvalid, o.Time)
		}
	} else if s := o.Time.Unix(); s < -1<<31 {
		return o, fmt.Errorf("%w: time %v is before 1901", ErrInvalid, o.Time)
	}
	return o, nil
}

// Write formats [0, size) of w as an XFS file system holding files and
// writes their contents. Only metadata blocks and file data are written
// (all-zero 4 MiB chunks of file data are skipped too): w must read as
// zeros everywhere else, as a freshly truncated (sparse) file or a hole
// punched partition does. Nothing is written when the input is invalid or
// does not fit. On a later error (a file that cannot be read or has the
// wrong size) w holds garbage and the caller discards it.
func Write(ctx context.Context, w io.WriterAt, size int64, files []File, opts Options) error {
	p, err := NewPlan(size, files, opts)
	if err != nil {
		return err
	}
	return p.Write(ctx, w)
}

// Build writes a standalone image of the given size into out: truncated to
// zero, then to size (sparse), then formatted by Write.
func Build(ctx context.Context, out *os.File, size int64, files []File, opts Options) error {
	p, err := NewPlan(size, files, opts)
	if err != nil {
		return err
	}
	if err := out.Truncate(0); err != nil {
		return fmt.Errorf("xfs: truncating output: %w", err)
	}
	if err := out.Truncate(size); err != nil {
		return fmt.Errorf("xfs: sizing output to %d bytes: %w", size, err)
	}
	return p.Write(ctx, out)
}

// Content returns disk.Content that formats the partition in place. The
// partition's sector size is used unless opts.SectorSize is set.
func Content(files []File, opts Options) disk.Content {
	return disk.ContentFunc(func(ctx context.Context, t disk.Target) error {
		o := opts
		if o.SectorSize == 0 {
			o.SectorSize = t.SectorSize
		}
		return Write(ctx, t, t.Size, files, o)
	})
}

// Partition returns the BOOT partition of a GRUB or dual-boot disk image:
// named and labelled opts.Label (default BOOT), a Linux data partition of
// size bytes (BootSize or LegacyBootSize), formatted by Content.
func Partition(size int64, files []File, opts Options) disk.Partition {
	name := opts.Label
	if name == "" {
		name = Label
	}
	return disk.Partition{Name: name, Type: disk.TypeLinuxData, Size: size, Content: Content(files, opts)}
}

// cleanPath validates and normalises a file path into its components.
func cleanPath(p string) ([]string, error) {
	for len(p) > 0 && p[0] == '/' {
		p = p[1:]
	}
	if p == "" {
		return nil, fmt.Errorf("%w: empty path", ErrInvalid)
	}
	if path.Clean(p) != p {
		return nil, fmt.Errorf("%w: path %q is not clean", ErrInvalid, p)
	}
	var parts []string
	for len(p) > 0 {
		i := 0
		for i < len(p) && p[i] != '/' {
			i++
		}
		name := p[:i]
		switch {
		case name == "." || name == "..":
			return nil, fmt.Errorf("%w: path %q has a %q component", ErrInvalid, p, name)
		case len(name) > MaxNameLen:
			return nil, fmt.Errorf("%w: name %q… in %q is %d bytes (max %d)", ErrInvalid, name[:16], p, len(name), MaxNameLen)
		}
		for j := 0; j < len(name); j++ {
			if name[j] == 0 {
				return nil, fmt.Errorf("%w: path %q contains a NUL byte", ErrInvalid, p)
			}
		}
		parts = append(parts, name)
		if i < len(p) {
			i++
		}
		p = p[i:]
	}
	return parts, nil
}
