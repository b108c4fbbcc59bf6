// Package iso writes kiln's bootable Talos ISO in pure Go
// (github.com/diskfs/go-diskfs), the equivalent of the Talos imager's
// sd-boot `xorrisofs` invocation (talos-formats.md §3.4).
//
// Layout of the image (512-byte sectors, 2048-byte ISO blocks):
//
//	LBA 0           MBR: p1 0x83 = the ISO9660 volume from LBA 64, p2 0xEF = the ESP,
//	                p3 0xEE over LBA 1..63 (a hybrid MBR, so GPT-aware systems use the GPT)
//	LBA 1..33       primary GPT: 1 "ISO9660" (basic data) and 2 "EFI" (ESP), same extents
//	block 16..      ISO9660 + Rock Ridge (no Joliet): volume descriptors, tree, files,
//	                /imagecache/ always present; El Torito catalog (hidden) with one
//	                EFI no-emulation entry whose image is the appended ESP
//	1 MiB-aligned   the ESP image (esp.Build), El Torito image and partition 2
//	last 33 LBAs    backup GPT; the image size is a multiple of 1 MiB
//
// A CD-ROM boot reads the El Torito catalog; a USB stick (dd of the file)
// boots through the GPT (or the MBR) partition 2. Unlike xorriso's
// -partition_offset 16 there is no second directory tree relative to
// partition 1, so partition 1 alone is not mountable; the whole device is.
//
// go-diskfs defects worked around (go-diskfs-findings.md): Joliet is never
// enabled (it corrupts subdirectories and moves the boot record); files of
// 4 GiB or more are refused (go-diskfs truncates them silently); root names
// of 128 bytes or more are refused (they corrupt the Rock Ridge tree);
// DeepDirectories is on; Finalize deletes its workspace, so it gets a private
// staging directory, removed on every path; go-diskfs cannot point an El
// Torito entry outside the file system, so the entry is made for a one-block
// hidden placeholder and patched afterwards; and go-diskfs takes every time
// from the clock or the staged files, so a final pass (normalize.go) rewrites
// the volume descriptor dates, every directory record date and every Rock
// Ridge TF time to Params.ModTime: equal inputs give byte-identical images.
package iso

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
	"unicode"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/kiln-dev/kiln/internal/iox"
)

const (
	blockSize   = 2048
	sectorSize  = 512
	mib         = int64(1) << 20
	copyChunk   = 4 << 20
	placeholder = "kiln-efi-placeholder.img"

	// MaxFileSize is the largest file go-diskfs writes correctly (no multi-extent files).
	MaxFileSize = int64(1)<<32 - 1
	// MaxRootNameLen is the longest root-directory name that keeps the Rock Ridge tree readable.
	MaxRootNameLen = 127
	// ImageCacheDir is the directory always present on the ISO for the image cache.
	ImageCacheDir = "imagecache"
)

var (
	// ErrFileTooLarge is returned for a file of 4 GiB or more.
	ErrFileTooLarge = errors.New("iso: file too large for ISO9660 without multi-extent (4 GiB or more)")
	// ErrInvalidPath is returned for a path the ISO cannot hold.
	ErrInvalidPath = errors.New("iso: invalid path")
	// ErrInvalidVolumeID is returned for a volume id that is not 1..32 d-characters.
	ErrInvalidVolumeID = errors.New("iso: invalid volume id")
)

// File is one file of the ISO tree.
type File struct {
	// Path in the ISO, slash-separated, e.g. "EFI/Linux/Talos-v1.13.0.efi".
	Path string
	// Size is the exact size of the content.
	Size int64
	// Source, if set, is a local file with the content. It is hardlinked
	// into the staging directory when on the same file system (never
	// modified), else copied.
	Source string
	// Open yields the content when Source is empty; Write closes it.
	Open func() (io.ReadCloser, error)
}

// Params describe one ISO.
type Params struct {
	// VolumeID is the ISO9660 volume identifier, e.g. VolumeID("v1.13.0").
	VolumeID string
	// Files is the ISO tree. Directories are created as needed; the
	// directory imagecache/ always exists.
	Files []File
	// ESP is the path of the FAT ESP image (builder/esp); its size must be
	// a multiple of 512 bytes.
	ESP string
	// ModTime is written as every time stamp of the image. The zero value
	// means 1980-01-01 00:00:00 UTC.
	ModTime time.Time
	// TempDir is the parent of the private staging directory (default
	// os.TempDir()). Put it on the file system of the Source files so they
	// are hardlinked rather than copied.
	TempDir string
}

// Layout reports where the parts of a written image are.
type Layout struct {
	Size     int64 // bytes, a multiple of 1 MiB
	ISOSize  int64 // bytes of the ISO9660 volume proper (from 0)
	ESPStart int64 // byte offset of the ESP (partition 2, El Torito image)
	ESPSize  int64
}

// VolumeID returns the volume id the Talos imager gives an ISO of
// talosVersion: "Talos-<version>" upper-cased, with '-', '_' and '.' mapped
// to '_', other characters dropped, at most 32 characters
// ("v1.13.0" → "TALOS_V1_13_0").
func VolumeID(talosVersion string) string {
	var b strings.Builder
	for _, r := range strings.ToUpper("Talos-" + talosVersion) {
		switch {
		case r == '-' || r == '_' || r == '.':
			b.WriteByte('_')
		case r < unicode.MaxASCII && (unicode.IsUpper(r) || unicode.IsDigit(r)):
			b.WriteRune(r)
		}
		if b.Len() == 32 {
			break
		}
	}
	return b.String()
}

// Write writes the ISO to out from offset 0 and truncates out to its size.
// On error out's content is unspecified: write to a temporary file and
// rename it on success. The staging directory is always removed.
func Write(ctx context.Context, out *os.File, p Params) (Layout, error) {
	if err := validate(p); err != nil {
		return Layout{}, err
	}
	espInfo, err := os.Stat(p.ESP)
	if err != nil {
		return Layout{}, fmt.Errorf("iso: ESP: %w", err)
	}
	if espInfo.Size() == 0 || espInfo.Size()%sectorSize != 0 {
		return Layout{}, fmt.Errorf("iso: ESP %s is %d bytes, not a positive multiple of %d", p.ESP, espInfo.Size(), sectorSize)
	}

	tmp := p.TempDir
	if tmp == "" {
		tmp = os.TempDir()
	}
	ws, err := os.MkdirTemp(tmp, ".kiln-iso-")
	if err != nil {
		return Layout{}, fmt.Errorf("iso: staging directory: %w", err)
	}
	defer os.RemoveAll(ws)

	if err := stage(ctx, ws, p.Files); err != nil {
		return Layout{}, err
	}
	if err := ctx.Err(); err != nil {
		return Layout{}, err
	}

	if err := out.Truncate(0); err != nil {
		return Layout{}, fmt.Errorf("iso: %w", err)
	}
	fsys, err := iso9660.Create(file.New(out, false), 0, 0, blockSize, ws)
	if err != nil {
		return Layout{}, fmt.Errorf("iso: create: %w", err)
	}
	err = fsys.Finalize(iso9660.FinalizeOptions{
		RockRidge:        true,
		Joliet:           false,
		DeepDirectories:  true,
		VolumeIdentifier: p.VolumeID,
		ElTorito: &iso9660.ElTorito{
			BootCatalog:     "/boot.catalog",
			HideBootCatalog: true,
			Entries: []*iso9660.ElToritoEntry{{
				Platform:     iso9660.EFI,
				Emulation:    iso9660.NoEmulation,
				BootFile:     "/" + placeholder,
				HideBootFile: true,
			}},
		},
	})
	if err != nil {
		return Layout{}, fmt.Errorf("iso: finalize: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return Layout{}, err
	}

	vd, err := readVolumeDescriptors(out)
	if err != nil {
		return Layout{}, err
	}
	l := Layout{ISOSize: int64(vd.volumeBlocks) * blockSize, ESPSize: espInfo.Size()}
	l.ESPStart = roundUp(l.ISOSize, mib)
	l.Size = roundUp(l.ESPStart+roundUp(l.ESPSize, blockSize)+33*sectorSize, mib)

	if err := appendESP(ctx, out, p.ESP, l); err != nil {
		return Layout{}, err
	}
	if err := out.Truncate(l.Size); err != nil {
		return Layout{}, fmt.Errorf("iso: %w", err)
	}
	if err := patchElTorito(out, vd, l); err != nil {
		return Layout{}, err
	}
	if err := normalize(out, vd, l, p.ModTime); err != nil {
		return Layout{}, err
	}
	if err := writeSystemArea(out, l, p.VolumeID); err != nil {
		return Layout{}, err
	}
	return l, nil
}

func validate(p Params) error {
	if len(p.VolumeID) == 0 || len(p.VolumeID) > 32 {
		return fmt.Errorf("%w: %q", ErrInvalidVolumeID, p.VolumeID)
	}
	for _, r := range p.VolumeID {
		if !(r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_') {
			return fmt.Errorf("%w: %q has %q, not a d-character", ErrInvalidVolumeID, p.VolumeID, r)
		}
	}
	if p.ESP == "" {
		return errors.New("iso: no ESP image")
	}
	seen := map[string]bool{}
	for _, f := range p.Files {
		c := f.Path
		if c == "" || path.Clean(c) != c || path.IsAbs(c) || c == "." || c == ".." || strings.HasPrefix(c, "../") {
			return fmt.Errorf("%w: %q", ErrInvalidPath, f.Path)
		}
		if seen[c] {
			return fmt.Errorf("%w: %q given twice", ErrInvalidPath, c)
		}
		seen[c] = true
		if c == placeholder || c == "boot.catalog" || c == ImageCacheDir {
			return fmt.Errorf("%w: %q is reserved", ErrInvalidPath, c)
		}
		parts := strings.Split(c, "/")
		if len(parts[0]) > MaxRootNameLen {
			return fmt.Errorf("%w: root name %q is %d bytes (at most %d: longer ones corrupt go-diskfs's Rock Ridge tree)", ErrInvalidPath, parts[0], len(parts[0]), MaxRootNameLen)
		}
		for _, part := range parts {
			if len(part) > 255 {
				return fmt.Errorf("%w: %q: component longer than 255 bytes", ErrInvalidPath, c)
			}
		}
		if f.Size < 0 {
			return fmt.Errorf("iso: %s: negative size", c)
		}
		if f.Size > MaxFileSize {
			return fmt.Errorf("%w: %s is %d bytes", ErrFileTooLarge, c, f.Size)
		}
		if f.Source == "" && f.Open == nil {
			return fmt.Errorf("iso: %s: neither Source nor Open", c)
		}
	}
	for c := range seen {
		for d := path.Dir(c); d != "."; d = path.Dir(d) {
			if seen[d] {
				return fmt.Errorf("%w: %q is both a file and a directory", ErrInvalidPath, d)
			}
		}
	}
	return nil
}

// stage lays the tree out in ws: hardlinks where possible, else copies.
func stage(ctx context.Context, ws string, files []File) error {
	if err := os.Mkdir(filepath.Join(ws, ImageCacheDir), 0o755); err != nil {
		return fmt.Errorf("iso: stage: %w", err)
	}
	if err := os.WriteFile(filepath.Join(ws, placeholder), make([]byte, blockSize), 0o444); err != nil {
		return fmt.Errorf("iso: stage: %w", err)
	}
	var buf []byte
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return err
		}
		dst := filepath.Join(ws, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return fmt.Errorf("iso: stage: %w", err)
		}
		if f.Source != "" {
			fi, err := os.Stat(f.Source)
			if err != nil {
				return fmt.Errorf("iso: %s: %w", f.Path, err)
			}
			if !fi.Mode().IsRegular() || fi.Size() != f.Size {
				return fmt.Errorf("iso: %s: source %s is not a regular file of %d bytes", f.Path, f.Source, f.Size)
			}
			if os.Link(f.Source, dst) == nil {
				continue
			}
		}
		if buf == nil {
			buf = make([]byte, copyChunk)
		}
		if err := copyIn(ctx, dst, f, buf); err != nil {
			return err
		}
	}
	return nil
}

func copyIn(ctx context.Context, dst string, f File, buf []byte) (err error) {
	var src io.ReadCloser
	if f.Source != "" {
		src, err = os.Open(f.Source)
	} else {
		src, err = f.Open()
	}
	if err != nil {
		return fmt.Errorf("iso: open %s: %w", f.Path, err)
	}
	defer src.Close()
	w, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return fmt.Errorf("iso: stage %s: %w", f.Path, err)
	}
	defer func() {
		if cerr := w.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("iso: stage %s: %w", f.Path, cerr)
		}
	}()
	n, err := io.CopyBuffer(struct{ io.Writer }{w}, iox.ContextReader(ctx, io.LimitReader(src, f.Size+1)), buf)
	if err != nil {
		return fmt.Errorf("iso: stage %s: %w", f.Path, err)
	}
	if n != f.Size {
		return fmt.Errorf("iso: %s: read %d bytes, declared %d", f.Path, n, f.Size)
	}
	return nil
}

func appendESP(ctx context.Context, out *os.File, espPath string, l Layout) error {
	src, err := os.Open(espPath)
	if err != nil {
		return fmt.Errorf("iso: ESP: %w", err)
	}
	defer src.Close()
	w := io.NewOffsetWriter(out, l.ESPStart)
	n, err := io.CopyBuffer(w, iox.ContextReader(ctx, src), make([]byte, copyChunk))
	if err != nil {
		return fmt.Errorf("iso: append ESP: %w", err)
	}
	if n != l.ESPSize {
		return fmt.Errorf("iso: ESP changed while appending: %d bytes, expected %d", n, l.ESPSize)
	}
	return nil
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }
