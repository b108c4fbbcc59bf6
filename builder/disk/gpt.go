package disk

import (
	"encoding/binary"
	"hash/crc32"
	"unicode/utf16"
)

// entries encodes the 128-entry partition array.
func (t Table) entries() []byte {
	b := make([]byte, NumEntries*entrySize)
	for i, e := range t.Partitions {
		o := b[i*entrySize : (i+1)*entrySize]
		tb := e.Type.gptBytes()
		copy(o[0:16], tb[:])
		gb := e.GUID.gptBytes()
		copy(o[16:32], gb[:])
		binary.LittleEndian.PutUint64(o[32:], e.FirstLBA)
		binary.LittleEndian.PutUint64(o[40:], e.LastLBA)
		binary.LittleEndian.PutUint64(o[48:], e.Attributes)
		for j, u := range utf16.Encode([]rune(e.Name)) {
			binary.LittleEndian.PutUint16(o[56+2*j:], u)
		}
	}
	return b
}

// header encodes a GPT header (one sector) located at my, pointing at alt and
// at an entry array starting at entriesLBA.
func (t Table) header(my, alt, entriesLBA uint64, entriesCRC uint32) []byte {
	h := make([]byte, t.SectorSize)
	copy(h[0:8], "EFI PART")
	binary.LittleEndian.PutUint32(h[8:], 0x00010000)
	binary.LittleEndian.PutUint32(h[12:], 92)
	binary.LittleEndian.PutUint64(h[24:], my)
	binary.LittleEndian.PutUint64(h[32:], alt)
	binary.LittleEndian.PutUint64(h[40:], t.FirstUsableLBA)
	binary.LittleEndian.PutUint64(h[48:], t.LastUsableLBA)
	dg := t.DiskGUID.gptBytes()
	copy(h[56:72], dg[:])
	binary.LittleEndian.PutUint64(h[72:], entriesLBA)
	binary.LittleEndian.PutUint32(h[80:], NumEntries)
	binary.LittleEndian.PutUint32(h[84:], entrySize)
	binary.LittleEndian.PutUint32(h[88:], entriesCRC)
	binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
	return h
}

// protectiveMBR encodes sector 0: one 0xEE partition covering the disk, not
// bootable, boot code area zero.
func (t Table) protectiveMBR() []byte {
	m := make([]byte, t.SectorSize)
	p := m[446:462]
	p[0] = 0x00                // not bootable
	p[1], p[2], p[3] = 0, 2, 0 // CHS start (head 0, sector 2, cylinder 0)
	p[4] = 0xee                // GPT protective
	p[5], p[6], p[7] = 0xff, 0xff, 0xff
	binary.LittleEndian.PutUint32(p[8:], 1)
	size := t.lastLBA()
	if size > 0xffffffff {
		size = 0xffffffff
	}
	binary.LittleEndian.PutUint32(p[12:], uint32(size))
	m[510], m[511] = 0x55, 0xaa
	return m
}

// primary returns the bytes of LBA 0 .. FirstUsableLBA-1 (protective MBR,
// primary header, entries) and backup those of the last 1+entrySectors LBAs
// (backup entries, backup header).
func (t Table) primaryAndBackup() (primary []byte, backup []byte, backupOffset int64) {
	ent := t.entries()
	crc := crc32.ChecksumIEEE(ent)
	es := t.entrySectors()
	entBytes := make([]byte, int(es)*t.SectorSize)
	copy(entBytes, ent)
	last := t.lastLBA()
	backupEntriesLBA := last - es

	primary = append(primary, t.protectiveMBR()...)
	primary = append(primary, t.header(1, last, 2, crc)...)
	primary = append(primary, entBytes...)

	backup = append(backup, entBytes...)
	backup = append(backup, t.header(last, 1, backupEntriesLBA, crc)...)
	return primary, backup, int64(backupEntriesLBA) * int64(t.SectorSize)
}
