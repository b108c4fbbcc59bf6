package grub

import (
	"errors"
	"fmt"
	"io/fs"
)

// Offsets of the words the boot sectors read their next sector from.
const (
	// boot.img: LE64 sector of diskboot.img (GRUB_BOOT_MACHINE_KERNEL_SECTOR),
	// and the two-byte jump over the drive check that grub-install NOPs
	// for hard disks (GRUB_BOOT_MACHINE_DRIVE_CHECK).
	bootKernelSectorOff = 0x5c
	bootDriveCheckOff   = 0x66

	// boot_hybrid.img keeps its kernel sector at 0x1b0, clear of the BPB
	// an ISO's first sector may need.
	hybridKernelSectorOff = 0x1b0

	// MBRCodeSize is how much of boot.img goes into a partitioned disk's
	// MBR: everything before the partition table.
	MBRCodeSize = 446

	isoBlockSize = 2048
	cdbootSize   = 2048
)

// BootImage returns the platform directory's boot.img (the 512-byte MBR
// sector), checked to be one.
func BootImage(dir fs.FS) ([]byte, error) { return bootSector(dir, "boot.img") }

// HybridBootImage returns boot_hybrid.img, the MBR of an ISO that is also
// bootable as a BIOS disk (grub-mkrescue's --grub2-mbr).
func HybridBootImage(dir fs.FS) ([]byte, error) { return bootSector(dir, "boot_hybrid.img") }

func bootSector(dir fs.FS, name string) ([]byte, error) {
	b, err := readFile(dir, name, sectorSize)
	if err != nil {
		return nil, err
	}

	if len(b) != sectorSize || b[510] != 0x55 || b[511] != 0xaa {
		return nil, fmt.Errorf("grub: %s is not a 512-byte boot sector", name)
	}

	return b, nil
}

// PatchForGPTDisk patches boot.img and an i386-pc core.img in place for a GPT
// disk whose BIOS boot partition starts at sector coreLBA and holds core.img,
// exactly as Talos's grub.PatchBlocklistsForDiskImage does: boot.img reads
// diskboot.img (core.img's first sector) from coreLBA and skips its floppy
// drive check, and diskboot.img reads the rest of core.img from coreLBA+1.
// boot[:MBRCodeSize] then goes into the disk's MBR, core.img into the
// partition.
func PatchForGPTDisk(boot, core []byte, coreLBA uint64) error {
	if len(boot) < bootDriveCheckOff+2 {
		return fmt.Errorf("grub: boot.img is too small (%d bytes)", len(boot))
	}

	if len(core) < sectorSize {
		return fmt.Errorf("grub: core.img is too small (%d bytes)", len(core))
	}

	if coreLBA == 0 || coreLBA == ^uint64(0) {
		return fmt.Errorf("grub: invalid core.img sector %d", coreLBA)
	}

	le.PutUint64(boot[bootKernelSectorOff:], coreLBA)
	boot[bootDriveCheckOff] = 0x90
	boot[bootDriveCheckOff+1] = 0x90
	le.PutUint64(core[blocklistOff:], coreLBA+1)

	return nil
}

// PatchHybridMBR does what xorriso's --grub2-mbr does to boot_hybrid.img for
// an El Torito image (i386-pc-eltorito) stored at 2 KiB block imageLBA: its
// kernel sector becomes the 512-byte sector of diskboot.img, right after
// cdboot.img.
func PatchHybridMBR(mbr []byte, imageLBA uint32) error {
	if len(mbr) < sectorSize {
		return errors.New("grub: boot_hybrid.img is too small")
	}

	le.PutUint64(mbr[hybridKernelSectorOff:], uint64(imageLBA)*4+cdbootSize/sectorSize)

	return nil
}

// PatchElToritoImage does what xorriso's -boot-info-table and
// --grub2-boot-info do to an i386-pc-eltorito image stored at 2 KiB block
// imageLBA of an ISO whose primary volume descriptor is at block pvdLBA (16):
// cdboot.img learns where it is and how long it is (the boot info table at
// byte 8, with the checksum of the image from byte 64), and diskboot.img's
// blocklist points at the sectors after it for booting the ISO as a disk.
func PatchElToritoImage(img []byte, imageLBA, pvdLBA uint32) error {
	if len(img) < cdbootSize+sectorSize {
		return errors.New("grub: El Torito image is too small")
	}

	// xorriso patches the blocklist first, and the checksum covers it.
	le.PutUint64(img[cdbootSize+blocklistOff:], uint64(imageLBA)*4+(cdbootSize+sectorSize)/sectorSize)

	le.PutUint32(img[8:], pvdLBA)
	le.PutUint32(img[12:], imageLBA)
	le.PutUint32(img[16:], uint32(len(img)))

	var sum uint32

	for off := 64; off < len(img); off += 4 {
		var w [4]byte
		copy(w[:], img[off:])
		sum += le.Uint32(w[:])
	}

	le.PutUint32(img[20:], sum)
	clear(img[24:64])

	return nil
}
