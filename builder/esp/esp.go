package esp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/fat12"
	"github.com/diskfs/go-diskfs/filesystem/fat16"
	"github.com/diskfs/go-diskfs/filesystem/fat32"
)

const (
	// MiB is 1 MiB in bytes.
	MiB = int64(1) << 20

	// MaxFileSize is the largest file a FAT file system can hold (4 GiB - 1).
	MaxFileSize = int64(1)<<32 - 1

	// MinFAT32Size4K is the smallest image with 4096-byte sectors that
	// go-diskfs formats as a valid FAT32 (at least 65525 clusters of 4 KiB).
	MinFAT32Size4K = 258 * MiB

	// DefaultSerial is the volume serial number written when Options.Serial
	// is zero (the value of mkfs.vfat --invariant).
	DefaultSerial = 0x1234ABCD

	copyChunk = 4 << 20
)

var (
	// ErrFileTooLarge is returned for a file of 4 GiB or more.
	ErrFileTooLarge = errors.New("esp: file too large for FAT (4 GiB or more)")
	// ErrTooSmall is returned when the requested size cannot hold the files
	// or cannot be formatted with the requested sector size.
	ErrTooSmall = errors.New("esp: image too small")
	// ErrInvalidPath is returned for an empty, absolute-escaping or duplicate path.
	ErrInvalidPath = errors.New("esp: invalid path")
)

// File is one file to place in the ESP.
type File struct {
	// Path inside the ESP, slash-separated, e.g. "EFI/BOOT/BOOTX64.EFI".
	// A leading "/" is ignored. Parent directories are created.
	Path string
	// Size is the exact number of bytes Open yields; a mismatch is an error.
	Size int64
	// Open returns the content; Build closes it. A kcopy.SectionCloser of
	// a file (e.g. a UKI already written elsewhere in the output) is
	// copied in the kernel.
	Open func() (io.ReadCloser, error)
	// WriteAt, set instead of Open, writes the content, exactly Size
	// bytes, at offset off of out: a file assembled from pieces (a UKI)
	// is written once, straight into its clusters. go-diskfs gives a file
	// of a fresh file system contiguous clusters; should it not, the
	// content is written to a scratch file in os.TempDir() and copied
	// from there.
	WriteAt func(ctx context.Context, out *os.File, off int64) error
	// ReadOnly sets the FAT read-only attribute (e.g. loader/random-seed).
	ReadOnly bool
}

// Options tune the image.
type Options struct {
	// Label is the volume label (at most 11 characters); default "EFI".
	Label string
	// SectorSize is 512 (default) or 4096.
	SectorSize int
	// MinSize is the smallest image Build makes (Build only).
	MinSize int64
	// ModTime is written as the time of every entry. The zero value writes
	// 1980-01-01 00:00:00, the FAT epoch, so images are reproducible.
	ModTime time.Time
	// Serial is the volume serial number; zero means DefaultSerial.
	Serial uint32
}

// Type is the FAT variant written.
type Type string

// FAT variants.
const (
	FAT12 Type = "FAT12"
	FAT16 Type = "FAT16"
	FAT32 Type = "FAT32"
)

// Result describes a built image.
type Result struct {
	Size     int64
	Type     Type
	Clusters uint32
}

func (o *Options) normalize() error {
	if o.Label == "" {
		o.Label = "EFI"
	}
	if len(o.Label) > 11 {
		return fmt.Errorf("esp: label %q longer than 11 characters", o.Label)
	}
	switch o.SectorSize {
	case 0:
		o.SectorSize = 512
	case 512, 4096:
	default:
		return fmt.Errorf("esp: sector size %d: want 512 or 4096", o.SectorSize)
	}
	if o.Serial == 0 {
		o.Serial = DefaultSerial
	}
	return nil
}

// RequiredSize returns the size Build would make for files and opts.
func RequiredSize(files []File, opts Options) (int64, error) {
	if err := opts.normalize(); err != nil {
		return 0, err
	}
	if _, _, err := plan(files); err != nil {
		return 0, err
	}
	return requiredSize(files, opts), nil
}

func requiredSize(files []File, opts Options) int64 {
	size := 10 * MiB
	for _, f := range files {
		size += roundUp(f.Size, MiB)
	}
	// Two FATs of 4 bytes per 512-byte cluster in the worst case.
	size += size / 64
	size = roundUp(size, MiB)
	if size < opts.MinSize {
		size = roundUp(opts.MinSize, int64(opts.SectorSize))
	}
	if opts.SectorSize == 4096 && size < MinFAT32Size4K {
		size = MinFAT32Size4K
	}
	return size
}

// Build writes a standalone ESP image to out, starting at offset 0, and
// truncates out to the image size: max(opts.MinSize, RequiredSize).
// On error out's content is unspecified; the caller owns (and removes) it.
func Build(ctx context.Context, out *os.File, files []File, opts Options) (Result, error) {
	if err := opts.normalize(); err != nil {
		return Result{}, err
	}
	if _, _, err := plan(files); err != nil {
		return Result{}, err
	}
	size := requiredSize(files, opts)
	if err := out.Truncate(0); err != nil {
		return Result{}, fmt.Errorf("esp: %w", err)
	}
	if err := out.Truncate(size); err != nil {
		return Result{}, fmt.Errorf("esp: %w", err)
	}
	return BuildAt(ctx, out, 0, size, files, opts)
}

// BuildAt formats exactly [offset, offset+size) of out (e.g. the EFI
// partition of a disk image) and copies files into it. opts.MinSize is
// ignored. Bytes outside the range are not touched; out must already be at
// least offset+size long or be extendable.
func BuildAt(ctx context.Context, out *os.File, offset, size int64, files []File, opts Options) (Result, error) {
	if err := opts.normalize(); err != nil {
		return Result{}, err
	}
	dirs, sorted, err := plan(files)
	if err != nil {
		return Result{}, err
	}
	if offset < 0 || offset%int64(opts.SectorSize) != 0 || size%int64(opts.SectorSize) != 0 {
		return Result{}, fmt.Errorf("esp: offset %d and size %d must be multiples of the %d-byte sector", offset, size, opts.SectorSize)
	}
	if opts.SectorSize == 4096 && size < MinFAT32Size4K {
		return Result{}, fmt.Errorf("%w: %d bytes with 4096-byte sectors: go-diskfs only formats FAT32 there, which needs at least %d bytes for 65525 clusters", ErrTooSmall, size, MinFAT32Size4K)
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	mw := &markWrites{}
	fsys, typ, err := format(markStorage{file.New(out, false), mw}, out, offset, size, opts)
	if err != nil {
		return Result{}, err
	}
	for _, d := range dirs {
		if err := fsys.Mkdir("/" + d); err != nil {
			return Result{}, fmt.Errorf("esp: mkdir %s: %w", d, err)
		}
	}
	mark, unmap := marker(sorted)
	defer unmap()
	for _, f := range sorted {
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		if err := copyFile(ctx, fsys, mw, mark, out, f); err != nil {
			// go-diskfs says "no space left on device" as text when the FAT
			// is full; the disk under out being full is a real ENOSPC.
			if !errors.Is(err, syscall.ENOSPC) && strings.Contains(err.Error(), "no space left") {
				return Result{}, fmt.Errorf("%w: %d bytes cannot hold the files: %v", ErrTooSmall, size, err)
			}
			return Result{}, err
		}
	}
	clusters, err := fixup(out, offset, opts)
	if err != nil {
		return Result{}, err
	}
	return Result{Size: size, Type: typ, Clusters: clusters}, nil
}

// format creates the file system, choosing the FAT variant by cluster count.
func format(b backend.Storage, out *os.File, offset, size int64, opts Options) (filesystem.FileSystem, Type, error) {
	ss := int64(opts.SectorSize)
	fs32, err32 := fat32.Create(b, size, offset, ss, opts.Label, true)
	if errors.Is(err32, syscall.ENOSPC) {
		// The disk holding out is full: no FAT variant would fit either,
		// and the caller must see ENOSPC to say so.
		return nil, "", fmt.Errorf("esp: format: %w", err32)
	}
	if err32 == nil {
		bpb, err := readBPB(out, offset)
		if err != nil {
			return nil, "", err
		}
		if bpb.clusters >= 65525 {
			return fs32, FAT32, nil
		}
		if opts.SectorSize != 512 {
			return nil, "", fmt.Errorf("%w: FAT32 of %d bytes has only %d clusters and go-diskfs has no FAT16 with %d-byte sectors", ErrTooSmall, size, bpb.clusters, opts.SectorSize)
		}
		// The FAT32 attempt wrote its FATs and a root directory holding a
		// volume label stamped with the clock; FAT16 formats over only its
		// own start, so the rest would stay behind in free clusters and
		// make equal inputs give different bytes.
		if err := zeroRange(out, offset, bpb.dataOffset+int64(bpb.rootCluster-1)*bpb.bytesPerCluster); err != nil {
			return nil, "", err
		}
	} else if opts.SectorSize != 512 {
		return nil, "", fmt.Errorf("esp: format FAT32: %w", err32)
	}
	fs16, err16 := fat16.Create(b, size, offset, ss, opts.Label, true)
	if err16 == nil {
		return fs16, FAT16, nil
	}
	fs12, err12 := fat12.Create(b, size, offset, ss, opts.Label, true)
	if err12 == nil {
		return fs12, FAT12, nil
	}
	return nil, "", fmt.Errorf("esp: cannot format %d bytes: %w", size,
		errors.Join(fmt.Errorf("FAT32: %w", err32), fmt.Errorf("FAT16: %w", err16), fmt.Errorf("FAT12: %w", err12)))
}

// zeroRange writes n zero bytes at off of f.
func zeroRange(f *os.File, off, n int64) error {
	zeros := make([]byte, min(n, 1<<20))
	for n > 0 {
		k := min(n, int64(len(zeros)))
		if _, err := f.WriteAt(zeros[:k], off); err != nil {
			return fmt.Errorf("esp: clear the FAT32 attempt: %w", err)
		}
		off, n = off+k, n-k
	}
	return nil
}

// copyFile creates f through go-diskfs with mark as its content, then
// writes its bytes where go-diskfs put them.
func copyFile(ctx context.Context, fsys filesystem.FileSystem, mw *markWrites, mark []byte, out *os.File, f File) error {
	p := "/" + f.Path
	dst, err := fsys.OpenFile(p, os.O_CREATE|os.O_RDWR)
	if err != nil {
		return fmt.Errorf("esp: create %s: %w", f.Path, err)
	}
	defer dst.Close()
	mw.mark, mw.runs = mark, mw.runs[:0]
	for mw.base = 0; mw.base < f.Size; mw.base += int64(len(mark)) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := dst.Write(mark[:min(int64(len(mark)), f.Size-mw.base)]); err != nil {
			return fmt.Errorf("esp: write %s: %w", f.Path, err)
		}
	}
	mw.mark = nil
	if err := copyContent(ctx, out, f, mw.runs); err != nil {
		return err
	}
	if f.ReadOnly {
		ro, ok := dst.(interface{ SetReadOnly(bool) error })
		if !ok {
			return fmt.Errorf("esp: %s: go-diskfs file cannot be made read-only", f.Path)
		}
		if err := ro.SetReadOnly(true); err != nil {
			return fmt.Errorf("esp: set read-only %s: %w", f.Path, err)
		}
	}
	return nil
}

// plan validates files and returns the directories to create (parents
// first) and the files sorted by path.
func plan(files []File) (dirs []string, sorted []File, err error) {
	seen := map[string]bool{}
	dirSet := map[string]bool{}
	sorted = make([]File, 0, len(files))
	for _, f := range files {
		p := strings.TrimPrefix(f.Path, "/")
		if p == "" || path.Clean(p) != p || strings.HasPrefix(p, "../") || p == ".." || p == "." {
			return nil, nil, fmt.Errorf("%w: %q", ErrInvalidPath, f.Path)
		}
		key := strings.ToUpper(p) // FAT names are case-insensitive
		if seen[key] {
			return nil, nil, fmt.Errorf("%w: %q given twice", ErrInvalidPath, f.Path)
		}
		seen[key] = true
		if f.Size < 0 {
			return nil, nil, fmt.Errorf("esp: %s: negative size", f.Path)
		}
		if f.Size > MaxFileSize {
			return nil, nil, fmt.Errorf("%w: %s is %d bytes", ErrFileTooLarge, f.Path, f.Size)
		}
		if (f.Open == nil) == (f.WriteAt == nil) {
			return nil, nil, fmt.Errorf("esp: %s: want exactly one of Open and WriteAt", f.Path)
		}
		for d := path.Dir(p); d != "."; d = path.Dir(d) {
			dirSet[strings.ToUpper(d)] = true
		}
		f.Path = p
		sorted = append(sorted, f)
	}
	for _, f := range sorted {
		if dirSet[strings.ToUpper(f.Path)] {
			return nil, nil, fmt.Errorf("%w: %q is both a file and a directory", ErrInvalidPath, f.Path)
		}
	}
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Path < sorted[j].Path })
	// Keep the caller's spelling of directory names.
	dirNames := map[string]string{}
	for _, f := range sorted {
		for d := path.Dir(f.Path); d != "."; d = path.Dir(d) {
			if _, ok := dirNames[strings.ToUpper(d)]; !ok {
				dirNames[strings.ToUpper(d)] = d
			}
		}
	}
	for _, d := range dirNames {
		dirs = append(dirs, d)
	}
	sort.Strings(dirs) // a parent sorts before its children
	return dirs, sorted, nil
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }
