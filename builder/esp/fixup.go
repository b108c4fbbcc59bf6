package esp

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
)

// bpb is the part of the boot sector the fixup pass needs.
type bpb struct {
	bytesPerSector  int64
	sectorsPerClus  int64
	reserved        int64
	fats            int64
	rootEntries     int64
	totalSectors    int64
	fatSectors      int64
	rootCluster     uint32
	fsInfoSector    int64
	backupBoot      int64
	clusters        uint32
	typ             Type
	fatOffset       int64 // from the start of the file system
	rootDirOffset   int64 // FAT12/16 fixed root region
	dataOffset      int64
	bytesPerCluster int64
}

func readBPB(f *os.File, base int64) (*bpb, error) {
	s := make([]byte, 512)
	if _, err := f.ReadAt(s, base); err != nil {
		return nil, fmt.Errorf("esp: read boot sector: %w", err)
	}
	le16 := func(o int) int64 { return int64(binary.LittleEndian.Uint16(s[o:])) }
	le32 := func(o int) int64 { return int64(binary.LittleEndian.Uint32(s[o:])) }
	b := &bpb{
		bytesPerSector: le16(0x0B),
		sectorsPerClus: int64(s[0x0D]),
		reserved:       le16(0x0E),
		fats:           int64(s[0x10]),
		rootEntries:    le16(0x11),
		totalSectors:   le16(0x13),
		fatSectors:     le16(0x16),
	}
	if b.totalSectors == 0 {
		b.totalSectors = le32(0x20)
	}
	if b.fatSectors == 0 {
		b.fatSectors = le32(0x24)
		b.rootCluster = uint32(le32(0x2C))
		b.fsInfoSector = le16(0x30)
		b.backupBoot = le16(0x32)
	}
	if b.bytesPerSector == 0 || b.sectorsPerClus == 0 {
		return nil, fmt.Errorf("esp: boot sector has no geometry")
	}
	rootDirSectors := (b.rootEntries*32 + b.bytesPerSector - 1) / b.bytesPerSector
	dataSectors := b.totalSectors - b.reserved - b.fats*b.fatSectors - rootDirSectors
	b.clusters = uint32(dataSectors / b.sectorsPerClus)
	switch {
	case b.clusters < 4085:
		b.typ = FAT12
	case b.clusters < 65525:
		b.typ = FAT16
	default:
		b.typ = FAT32
	}
	b.fatOffset = b.reserved * b.bytesPerSector
	b.rootDirOffset = b.fatOffset + b.fats*b.fatSectors*b.bytesPerSector
	b.dataOffset = b.rootDirOffset + rootDirSectors*b.bytesPerSector
	b.bytesPerCluster = b.sectorsPerClus * b.bytesPerSector
	return b, nil
}

// fat is an in-memory copy of the first FAT.
type fat struct {
	typ Type
	b   []byte
}

func (t *fat) get(n uint32) uint32 {
	switch t.typ {
	case FAT12:
		o := n + n/2
		v := uint32(binary.LittleEndian.Uint16(t.b[o:]))
		if n&1 == 1 {
			return v >> 4
		}
		return v & 0xFFF
	case FAT16:
		return uint32(binary.LittleEndian.Uint16(t.b[2*n:]))
	default:
		return binary.LittleEndian.Uint32(t.b[4*n:]) & 0x0FFFFFFF
	}
}

func (t *fat) set(n, v uint32) {
	switch t.typ {
	case FAT12:
		o := n + n/2
		old := binary.LittleEndian.Uint16(t.b[o:])
		if n&1 == 1 {
			old = old&0x000F | uint16(v<<4)
		} else {
			old = old&0xF000 | uint16(v&0xFFF)
		}
		binary.LittleEndian.PutUint16(t.b[o:], old)
	case FAT16:
		binary.LittleEndian.PutUint16(t.b[2*n:], uint16(v))
	default:
		old := binary.LittleEndian.Uint32(t.b[4*n:])
		binary.LittleEndian.PutUint32(t.b[4*n:], old&0xF0000000|v&0x0FFFFFFF)
	}
}

func (t *fat) eoc(v uint32) bool {
	switch t.typ {
	case FAT12:
		return v >= 0xFF8
	case FAT16:
		return v >= 0xFFF8
	default:
		return v >= 0x0FFFFFF8
	}
}

// fixup repairs what go-diskfs gets wrong or leaves non-deterministic, see
// doc.go. It returns the cluster count.
func fixup(f *os.File, base int64, opts Options) (uint32, error) {
	b, err := readBPB(f, base)
	if err != nil {
		return 0, err
	}
	t := &fat{typ: b.typ, b: make([]byte, b.fatSectors*b.bytesPerSector)}
	if _, err := f.ReadAt(t.b, base+b.fatOffset); err != nil {
		return 0, fmt.Errorf("esp: read FAT: %w", err)
	}
	date, tod := fatTime(opts.ModTime)
	if err := fitFAT(f, base, b); err != nil {
		return 0, err
	}
	maxCluster := b.clusters + 1

	chain := func(first uint32) ([]uint32, error) {
		var cs []uint32
		for c := first; ; {
			if c < 2 || c > maxCluster || len(cs) > int(b.clusters) {
				return nil, fmt.Errorf("esp: broken cluster chain from %d", first)
			}
			cs = append(cs, c)
			c = t.get(c)
			if t.eoc(c) {
				return cs, nil
			}
		}
	}
	clusterOff := func(c uint32) int64 {
		return base + b.dataOffset + int64(c-2)*b.bytesPerCluster
	}
	// A slice, not a map: an ESP holding a UKI has tens of thousands of
	// clusters, and a map of them was a few percent of an ISO build.
	used := make([]bool, int(maxCluster)+1)

	// walk rewrites one directory; cluster 0 is the FAT12/16 root region.
	var walk func(first uint32) error
	walk = func(first uint32) error {
		var offs []int64
		var size int64
		if first == 0 {
			offs = []int64{base + b.rootDirOffset}
			size = b.rootEntries * 32
		} else {
			cs, err := chain(first)
			if err != nil {
				return err
			}
			for _, c := range cs {
				offs = append(offs, clusterOff(c))
				used[c] = true
			}
			size = b.bytesPerCluster
		}
		var subdirs []uint32
		for _, off := range offs {
			d := make([]byte, size)
			if _, err := f.ReadAt(d, off); err != nil {
				return fmt.Errorf("esp: read directory: %w", err)
			}
			end := false
			for i := 0; i+32 <= len(d); i += 32 {
				e := d[i : i+32]
				if e[0] == 0 {
					end = true
					break
				}
				if e[0] == 0xE5 || e[11]&0x3F == 0x0F { // deleted, long-name slot
					continue
				}
				e[13] = 0
				binary.LittleEndian.PutUint16(e[14:], tod)
				binary.LittleEndian.PutUint16(e[16:], date)
				binary.LittleEndian.PutUint16(e[18:], date)
				binary.LittleEndian.PutUint16(e[22:], tod)
				binary.LittleEndian.PutUint16(e[24:], date)
				if e[11]&0x08 != 0 { // volume label
					continue
				}
				cl := uint32(binary.LittleEndian.Uint16(e[26:])) | uint32(binary.LittleEndian.Uint16(e[20:]))<<16
				name := string(e[0:11])
				switch {
				case name == ".          ":
				case name == "..         ":
					if b.typ == FAT32 && cl == b.rootCluster { // '..' of a first-level directory is 0
						binary.LittleEndian.PutUint16(e[20:], 0)
						binary.LittleEndian.PutUint16(e[26:], 0)
					}
				case e[11]&0x10 != 0:
					subdirs = append(subdirs, cl)
				case binary.LittleEndian.Uint32(e[28:]) == 0:
					// go-diskfs gives empty files a cluster; FAT wants none.
					binary.LittleEndian.PutUint16(e[20:], 0)
					binary.LittleEndian.PutUint16(e[26:], 0)
				default:
					if cl >= 2 {
						cs, err := chain(cl)
						if err != nil {
							return err
						}
						for _, c := range cs {
							used[c] = true
						}
					}
				}
			}
			if _, err := f.WriteAt(d, off); err != nil {
				return fmt.Errorf("esp: write directory: %w", err)
			}
			if end {
				break
			}
		}
		for _, c := range subdirs {
			if err := walk(c); err != nil {
				return err
			}
		}
		return nil
	}
	root := uint32(0)
	if b.typ == FAT32 {
		root = b.rootCluster
	}
	if err := walk(root); err != nil {
		return 0, err
	}

	// Free clusters allocated but owned by nothing (go-diskfs marks cluster 2
	// used on FAT12/16, where the root directory is not a cluster).
	var free, next uint32
	next = 0xFFFFFFFF
	changed := false
	for c := uint32(2); c <= maxCluster; c++ {
		v := t.get(c)
		if v != 0 && !used[c] {
			t.set(c, 0)
			v = 0
			changed = true
		}
		if v == 0 {
			free++
			if next == 0xFFFFFFFF {
				next = c
			}
		}
	}
	if changed {
		for i := int64(0); i < b.fats; i++ {
			if _, err := f.WriteAt(t.b, base+b.fatOffset+i*b.fatSectors*b.bytesPerSector); err != nil {
				return 0, fmt.Errorf("esp: write FAT: %w", err)
			}
		}
	}

	// Serial number (and the FAT32 FSInfo counts), primary and backup.
	serialAt := int64(0x27)
	sectors := []int64{0}
	if b.typ == FAT32 {
		serialAt = 0x43
		if b.backupBoot > 0 {
			sectors = append(sectors, b.backupBoot)
		}
	}
	var sb [4]byte
	binary.LittleEndian.PutUint32(sb[:], opts.Serial)
	for _, s := range sectors {
		if _, err := f.WriteAt(sb[:], base+s*b.bytesPerSector+serialAt); err != nil {
			return 0, fmt.Errorf("esp: write serial: %w", err)
		}
	}
	if b.typ == FAT32 && b.fsInfoSector > 0 {
		info := []int64{b.fsInfoSector}
		if b.backupBoot > 0 {
			info = append(info, b.backupBoot+1)
		}
		var fi [8]byte
		binary.LittleEndian.PutUint32(fi[0:], free)
		binary.LittleEndian.PutUint32(fi[4:], next)
		for _, s := range info {
			if _, err := f.WriteAt(fi[:], base+s*b.bytesPerSector+0x1E8); err != nil {
				return 0, fmt.Errorf("esp: write FSInfo: %w", err)
			}
		}
	}
	return b.clusters, nil
}

// fitFAT shrinks the volume when the FAT has fewer entries than the volume
// has clusters: go-diskfs sizes the FAT32 FAT two entries short, which
// fsck.vfat rejects. The dropped clusters at the end were never allocatable.
func fitFAT(f *os.File, base int64, b *bpb) error {
	bits := map[Type]int64{FAT12: 12, FAT16: 16, FAT32: 32}[b.typ]
	entries := b.fatSectors * b.bytesPerSector * 8 / bits
	if int64(b.clusters)+2 <= entries {
		return nil
	}
	clusters := entries - 2
	total := b.dataOffset/b.bytesPerSector + clusters*b.sectorsPerClus
	if (b.typ == FAT32) != (clusters >= 65525) || (b.typ == FAT12) != (clusters < 4085) {
		return fmt.Errorf("esp: cannot fit %d clusters in the FAT without changing the FAT type", b.clusters)
	}
	sectors := []int64{0}
	if b.backupBoot > 0 {
		sectors = append(sectors, b.backupBoot)
	}
	for _, s := range sectors {
		var v []byte
		at := int64(0x20)
		if total <= 0xFFFF && b.typ != FAT32 {
			v, at = binary.LittleEndian.AppendUint16(nil, uint16(total)), 0x13
		} else {
			v = binary.LittleEndian.AppendUint32(nil, uint32(total))
		}
		if _, err := f.WriteAt(v, base+s*b.bytesPerSector+at); err != nil {
			return fmt.Errorf("esp: write boot sector: %w", err)
		}
	}
	b.totalSectors = total
	b.clusters = uint32(clusters)
	return nil
}

// fatTime encodes t (UTC) as FAT date and time; zero or pre-1980 gives the epoch.
func fatTime(t time.Time) (date, tod uint16) {
	t = t.UTC()
	if t.Year() < 1980 {
		return 1<<5 | 1, 0
	}
	if t.Year() > 2107 {
		t = time.Date(2107, 12, 31, 23, 59, 58, 0, time.UTC)
	}
	date = uint16(t.Year()-1980)<<9 | uint16(t.Month())<<5 | uint16(t.Day())
	tod = uint16(t.Hour())<<11 | uint16(t.Minute())<<5 | uint16(t.Second()/2)
	return date, tod
}
