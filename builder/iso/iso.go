// Package iso writes kiln's bootable Talos ISO in pure Go
// (github.com/diskfs/go-diskfs), the equivalent of the Talos imager's
// sd-boot `xorrisofs` invocation and of its dual-boot `grub-mkrescue` one
// (talos-formats.md §3.4).
//
// Layout of the image (512-byte sectors, 2048-byte ISO blocks), that of
// Talos's `xorrisofs ... -partition_cyl_align all -partition_offset 16
// -iso_mbr_part_type 0x83 -append_partition 2 0xef efiboot.img`:
//
//	LBA 0           MBR only (no GPT, no boot code, signature 0), cylinders of
//	                64 heads x 32 sectors: p1 0x83 from LBA 64 (block 16) to the
//	                ESP, p2 0xEF = the ESP rounded up to 1 MiB
//	block 16..18    whole-device volume descriptors: PVD (volume space = the
//	                whole image), El Torito boot record, terminator
//	block 32..33    partition 1's volume descriptors (its block 16): PVD whose
//	                volume space is partition 1, terminator
//	block 35..      go-diskfs's ISO9660 + Rock Ridge volume (no Joliet), every
//	                address relative to partition 1: directories, path tables,
//	                the El Torito catalog /boot.catalog, file data; /imagecache/
//	                always present
//	after it        the whole-device copy of the directories and path tables
//	                (addresses absolute; file data shared)
//	1 MiB-aligned   the ESP image (esp.Build): El Torito image (one EFI
//	                no-emulation entry) and partition 2; the image size is a
//	                multiple of 1 MiB
//
// With Params.BIOS the image is Talos's dual-boot ISO instead, the layout
// of its grub-mkrescue call (hybrid.go; see hybrid.go here): the same
// volume and ESP, a BIOS El Torito entry (GRUB's i386-pc-eltorito image,
// boot info table patched) before the EFI one, GRUB's boot_hybrid.img as
// the MBR's boot code pointed at that image, a protective MBR and a GPT
// (ISO9660, Appended2 = the ESP, Gap1 = xorriso's 300 KiB padding) in
// place of the MBR partitions, and Rock Ridge modes and owners as
// mkisofs -r gives them. MkrescueBIOS gives what grub-mkrescue adds to the
// tree. Talos's GRUB-only ISO is the same layout with GRUB's EFI image
// (MkrescueEFI) in place of systemd-boot in the ESP, which is then a 2.88 MB
// FAT12 image as grub-mkrescue's efi.img (Mkrescue.FATSize), appended
// rather than a visible /efi.img, and without grub-mkrescue's HFS+ and
// Apple partition map for Macs.
//
// A CD-ROM boot reads the El Torito catalog; a USB stick (dd of the file)
// boots through MBR partition 2 (dual-boot: GPT partition 2 under UEFI,
// the MBR's GRUB under BIOS). Partition 1 alone is a mountable ISO9660
// volume (blkid finds iso9660 TALOS_<VERSION> on it), as on Talos's ISO.
// Volume set id Label(version), preparer and El Torito id empty, root
// directory mode 0755, as xorriso writes them.
//
// go-diskfs defects worked around (go-diskfs-findings.md): Joliet is never
// enabled (it corrupts subdirectories and moves the boot record); files of
// 4 GiB or more are refused (go-diskfs truncates them silently); root names
// of 128 bytes or more are refused (they corrupt the Rock Ridge tree);
// DeepDirectories is on; Finalize deletes its workspace, so it gets a private
// staging directory, removed on every path; go-diskfs copies file data from
// that directory in 2 KiB pieces, so it gets placeholders of at most one
// byte, the data is laid out again with the real sizes and the bytes are
// written at each file's extent (content.go); go-diskfs cannot point an El
// Torito entry outside the file system, so the entry is made for a one-block
// hidden placeholder and patched afterwards; and go-diskfs takes every time
// from the clock or the staged files, so a final pass (normalize.go) rewrites
// the volume descriptor dates, every directory record date and every Rock
// Ridge TF time to Params.ModTime: equal inputs give byte-identical images;
// go-diskfs gives several names of one directory that need a Rock Ridge
// continuation area (about 120 bytes or more) the same one, so such a tree
// is refused (ErrInvalidPath); go-diskfs writes from the start of its
// backend only, so it gets a backend.Sub at partition 1; its preparer id
// (its URL), El Torito id and /boot.catalog record are rewritten as
// xorriso's.
package iso

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"
	"unicode"

	"github.com/diskfs/go-diskfs/backend"
	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/iso9660"

	"github.com/kiln-dev/kiln/builder/grub"
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
	// Source, if set, is a local file with the content, never modified.
	// Its bytes are written once, at the file's extent (copy_file_range
	// where the kernel can). When it can be hard linked from TempDir the
	// ISO records its mode, owner and link count (plus one), as if it had
	// been linked into the tree; otherwise mode 0644 and the process's
	// owner.
	Source string
	// Open yields the content when Source is empty; Write closes it and
	// reads it once. An *os.File, or a section of one (io.SectionReader),
	// is copied in the kernel where it can.
	Open func() (io.ReadCloser, error)
	// WriteAt, set instead of Source and Open, writes the content, exactly
	// Size bytes, at offset off of out, where the file's extent is: a
	// file assembled from pieces (a UKI) is written once, at its place,
	// not aside to be copied in. Write calls it before BuildESP, which may
	// then copy the bytes from there.
	WriteAt func(ctx context.Context, out *os.File, off int64) error
	// Mode is the permission bits recorded for a file given by Open
	// (default 0644).
	Mode os.FileMode
}

// Params describe one ISO.
type Params struct {
	// VolumeID is the ISO9660 volume identifier, e.g. VolumeID("v1.13.0").
	VolumeID string
	// VolumeSetID is the volume set identifier, e.g. Label("v1.13.0");
	// empty leaves it blank. At most 128 printable ASCII characters.
	VolumeSetID string
	// Files is the ISO tree. Directories are created as needed; the
	// directory imagecache/ always exists.
	Files []File
	// ESP is the path of the FAT ESP image (builder/esp); its size must be
	// a multiple of 512 bytes.
	ESP string
	// BuildESP, set instead of ESP, builds the ESP image in place: ESPSize
	// bytes (a positive multiple of 512) at offset of out, all zero when
	// it is called, e.g. with esp.BuildAt. This spares writing the image
	// to a file and copying it in. Every file of the tree is written when
	// it is called, so it may copy a file's bytes from its extent.
	BuildESP func(ctx context.Context, out *os.File, offset, size int64) error
	// ESPSize is the size of the image BuildESP builds.
	ESPSize int64
	// ModTime is written as every time stamp of the image. The zero value
	// means 1980-01-01 00:00:00 UTC.
	ModTime time.Time
	// Dirs are directories to create even if no file is in them (e.g.
	// grub-mkrescue's boot/grub/roms).
	Dirs []string
	// BIOS, if set, makes the ISO Talos's dual-boot one (grub-mkrescue):
	// a BIOS El Torito entry before the EFI one, boot_hybrid.img in the MBR,
	// the appended ESP as a GPT partition, and Rock Ridge ownership and
	// modes as mkisofs -r gives them.
	BIOS *BIOS
	// TempDir is the parent of the private staging directory (default
	// os.TempDir()), which holds only files of at most one byte. Whether it is
	// on the file system of the Source files decides their recorded
	// metadata (see File.Source), not the cost of their bytes.
	TempDir string
}

// Layout reports where the parts of a written image are.
type Layout struct {
	Size     int64 // bytes: a multiple of 1 MiB, or with BIOS a multiple of 2 KiB (GPT tail)
	ISOSize  int64 // bytes of the ISO9660 structures and data (from 0)
	ESPStart int64 // byte offset of the ESP (partition 2, El Torito image); partition 1 ends here
	ESPSize  int64
	// BIOSImageLBA is the absolute 2 KiB block of the BIOS El Torito image
	// (0 without BIOS).
	BIOSImageLBA uint32
}

// Label returns the volume set id the Talos imager gives an ISO of
// talosVersion (pkg/imager/iso Label, non-SecureBoot): "Talos-v1.13.0".
func Label(talosVersion string) string { return "Talos-" + talosVersion }

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
	var biosImg []byte
	if p.BIOS != nil {
		biosImg = bytes.Clone(p.BIOS.Image)
		p.Files = append(p.Files[:len(p.Files):len(p.Files)], File{Path: p.BIOS.ImagePath, Size: int64(len(biosImg)),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(biosImg)), nil }})
		if err := validateFiles(p.Files); err != nil {
			return Layout{}, err
		}
	}
	espSize := p.ESPSize
	if p.ESP != "" {
		espInfo, err := os.Stat(p.ESP)
		if err != nil {
			return Layout{}, fmt.Errorf("iso: ESP: %w", err)
		}
		espSize = espInfo.Size()
	}
	if espSize <= 0 || espSize%sectorSize != 0 {
		return Layout{}, fmt.Errorf("iso: ESP %s is %d bytes, not a positive multiple of %d", p.ESP, espSize, sectorSize)
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
	// The staging directory's mode becomes the Rock Ridge mode of the root
	// directory; MkdirTemp's 0700 would shut non-root users out of the
	// mounted ISO.
	if err := os.Chmod(ws, 0o755); err != nil {
		return Layout{}, fmt.Errorf("iso: staging directory: %w", err)
	}

	side, err := os.MkdirTemp(tmp, ".kiln-iso-links-")
	if err != nil {
		return Layout{}, fmt.Errorf("iso: staging directory: %w", err)
	}
	defer os.RemoveAll(side)
	staged, err := stage(ctx, ws, side, p.Files, p.Dirs)
	if err != nil {
		return Layout{}, err
	}
	if err := ctx.Err(); err != nil {
		return Layout{}, err
	}

	if err := out.Truncate(0); err != nil {
		return Layout{}, fmt.Errorf("iso: %w", err)
	}
	base := int64(partOffset) * blockSize
	fsys, err := iso9660.Create(sparseStorage{backend.Sub(file.New(out, false), base, 0), &sparseWrites{}}, 0, 0, blockSize, ws)
	if err != nil {
		return Layout{}, fmt.Errorf("iso: create: %w", err)
	}
	err = fsys.Finalize(iso9660.FinalizeOptions{
		RockRidge:        true,
		Joliet:           false,
		DeepDirectories:  true,
		VolumeIdentifier: p.VolumeID,
		ElTorito: &iso9660.ElTorito{
			BootCatalog: "/boot.catalog", // visible, as xorrisofs leaves it
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

	vd, err := readVolumeDescriptors(out, base)
	if err != nil {
		return Layout{}, err
	}
	recs, err := normalize(out, vd, p.ModTime, p.BIOS != nil)
	if err != nil {
		return Layout{}, err
	}
	extents, err := relayout(out, vd, recs, staged)
	if err != nil {
		return Layout{}, err
	}
	var biosLBA uint32
	if p.BIOS != nil {
		biosLBA = extents[p.BIOS.ImagePath].lba + partOffset
		if err := grub.PatchElToritoImage(biosImg, biosLBA, 16); err != nil {
			return Layout{}, fmt.Errorf("iso: %w", err)
		}
	}
	if err := writeContents(ctx, out, base, staged, extents); err != nil {
		return Layout{}, err
	}
	pvd := make([]byte, blockSize)
	if _, err := out.ReadAt(pvd, base+vd.pvdBlock*blockSize); err != nil {
		return Layout{}, fmt.Errorf("iso: read PVD: %w", err)
	}
	setIdentifier(pvd[190:318], p.VolumeSetID)
	setIdentifier(pvd[446:574], "") // preparer: go-diskfs writes its URL

	// The whole-device directory tree goes right after the volume.
	treeAt := uint32(partOffset) + vd.volumeBlocks
	dev, err := writeDeviceTree(out, vd, pvd, treeAt)
	if err != nil {
		return Layout{}, err
	}
	first, end := metaRegion(pvd)
	l := Layout{ISOSize: int64(treeAt+end-first) * blockSize, ESPSize: espSize, BIOSImageLBA: biosLBA}
	l.ESPStart = roundUp(l.ISOSize, mib)
	l.Size = l.ESPStart + roundUp(l.ESPSize, mib)
	if p.BIOS != nil {
		l.Size += tailSize
	}

	if p.ESP != "" {
		if err := appendESP(ctx, out, p.ESP, l); err != nil {
			return Layout{}, err
		}
	}
	if err := out.Truncate(l.Size); err != nil {
		return Layout{}, fmt.Errorf("iso: %w", err)
	}
	if p.ESP == "" {
		if err := p.BuildESP(ctx, out, l.ESPStart, l.ESPSize); err != nil {
			return Layout{}, fmt.Errorf("iso: build ESP: %w", err)
		}
	}
	if p.BIOS != nil {
		err = writeBIOSCatalog(out, vd, biosLBA, l)
	} else {
		err = patchElTorito(out, vd, l)
	}
	if err != nil {
		return Layout{}, err
	}
	if err := writeDescriptors(out, vd, pvd, dev, l); err != nil {
		return Layout{}, err
	}
	if p.BIOS != nil {
		err = writeHybridGPT(out, p.BIOS, biosLBA, l, p.ModTime)
	} else {
		err = writeMBR(out, l)
	}
	if err != nil {
		return Layout{}, err
	}
	return l, nil
}

// setIdentifier writes an ISO9660 identifier field: s, padded with spaces.
func setIdentifier(field []byte, s string) {
	for i := range field {
		field[i] = ' '
	}
	copy(field, s)
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
	if len(p.VolumeSetID) > 128 {
		return fmt.Errorf("%w: volume set id %q longer than 128 bytes", ErrInvalidVolumeID, p.VolumeSetID)
	}
	for _, r := range p.VolumeSetID {
		if r < ' ' || r > '~' {
			return fmt.Errorf("%w: volume set id %q has %q, not printable ASCII", ErrInvalidVolumeID, p.VolumeSetID, r)
		}
	}
	if err := validateBIOS(p.BIOS, p.Files); err != nil {
		return err
	}
	if (p.ESP == "") == (p.BuildESP == nil) {
		return errors.New("iso: want exactly one of ESP and BuildESP")
	}
	for _, d := range p.Dirs {
		if d == "" || path.Clean(d) != d || path.IsAbs(d) || d == "." || d == ".." || strings.HasPrefix(d, "../") || len(d) > 1024 {
			return fmt.Errorf("%w: directory %q", ErrInvalidPath, d)
		}
		for _, f := range p.Files {
			if f.Path == d || strings.HasPrefix(d, f.Path+"/") {
				return fmt.Errorf("%w: %q is both a file and a directory", ErrInvalidPath, f.Path)
			}
		}
	}
	return validateFiles(p.Files)
}

func validateFiles(files []File) error {
	seen := map[string]bool{}
	for _, f := range files {
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
		if n := btoi(f.Source != "") + btoi(f.Open != nil) + btoi(f.WriteAt != nil); n != 1 {
			return fmt.Errorf("iso: %s: want exactly one of Source, Open and WriteAt, have %d", c, n)
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

func appendESP(ctx context.Context, out *os.File, espPath string, l Layout) error {
	src, err := os.Open(espPath)
	if err != nil {
		return fmt.Errorf("iso: ESP: %w", err)
	}
	defer src.Close()
	n, err := copyFileRange(ctx, out, l.ESPStart, src, l.ESPSize)
	if err != nil {
		return fmt.Errorf("iso: append ESP: %w", err)
	}
	var one [1]byte
	if m, _ := src.Read(one[:]); m != 0 {
		n += int64(m)
	}
	if n != l.ESPSize {
		return fmt.Errorf("iso: ESP changed while appending: %d bytes, expected %d", n, l.ESPSize)
	}
	return nil
}

func roundUp(n, m int64) int64 { return (n + m - 1) / m * m }

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
