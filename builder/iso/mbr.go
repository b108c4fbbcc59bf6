package iso

import (
	"encoding/binary"
	"fmt"
	"os"
)

// MBR geometry of xorriso's -partition_cyl_align: 64 heads, 32 sectors per
// track, so one cylinder is 1 MiB.
const (
	mbrHeads   = 64
	mbrSectors = 32
)

// writeMBR writes the MBR of xorrisofs -partition_offset 16
// -iso_mbr_part_type 0x83 -append_partition 2 0xef: no boot code, disk
// signature 0, partition 1 (type 0x83) the ISO9660 volume from LBA 64 to
// the ESP, partition 2 (type 0xEF) the ESP rounded up to a cylinder. No
// GPT: Talos's sd-boot ISO has none. Finalize zeroed LBA 0.
func writeMBR(f *os.File, l Layout) error {
	espFirst := l.ESPStart / sectorSize
	mbr := make([]byte, sectorSize)
	mbrEntry(mbr[446:], 0x83, partOffset*blockSize/sectorSize, espFirst-1)
	mbrEntry(mbr[462:], 0xEF, espFirst, espFirst+roundUp(l.ESPSize, mib)/sectorSize-1)
	mbr[510], mbr[511] = 0x55, 0xAA
	if _, err := f.WriteAt(mbr, 0); err != nil {
		return fmt.Errorf("iso: write MBR: %w", err)
	}
	return nil
}

func mbrEntry(e []byte, typ byte, first, last int64) {
	e[0] = 0
	copy(e[1:4], chs(first))
	e[4] = typ
	copy(e[5:8], chs(last))
	binary.LittleEndian.PutUint32(e[8:], uint32(first))
	binary.LittleEndian.PutUint32(e[12:], uint32(last-first+1))
}

// chs encodes lba in xorriso's geometry, saturating at cylinder 1023 as
// libisofs does.
func chs(lba int64) []byte {
	c, h, s := lba/(mbrHeads*mbrSectors), (lba/mbrSectors)%mbrHeads, lba%mbrSectors+1
	if c > 1023 {
		c, h, s = 1023, mbrHeads-1, mbrSectors
	}
	return []byte{byte(h), byte(s) | byte(c>>8)<<6, byte(c)}
}
