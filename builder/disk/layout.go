package disk

import (
	"errors"
	"fmt"
	"io"
	"unicode/utf16"
)

// MiB is 1 << 20 bytes.
const MiB = 1 << 20

// Sizes from Talos (pkg/imager/profile, pkg/machinery/imager/quirks; talos-formats.md §4.1–4.2).
const (
	// MinRAWDiskSize is profile.MinRAWDiskSize (metal default before the boot deltas).
	MinRAWDiskSize = 1246 * MiB
	// SDBootDiskSize is the metal sd-boot disk size of Talos ≥ 1.11:
	// MinRAWDiskSize + GrubBootSize(2000 MiB) - 1000 MiB (metal-arm64 testdata: 2355101696).
	SDBootDiskSize = 2246 * MiB
	// UKIEFISize is the EFI partition size of the sd-boot layout (100 + 1 + 2000 MiB).
	UKIEFISize = 2101 * MiB
	// METASize is the exact size Talos requires of META to find its system disk.
	METASize = 1 * MiB
	// Alignment of partition starts.
	Alignment = 1 * MiB
	// NumEntries is the number of GPT partition entries.
	NumEntries = 128
	entrySize  = 128
)

// Partition names (= Talos labels).
const (
	LabelEFI        = "EFI"
	LabelMETA       = "META"
	LabelIMAGECACHE = "IMAGECACHE"
	diskLabel       = "talos-image-disk"
)

// Partition type GUIDs (Talos internal/pkg/partition/constants.go).
var (
	TypeEFI       = MustParseGUID("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
	TypeLinuxData = MustParseGUID("0fc63daf-8483-4772-8e79-3d69d8477de4")
	TypeBIOSBoot  = MustParseGUID("21686148-6449-6e6f-744e-656564454649")
)

// Bootloader is the boot loader kind of the image, as the schematic/profile names it.
type Bootloader string

// Boot loader kinds. Only sd-boot is supported for disk images for now.
const (
	BootloaderSDBoot   Bootloader = "sd-boot"
	BootloaderGRUB     Bootloader = "grub"
	BootloaderDualBoot Bootloader = "dual-boot"
)

// ErrUnsupported is returned (wrapped) for requests this builder cannot honour
// yet, e.g. GRUB or dual-boot (BIOS) layouts. It is never silently replaced by
// a different image.
var ErrUnsupported = errors.New("not supported yet")

// ErrInvalid is returned (wrapped) for malformed parameters.
var ErrInvalid = errors.New("invalid disk parameters")

// Params describe a disk image.
type Params struct {
	// Bootloader selects the layout; "" means sd-boot. GRUB and dual-boot
	// (which needs the BIOS boot partition) fail with ErrUnsupported.
	Bootloader Bootloader
	// SectorSize is the logical sector size, 512 (default when 0) or 4096
	// (schematic customization.diskImage.sectorSize).
	SectorSize int
	// Size is the total image size in bytes; 0 means SDBootDiskSize. It must be
	// a multiple of the sector size and leave room for the backup GPT.
	Size int64
	// EFISize is the EFI partition size; 0 means UKIEFISize.
	EFISize int64
	// EFI fills the EFI system partition (a FAT filesystem with sd-boot and the
	// UKI). Required by Write; Layout ignores it.
	EFI Content
	// META is the content of the META partition: exactly METASize bytes (e.g.
	// from builder/meta.Partition), or nil for an all-zero (blank) META.
	META io.Reader
	// Extra partitions placed after META in order (e.g. IMAGECACHE, issue 5).
	Extra []Partition
}

// Partition is an extra partition after META.
type Partition struct {
	// Name is the GPT partition name and Talos label (≤ 36 UTF-16 units).
	// Its unique GUID is GUIDFromLabel(Name).
	Name string
	// Type is the partition type GUID; the zero GUID means TypeLinuxData.
	Type GUID
	// Attributes are the GPT attribute bits.
	Attributes uint64
	// Size in bytes, a multiple of the sector size. 0 means "up to the end of
	// the usable area" and is only allowed for the last partition.
	Size int64
	// Content fills the partition; nil leaves it all zeros (holes).
	Content Content
}

// Entry is one partition of a computed layout.
type Entry struct {
	Number     int // 1-based GPT entry index
	Name       string
	Type       GUID
	GUID       GUID
	Attributes uint64
	FirstLBA   uint64
	LastLBA    uint64 // inclusive
	Offset     int64  // byte offset in the image
	Size       int64  // bytes
}

// Table is a computed disk layout.
type Table struct {
	SectorSize     int
	Size           int64
	DiskGUID       GUID
	FirstUsableLBA uint64
	LastUsableLBA  uint64
	Partitions     []Entry
}

// Partition returns the entry named name.
func (t Table) Partition(name string) (Entry, bool) {
	for _, e := range t.Partitions {
		if e.Name == name {
			return e, true
		}
	}
	return Entry{}, false
}

func (t Table) lastLBA() uint64 { return uint64(t.Size/int64(t.SectorSize)) - 1 }

// entrySectors is the number of sectors holding the 128 entries.
func (t Table) entrySectors() uint64 {
	return uint64((NumEntries*entrySize + t.SectorSize - 1) / t.SectorSize)
}

// Layout computes the partition table for p without writing anything.
func Layout(p Params) (Table, error) {
	switch p.Bootloader {
	case "", BootloaderSDBoot:
	case BootloaderGRUB, BootloaderDualBoot:
		return Table{}, fmt.Errorf("disk image with boot loader %q: %w (only sd-boot disk images are built; GRUB/BIOS layouts come later)", p.Bootloader, ErrUnsupported)
	default:
		return Table{}, fmt.Errorf("%w: unknown boot loader %q", ErrInvalid, p.Bootloader)
	}
	t := Table{SectorSize: p.SectorSize, Size: p.Size, DiskGUID: GUIDFromLabel(diskLabel)}
	if t.SectorSize == 0 {
		t.SectorSize = 512
	}
	if t.SectorSize != 512 && t.SectorSize != 4096 {
		return Table{}, fmt.Errorf("%w: sector size %d (want 512 or 4096)", ErrInvalid, p.SectorSize)
	}
	if t.Size == 0 {
		t.Size = SDBootDiskSize
	}
	ss := int64(t.SectorSize)
	if t.Size < 0 || t.Size%ss != 0 {
		return Table{}, fmt.Errorf("%w: size %d is not a positive multiple of the sector size %d", ErrInvalid, t.Size, ss)
	}
	efiSize := p.EFISize
	if efiSize == 0 {
		efiSize = UKIEFISize
	}
	parts := []Partition{
		{Name: LabelEFI, Type: TypeEFI, Size: efiSize},
		{Name: LabelMETA, Type: TypeLinuxData, Size: METASize},
	}
	parts = append(parts, p.Extra...)
	if len(parts) > NumEntries {
		return Table{}, fmt.Errorf("%w: %d partitions", ErrInvalid, len(parts))
	}
	total := uint64(t.Size / ss)
	es := t.entrySectors()
	if total < 2*(2+es)+1 {
		return Table{}, fmt.Errorf("%w: size %d too small for a GPT", ErrInvalid, t.Size)
	}
	t.FirstUsableLBA = 2 + es
	t.LastUsableLBA = total - 1 - es - 1
	align := uint64(Alignment / ss)
	next := t.FirstUsableLBA
	seen := map[string]bool{}
	for i, pp := range parts {
		if pp.Name == "" || len(utf16.Encode([]rune(pp.Name))) > 36 {
			return Table{}, fmt.Errorf("%w: partition %d: name %q must be 1–36 UTF-16 units", ErrInvalid, i+1, pp.Name)
		}
		if seen[pp.Name] {
			return Table{}, fmt.Errorf("%w: duplicate partition name %q", ErrInvalid, pp.Name)
		}
		seen[pp.Name] = true
		first := (next + align - 1) / align * align
		var sectors uint64
		switch {
		case pp.Size > 0 && pp.Size%ss == 0:
			sectors = uint64(pp.Size / ss)
		case pp.Size == 0 && i == len(parts)-1 && i >= 2:
			if first > t.LastUsableLBA {
				return Table{}, fmt.Errorf("%w: no room left for partition %q", ErrInvalid, pp.Name)
			}
			sectors = t.LastUsableLBA - first + 1
		default:
			return Table{}, fmt.Errorf("%w: partition %q: size %d must be a positive multiple of the sector size %d", ErrInvalid, pp.Name, pp.Size, ss)
		}
		last := first + sectors - 1
		if last > t.LastUsableLBA {
			return Table{}, fmt.Errorf("%w: partition %q (ends at byte %d) does not fit in a %d-byte disk (usable up to %d)",
				ErrInvalid, pp.Name, int64(last+1)*ss, t.Size, int64(t.LastUsableLBA+1)*ss)
		}
		typ := pp.Type
		if typ == (GUID{}) {
			typ = TypeLinuxData
		}
		t.Partitions = append(t.Partitions, Entry{
			Number:     i + 1,
			Name:       pp.Name,
			Type:       typ,
			GUID:       GUIDFromLabel(pp.Name),
			Attributes: pp.Attributes,
			FirstLBA:   first,
			LastLBA:    last,
			Offset:     int64(first) * ss,
			Size:       int64(sectors) * ss,
		})
		next = last + 1
	}
	return t, nil
}
