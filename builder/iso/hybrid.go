package iso

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"time"
	"unicode/utf16"

	"github.com/kiln-dev/kiln/builder/grub"
)

// BIOS makes the ISO boot under legacy BIOS as Talos's dual-boot ISO does
// (grub-mkrescue --directory=/usr/lib/grub/i386-pc, talos-formats.md §3.4),
// from a CD (El Torito) and from a USB stick (MBR boot code).
type BIOS struct {
	// ImagePath is where the El Torito image lies in the tree:
	// grub-mkrescue's boot/grub/i386-pc/eltorito.img.
	ImagePath string
	// Image is the i386-pc-eltorito image (grub.MakeImage with
	// grub.MkrescueElTorito). Write patches a copy: the boot info table and
	// diskboot.img's blocklist (xorriso's -boot-info-table and
	// --grub2-boot-info).
	Image []byte
	// MBR is the platform's boot_hybrid.img: its boot code goes into the
	// protective MBR, pointed at the El Torito image (--grub2-mbr).
	MBR []byte
}

// What the grub-mkrescue layout adds at the end of the image: xorriso's
// default padding of 300 KiB after the appended ESP, which it covers with
// a GPT partition "Gap1", then the backup GPT.
const (
	gptEntries     = 248 // what fits between LBA 2 and the ISO at LBA 64
	gptEntrySize   = 128
	gptEntrySecs   = gptEntries * gptEntrySize / sectorSize
	gptFirstUsable = partOffset * blockSize / sectorSize
	gapSectors     = 300 << 10 / sectorSize
	// tailSize: the gap, then one free sector, the backup entries and the
	// backup header, as xorriso leaves them (the image stays a whole number
	// of ISO blocks).
	tailSize = gapSectors*sectorSize + (gptEntrySecs+2)*sectorSize
)

// ErrInvalidBIOS is returned for a BIOS boot whose images cannot be what
// they claim.
var ErrInvalidBIOS = errors.New("iso: invalid BIOS boot")

var (
	gptBasicData = guidBytes("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7")
	gptESP       = guidBytes("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
)

// guidBytes encodes a GUID string in GPT's mixed-endian byte order.
func guidBytes(s string) [16]byte {
	var g [16]byte
	var raw []byte
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		var v byte
		for _, c := range s[i : i+2] {
			v <<= 4
			switch {
			case c >= '0' && c <= '9':
				v |= byte(c - '0')
			case c >= 'A' && c <= 'F':
				v |= byte(c-'A') + 10
			}
		}
		raw = append(raw, v)
		i++
	}
	copy(g[:], raw)
	g[0], g[1], g[2], g[3] = raw[3], raw[2], raw[1], raw[0]
	g[4], g[5] = raw[5], raw[4]
	g[6], g[7] = raw[7], raw[6]
	return g
}

// volumeGUID returns the GPT GUIDs xorriso derives from the volume's uuid
// time stamp (Talos's "-volume_date uuid YYYYMMDDhhmmss00", the same time
// as every file date here): the 16 ASCII characters, the seventh-byte
// version nibble 4 and the RFC 4122 variant bits set, the last seven bytes
// the hundredths ("00") followed by digits 9..13. Partition n adds n to
// byte 9. Checked against xorriso 1.5.4 in TestSameAsGrubMkrescue.
func volumeGUID(t time.Time, n int) [16]byte {
	u := []byte(t.UTC().Format("20060102150405") + "00")
	var g [16]byte
	copy(g[:8], u[:8])
	g[7] = g[7]&0x0f | 0x40
	g[8] = u[8]&0x3f | 0x80
	g[9], g[10] = u[14], u[15]
	copy(g[11:], u[9:14])
	g[9] += byte(n)
	return g
}

func validateBIOS(b *BIOS, files []File) error {
	if b == nil {
		return nil
	}
	// cdboot.img (2 KiB) and diskboot.img at least; at most what the
	// 16-bit El Torito sector count and cdboot.img's loader can take.
	if len(b.Image) < 5*sectorSize || len(b.Image) > 16<<20 {
		return fmt.Errorf("%w: El Torito image of %d bytes", ErrInvalidBIOS, len(b.Image))
	}
	if len(b.MBR) != sectorSize || b.MBR[510] != 0x55 || b.MBR[511] != 0xAA {
		return fmt.Errorf("%w: MBR is not a 512-byte boot sector", ErrInvalidBIOS)
	}
	for _, f := range files {
		if f.Path == b.ImagePath {
			return fmt.Errorf("%w: %q is the BIOS El Torito image", ErrInvalidPath, f.Path)
		}
	}
	return nil
}

// writeBIOSCatalog writes the boot catalog of a dual-boot ISO as xorriso
// writes grub-mkrescue's: the default entry boots the BIOS image (platform
// 0, no emulation, 4 sectors loaded, as -boot-load-size 4), a final
// section header for EFI (0xEF) with one entry, the appended ESP. Blocks
// are absolute: El Torito is read from the whole device.
func writeBIOSCatalog(f *os.File, vd *volumeDescriptors, biosLBA uint32, l Layout) error {
	cat := make([]byte, blockSize)
	v := cat[0:32]
	v[0] = 1 // validation entry, platform 0 (x86 BIOS)
	v[30], v[31] = 0x55, 0xAA
	var sum uint16
	for i := 0; i < 32; i += 2 {
		sum += binary.LittleEndian.Uint16(v[i:])
	}
	binary.LittleEndian.PutUint16(v[28:], -sum)

	d := cat[32:64]
	d[0] = 0x88 // bootable, no emulation, load segment 0 (0x7C0)
	binary.LittleEndian.PutUint16(d[6:], 4)
	binary.LittleEndian.PutUint32(d[8:], biosLBA)

	h := cat[64:96]
	h[0], h[1] = 0x91, 0xEF // final section header, EFI
	binary.LittleEndian.PutUint16(h[2:], 1)

	e := cat[96:128]
	e[0] = 0x88
	count := l.ESPSize / sectorSize
	if count > 0xFFFF {
		count = 0 // "to the end of the volume", as in patchElTorito
	}
	binary.LittleEndian.PutUint16(e[6:], uint16(count))
	binary.LittleEndian.PutUint32(e[8:], uint32(l.ESPStart/blockSize))

	if _, err := f.WriteAt(cat, vd.base+int64(vd.catalogBlock)*blockSize); err != nil {
		return fmt.Errorf("iso: write boot catalog: %w", err)
	}
	return nil
}

// writeHybridGPT writes the system area of grub-mkrescue's dual-boot ISO
// (xorriso -appended_part_as_gpt --protective-msdos-label --grub2-mbr):
// boot_hybrid.img's code in LBA 0, pointed at diskboot.img (the second
// 512-byte sector after cdboot.img of the El Torito image at biosLBA), a
// protective MBR entry (0xEE) over the whole image, and a GPT with
// partition 1 "ISO9660" (the volume from LBA 64 to the ESP, basic data,
// required and read-only), 2 "Appended2" (the ESP) and 3 "Gap1" (the
// 300 KiB padding), 248 entries in LBA 2..63, backup at the end.
func writeHybridGPT(f *os.File, b *BIOS, biosLBA uint32, l Layout, t time.Time) error {
	total := l.Size / sectorSize
	mbr := make([]byte, sectorSize)
	copy(mbr, b.MBR[:446])
	if err := grub.PatchHybridMBR(mbr, biosLBA); err != nil {
		return fmt.Errorf("iso: %w", err)
	}
	mbrEntry(mbr[446:], 0xEE, 1, total-1)
	mbr[510], mbr[511] = 0x55, 0xAA

	espFirst := l.ESPStart / sectorSize
	espEnd := espFirst + roundUp(l.ESPSize, mib)/sectorSize
	const attrs = 1<<60 | 1 // read-only, required
	parts := []struct {
		typ         [16]byte
		first, last int64
		attrs       uint64
		name        string
	}{
		{gptBasicData, gptFirstUsable, espFirst - 1, attrs, "ISO9660"},
		{gptESP, espFirst, espEnd - 1, 0, "Appended2"},
		{gptBasicData, espEnd, espEnd + gapSectors - 1, attrs, "Gap1"},
	}
	ent := make([]byte, gptEntries*gptEntrySize)
	for i, p := range parts {
		e := ent[i*gptEntrySize:]
		copy(e[0:16], p.typ[:])
		g := volumeGUID(t, i+1)
		copy(e[16:32], g[:])
		binary.LittleEndian.PutUint64(e[32:], uint64(p.first))
		binary.LittleEndian.PutUint64(e[40:], uint64(p.last))
		binary.LittleEndian.PutUint64(e[48:], p.attrs)
		for j, c := range utf16.Encode([]rune(p.name)) {
			binary.LittleEndian.PutUint16(e[56+2*j:], c)
		}
	}
	backupEntries := total - 1 - gptEntrySecs
	header := func(my, alt, entries int64) []byte {
		h := make([]byte, sectorSize)
		copy(h, "EFI PART")
		binary.LittleEndian.PutUint32(h[8:], 0x00010000)
		binary.LittleEndian.PutUint32(h[12:], 92)
		binary.LittleEndian.PutUint64(h[24:], uint64(my))
		binary.LittleEndian.PutUint64(h[32:], uint64(alt))
		binary.LittleEndian.PutUint64(h[40:], gptFirstUsable)
		binary.LittleEndian.PutUint64(h[48:], uint64(backupEntries-2)) // one free sector before the entries
		g := volumeGUID(t, 0)
		copy(h[56:72], g[:])
		binary.LittleEndian.PutUint64(h[72:], uint64(entries))
		binary.LittleEndian.PutUint32(h[80:], gptEntries)
		binary.LittleEndian.PutUint32(h[84:], gptEntrySize)
		binary.LittleEndian.PutUint32(h[88:], crc32.ChecksumIEEE(ent))
		binary.LittleEndian.PutUint32(h[16:], crc32.ChecksumIEEE(h[:92]))
		return h
	}
	writes := []struct {
		b   []byte
		lba int64
	}{
		{mbr, 0},
		{header(1, total-1, 2), 1},
		{ent, 2},
		{ent, backupEntries},
		{header(total-1, 1, backupEntries), total - 1},
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.b, w.lba*sectorSize); err != nil {
			return fmt.Errorf("iso: write GPT: %w", err)
		}
	}
	return nil
}

// rationalize gives a Rock Ridge PX entry the ownership and mode of
// mkisofs -r, which grub-mkrescue passes: owner and group 0, read (and,
// where anyone could execute, execute) for everyone, no write or special
// bits. e is the whole PX entry.
func rationalize(e []byte) {
	if len(e) < 36 {
		return
	}
	mode := binary.LittleEndian.Uint32(e[4:])
	perm := uint32(0o444)
	if mode&0o111 != 0 || mode&0o170000 == 0o040000 {
		perm |= 0o111
	}
	setBoth32(e[4:], mode&0o170000|perm)
	setBoth32(e[20:], 0)
	setBoth32(e[28:], 0)
}
