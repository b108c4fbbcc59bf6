package iso

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"unicode/utf16"
)

// GPT partition type GUIDs.
const (
	gptTypeBasicData = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"
	gptTypeESP       = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"

	isoPartStart = 64 // 512-byte LBA of partition 1: ISO block 16, as xorriso -partition_offset 16
	gptEntries   = 128
	gptEntrySize = 128
)

// writeSystemArea writes the hybrid MBR and the primary and backup GPT.
// Finalize zeroed the 32 KiB system area, which holds LBA 0..63.
func writeSystemArea(f *os.File, l Layout, volumeID string) error {
	total := l.Size / sectorSize
	espFirst := l.ESPStart / sectorSize
	espLast := espFirst + l.ESPSize/sectorSize - 1
	isoLast := espFirst - 1

	// MBR: boot code area stays zero (no BIOS boot), disk signature, 4 entries.
	mbr := make([]byte, sectorSize)
	copy(mbr[440:444], guid(volumeID, "mbr-signature")[:4])
	mbrEntry(mbr[446:], 0x83, isoPartStart, isoLast)
	mbrEntry(mbr[462:], 0xEF, espFirst, espLast)
	mbrEntry(mbr[478:], 0xEE, 1, isoPartStart-1)
	mbr[510], mbr[511] = 0x55, 0xAA
	if _, err := f.WriteAt(mbr, 0); err != nil {
		return fmt.Errorf("iso: write MBR: %w", err)
	}

	entries := make([]byte, gptEntries*gptEntrySize)
	gptEntry(entries[0:], gptTypeBasicData, guid(volumeID, "iso9660"), isoPartStart, isoLast, "ISO9660")
	gptEntry(entries[gptEntrySize:], gptTypeESP, guid(volumeID, "efi"), espFirst, espLast, "EFI")
	entriesCRC := crc32.ChecksumIEEE(entries)
	entrySectors := int64(len(entries) / sectorSize)
	diskGUID := guid(volumeID, "disk")

	header := func(current, backup, entriesLBA int64) []byte {
		h := make([]byte, sectorSize)
		copy(h[0:8], "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], uint64(current))
		binary.LittleEndian.PutUint64(h[32:], uint64(backup))
		binary.LittleEndian.PutUint64(h[40:], uint64(2+entrySectors))       // first usable
		binary.LittleEndian.PutUint64(h[48:], uint64(total-2-entrySectors)) // last usable
		copy(h[56:72], diskGUID)
		binary.LittleEndian.PutUint64(h[72:], uint64(entriesLBA))
		binary.LittleEndian.PutUint32(h[80:], gptEntries)
		binary.LittleEndian.PutUint32(h[84:], gptEntrySize)
		binary.LittleEndian.PutUint32(h[88:], entriesCRC)
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	writes := []struct {
		lba int64
		b   []byte
	}{
		{1, header(1, total-1, 2)},
		{2, entries},
		{total - 1 - entrySectors, entries},
		{total - 1, header(total-1, 1, total-1-entrySectors)},
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.b, w.lba*sectorSize); err != nil {
			return fmt.Errorf("iso: write GPT: %w", err)
		}
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

// chs encodes lba with 255 heads and 63 sectors per track, saturating at
// cylinder 1023 as partitioning tools do.
func chs(lba int64) []byte {
	c, h, s := lba/(255*63), (lba/63)%255, lba%63+1
	if c > 1023 {
		c, h, s = 1023, 254, 63
	}
	return []byte{byte(h), byte(s) | byte(c>>8)<<6, byte(c)}
}

func gptEntry(e []byte, typ string, unique []byte, first, last int64, name string) {
	copy(e[0:16], parseGUID(typ))
	copy(e[16:32], unique)
	binary.LittleEndian.PutUint64(e[32:], uint64(first))
	binary.LittleEndian.PutUint64(e[40:], uint64(last))
	for i, u := range utf16.Encode([]rune(name)) {
		binary.LittleEndian.PutUint16(e[56+2*i:], u)
	}
}

// parseGUID returns the on-disk (mixed-endian) bytes of a GUID string.
func parseGUID(s string) []byte {
	var raw []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		var v byte
		fmt.Sscanf(s[i:i+2], "%02X", &v)
		raw = append(raw, v)
		i++
	}
	b := make([]byte, 16)
	b[0], b[1], b[2], b[3] = raw[3], raw[2], raw[1], raw[0]
	b[4], b[5] = raw[5], raw[4]
	b[6], b[7] = raw[7], raw[6]
	copy(b[8:], raw[8:])
	return b
}

// guid derives a stable version-8 GUID (on-disk byte order) from the
// volume id and a role, so equal inputs give equal images.
func guid(volumeID, role string) []byte {
	s := sha256.Sum256([]byte("kiln iso " + volumeID + " " + role))
	b := s[:16]
	b[7] = b[7]&0x0F | 0x80 // version 8 (time_hi_and_version is little-endian on disk)
	b[8] = b[8]&0x3F | 0x80 // RFC 4122 variant
	return b
}
