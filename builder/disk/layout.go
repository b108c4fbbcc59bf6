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
	// UKIEFISize is the EFI partition size of the sd-boot and dual-boot
	// layouts of Talos ≥ 1.11 (100 + 1 + 2000 MiB; 1101 MiB before).
	UKIEFISize = 2101 * MiB
	// GrubEFISize is the EFI partition size of the GRUB layout.
	GrubEFISize = 100 * MiB
	// BIOSSize is the size of the BIOS boot partition (GRUB's core.img).
	BIOSSize = 1 * MiB
	// BootSize is the BOOT partition size of Talos ≥ 1.11 (LegacyBootSize before).
	BootSize       = 2000 * MiB
	LegacyBootSize = 1000 * MiB
	// DualBootDiskSize is the metal dual-boot disk size of Talos ≥ 1.11:
	// SDBootDiskSize + BIOSSize + BootSize (metal-amd64 testdata: 4453302272).
	DualBootDiskSize = 4247 * MiB
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
	LabelBIOS       = "BIOS"
	LabelBOOT       = "BOOT"
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

// AttrLegacyBIOSBootable is GPT attribute bit 2, which Talos sets on the
// BIOS partition (gpt.WithLegacyBIOSBootableAttribute).
const AttrLegacyBIOSBootable = 1 << 2

// Boot loader kinds (talos-formats.md §4.2): sd-boot is EFI and META;
// dual-boot adds GRUB for BIOS (BIOS and BOOT partitions) to sd-boot's EFI;
// grub is a 100 MiB EFI holding GRUB's EFI image, BIOS and BOOT.
const (
	BootloaderSDBoot   Bootloader = "sd-boot"
	BootloaderGRUB     Bootloader = "grub"
	BootloaderDualBoot Bootloader = "dual-boot"
)

// ErrInvalid is returned (wrapped) for malformed parameters.
var ErrInvalid = errors.New("invalid disk parameters")

// Params describe a disk image.
type Params struct {
	// Bootloader selects the layout; "" means sd-boot.
	Bootloader Bootloader
	// SectorSize is the logical sector size, 512 (default when 0) or 4096
	// (schematic customization.diskImage.sectorSize).
	SectorSize int
	// Size is the total image size in bytes; 0 means SDBootDiskSize
	// (DualBootDiskSize for dual-boot). It must be a multiple of the sector
	// size and leave room for the backup GPT.
	Size int64
	// EFISize is the EFI partition size; 0 means UKIEFISize (GrubEFISize
	// for grub).
	EFISize int64
	// EFI fills the EFI system partition (a FAT filesystem with sd-boot and
	// the UKI, or GRUB's EFI image). Required by Write; Layout ignores it.
	EFI Content
	// BIOS is GRUB's i386-pc boot code of a grub or dual-boot image; nil
	// leaves the BIOS partition empty and the MBR's boot code zero (what
	// Talos does on arm64). Required for dual-boot.
	BIOS *BIOSBoot
	// Boot is the BOOT partition of a grub or dual-boot image (an XFS file
	// system: builder/xfs.Partition), placed after BIOS; required for them
	// and refused for sd-boot. Its Name must be LabelBOOT.
	Boot *Partition
	// META is the content of the META partition: exactly METASize bytes (e.g.
	// from builder/meta.Partition), or nil for an all-zero (blank) META.
	META io.Reader
	// Extra partitions placed after META in order (e.g. IMAGECACHE, issue 5).
	Extra []Partition
}

// BIOSBoot is GRUB's i386-pc boot code (builder/grub): Write patches
// copies of both for the BIOS partition's first sector as Talos does
// (grub.PatchForGPTDisk), puts BootImage's first 446 bytes in the MBR and
// CoreImage at the start of the BIOS partition.
type BIOSBoot struct {
	BootImage []byte // boot.img, 512 bytes
	CoreImage []byte // core.img (i386-pc), at most BIOSSize
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
	parts, defaultSize, err := bootPartitions(p)
	if err != nil {
		return Table{}, err
	}
	t := Table{SectorSize: p.SectorSize, Size: p.Size, DiskGUID: GUIDFromLabel(diskLabel)}
	if t.SectorSize == 0 {
		t.SectorSize = 512
	}
	if t.SectorSize != 512 && t.SectorSize != 4096 {
		return Table{}, fmt.Errorf("%w: sector size %d (want 512 or 4096)", ErrInvalid, p.SectorSize)
	}
	if t.Size == 0 {
		t.Size = defaultSize
	}
	ss := int64(t.SectorSize)
	if t.Size < 0 || t.Size%ss != 0 {
		return Table{}, fmt.Errorf("%w: size %d is not a positive multiple of the sector size %d", ErrInvalid, t.Size, ss)
	}
	parts = append(parts, Partition{Name: LabelMETA, Type: TypeLinuxData, Size: METASize})
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
		case pp.Size == 0 && i == len(parts)-1 && pp.Name != LabelMETA:
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

// bootPartitions returns the boot loader's partitions, which come before
// META (Talos's PrepareBootPartitions of bootloader/sdboot, grub and dual),
// and the layout's default disk size.
func bootPartitions(p Params) ([]Partition, int64, error) {
	efiSize := p.EFISize
	efi := Partition{Name: LabelEFI, Type: TypeEFI}
	switch p.Bootloader {
	case "", BootloaderSDBoot:
		if p.Boot != nil || p.BIOS != nil {
			return nil, 0, fmt.Errorf("%w: an sd-boot disk image has no BIOS or BOOT partition", ErrInvalid)
		}
		if efiSize == 0 {
			efiSize = UKIEFISize
		}
		efi.Size = efiSize
		return []Partition{efi}, SDBootDiskSize, nil
	case BootloaderGRUB, BootloaderDualBoot:
	default:
		return nil, 0, fmt.Errorf("%w: unknown boot loader %q", ErrInvalid, p.Bootloader)
	}
	if p.Boot == nil || p.Boot.Name != LabelBOOT || p.Boot.Size <= 0 {
		return nil, 0, fmt.Errorf("%w: a %s disk image needs its BOOT partition (named %s, sized)", ErrInvalid, p.Bootloader, LabelBOOT)
	}
	if p.BIOS != nil && (len(p.BIOS.BootImage) != 512 || len(p.BIOS.CoreImage) < 512 || len(p.BIOS.CoreImage) > BIOSSize) {
		return nil, 0, fmt.Errorf("%w: GRUB boot.img must be 512 bytes and core.img 512 bytes to %d bytes (got %d and %d)",
			ErrInvalid, BIOSSize, len(p.BIOS.BootImage), len(p.BIOS.CoreImage))
	}
	var size int64 = SDBootDiskSize
	if p.Bootloader == BootloaderDualBoot {
		if p.BIOS == nil {
			return nil, 0, fmt.Errorf("%w: a dual-boot disk image needs GRUB's BIOS boot code", ErrInvalid)
		}
		if efiSize == 0 {
			efiSize = UKIEFISize
		}
		size = DualBootDiskSize
	} else if efiSize == 0 {
		efiSize = GrubEFISize
	}
	efi.Size = efiSize
	boot := *p.Boot
	boot.Type = TypeLinuxData
	return []Partition{
		efi,
		{Name: LabelBIOS, Type: TypeBIOSBoot, Attributes: AttrLegacyBIOSBootable, Size: BIOSSize},
		boot,
	}, size, nil
}
