package iso

import (
	"encoding/binary"
	"fmt"
	"os"
	"time"
)

// volumeDescriptors is what the post-Finalize passes need from the volume
// descriptor set go-diskfs wrote at byte base of the file. Block numbers
// are relative to base, as the volume's own pointers are.
type volumeDescriptors struct {
	base         int64
	pvdBlock     int64
	bootBlock    int64
	termBlock    int64
	volumeBlocks uint32
	catalogBlock uint32
}

func readVolumeDescriptors(f *os.File, base int64) (*volumeDescriptors, error) {
	vd := &volumeDescriptors{base: base}
	b := make([]byte, blockSize)
	for blk := int64(16); blk < 64; blk++ {
		if _, err := f.ReadAt(b, base+blk*blockSize); err != nil {
			return nil, fmt.Errorf("iso: read volume descriptor %d: %w", blk, err)
		}
		if string(b[1:6]) != "CD001" {
			return nil, fmt.Errorf("iso: block %d is not a volume descriptor", blk)
		}
		switch b[0] {
		case 0:
			vd.bootBlock = blk
			vd.catalogBlock = binary.LittleEndian.Uint32(b[0x47:])
		case 1:
			vd.pvdBlock = blk
			vd.volumeBlocks = binary.LittleEndian.Uint32(b[80:])
		case 2:
			return nil, fmt.Errorf("iso: unexpected supplementary (Joliet) volume descriptor")
		case 255:
			if vd.pvdBlock == 0 || vd.bootBlock == 0 {
				return nil, fmt.Errorf("iso: no primary or boot record volume descriptor")
			}
			vd.termBlock = blk
			return vd, nil
		}
	}
	return nil, fmt.Errorf("iso: no volume descriptor set terminator")
}

// patchElTorito points the single catalog entry at the appended ESP (an
// absolute block: El Torito is read from the whole device) and blanks the
// validation entry's id, where go-diskfs puts its URL (xorriso leaves it
// empty). With a sector count below 2, EDK2 takes the boot image to run
// from its LBA to the end of the volume space (ElTorito.c), so the
// whole-device volume space must not end before the ESP (see
// writeDeviceDescriptors); xorriso writes 0 for an ESP of more than 0xFFFF
// sectors too.
func patchElTorito(f *os.File, vd *volumeDescriptors, l Layout) error {
	cat := make([]byte, blockSize)
	off := vd.base + int64(vd.catalogBlock)*blockSize
	if _, err := f.ReadAt(cat, off); err != nil {
		return fmt.Errorf("iso: read boot catalog: %w", err)
	}
	v, e := cat[0:32], cat[32:64]
	if v[0] != 1 || v[30] != 0x55 || v[31] != 0xAA || e[0] != 0x88 || e[1] != 0 {
		return fmt.Errorf("iso: unexpected boot catalog from go-diskfs")
	}
	clear(v[4:30])
	var sum uint16
	for i := 0; i < 32; i += 2 {
		sum += binary.LittleEndian.Uint16(v[i:])
	}
	binary.LittleEndian.PutUint16(v[28:], -sum)
	count := l.ESPSize / sectorSize
	if count > 0xFFFF {
		count = 0 // "to the end of the volume": see above
	}
	binary.LittleEndian.PutUint16(e[6:], uint16(count))
	binary.LittleEndian.PutUint32(e[8:], uint32(l.ESPStart/blockSize))
	if _, err := f.WriteAt(cat, off); err != nil {
		return fmt.Errorf("iso: write boot catalog: %w", err)
	}
	return nil
}

// normalize sets every time stamp of the ISO9660 structures to t and
// returns the directory records of the files; with rational, it also gives
// every Rock Ridge PX entry mkisofs -r's ownership and modes.
func normalize(f *os.File, vd *volumeDescriptors, t time.Time, rational bool) ([]fileRecord, error) {
	if t.IsZero() || t.Year() < 1980 {
		t = time.Date(1980, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	t = t.UTC()
	rec := []byte{byte(t.Year() - 1900), byte(t.Month()), byte(t.Day()), byte(t.Hour()), byte(t.Minute()), byte(t.Second()), 0}
	dec := []byte(t.Format("20060102150405") + "00\x00")
	unset := []byte("0000000000000000\x00")

	pvd := make([]byte, blockSize)
	if _, err := f.ReadAt(pvd, vd.base+vd.pvdBlock*blockSize); err != nil {
		return nil, fmt.Errorf("iso: read PVD: %w", err)
	}
	copy(pvd[813:], dec)   // creation
	copy(pvd[830:], dec)   // modification
	copy(pvd[847:], unset) // expiration: go-diskfs writes "now"
	copy(pvd[864:], unset) // effective
	root := pvd[156 : 156+34]
	copy(root[18:25], rec)
	if _, err := f.WriteAt(pvd, vd.base+vd.pvdBlock*blockSize); err != nil {
		return nil, fmt.Errorf("iso: write PVD: %w", err)
	}

	n := &normalizer{f: f, rec: rec, base: vd.base, limit: int64(vd.volumeBlocks) * blockSize, seen: map[uint32]bool{}, catalog: vd.catalogBlock, ce: map[int64]bool{}, rational: rational}
	if err := n.dir(binary.LittleEndian.Uint32(root[2:]), binary.LittleEndian.Uint32(root[10:]), ""); err != nil {
		return nil, err
	}
	if !n.catalogOK {
		return nil, fmt.Errorf("iso: no directory record for the boot catalog")
	}
	return n.files, nil
}

type normalizer struct {
	f     *os.File
	rec   []byte
	base  int64 // byte offset of the volume in f
	limit int64 // bytes of the volume
	seen  map[uint32]bool
	// catalog is the block of /boot.catalog, which go-diskfs records with
	// its 64 bytes and mode 0; xorriso with one block and mode 0444.
	catalog   uint32
	catalogOK bool
	// ce holds the continuation areas of named entries: go-diskfs v1.9.4
	// points every name of a directory that needs one (Rock Ridge names
	// of about 120 bytes or more) at the first one's, so readers see one
	// name several times. Refused rather than written wrong.
	ce    map[int64]bool
	named bool
	// name collects the Rock Ridge NM entries of the current record.
	name  []byte
	files []fileRecord
	// rational: grub-mkrescue's mkisofs -r (see rationalize).
	rational bool
}

func (n *normalizer) dir(lba, size uint32, dirPath string) error {
	if n.seen[lba] {
		return nil
	}
	n.seen[lba] = true
	off := int64(lba) * blockSize
	if off+int64(size) > n.limit {
		return fmt.Errorf("iso: directory at block %d beyond the volume", lba)
	}
	off += n.base
	d := make([]byte, size)
	if _, err := n.f.ReadAt(d, off); err != nil {
		return fmt.Errorf("iso: read directory: %w", err)
	}
	type sub struct {
		lba, size uint32
		path      string
	}
	var subs []sub
	for i := 0; i < len(d); {
		l := int(d[i])
		if l == 0 { // records do not cross blocks: skip to the next one
			i = (i/blockSize + 1) * blockSize
			continue
		}
		if l < 34 || i+l > len(d) {
			return fmt.Errorf("iso: bad directory record at block %d+%d", lba, i)
		}
		r := d[i : i+l]
		copy(r[18:25], n.rec)
		nameLen := int(r[32])
		su := 33 + nameLen
		if nameLen%2 == 0 {
			su++
		}
		isDot := nameLen == 1 && (r[33] == 0 || r[33] == 1)
		n.name = n.name[:0]
		if su < l {
			n.named = !isDot
			if err := n.susp(r[su:]); err != nil {
				return err
			}
		}
		p := string(n.name)
		if dirPath != "" {
			p = dirPath + "/" + p
		}
		if r[25]&2 == 0 && !isDot {
			n.files = append(n.files, fileRecord{path: p, at: off + int64(i),
				extent: extent{lba: binary.LittleEndian.Uint32(r[2:]), size: binary.LittleEndian.Uint32(r[10:])}})
		}
		if r[25]&2 == 0 && binary.LittleEndian.Uint32(r[2:]) == n.catalog && su < l {
			setBoth32(r[10:], blockSize)
			if !setPXMode(r[su:], 0o100444) {
				return fmt.Errorf("iso: no Rock Ridge PX entry for the boot catalog")
			}
			n.catalogOK = true
		}
		if r[25]&2 != 0 && !isDot {
			subs = append(subs, sub{binary.LittleEndian.Uint32(r[2:]), binary.LittleEndian.Uint32(r[10:]), p})
		}
		i += l
	}
	if _, err := n.f.WriteAt(d, off); err != nil {
		return fmt.Errorf("iso: write directory: %w", err)
	}
	for _, s := range subs {
		if err := n.dir(s.lba, s.size, s.path); err != nil {
			return err
		}
	}
	return nil
}

// susp rewrites the TF entries of a System Use area, following CE
// continuation areas.
func (n *normalizer) susp(b []byte) error {
	return eachSUSP(b, func(sig string, e []byte) error {
		l := len(e)
		switch sig {
		case "NM":
			if l > 5 && n.named {
				n.name = append(n.name, e[5:]...)
			}
		case "PX":
			if n.rational {
				rationalize(e)
			}
		case "TF":
			size := 7
			if e[4]&0x80 != 0 {
				size = 17
			}
			for p := 5; p+size <= len(e); p += size {
				if size == 7 {
					copy(e[p:p+7], n.rec)
				} else {
					return fmt.Errorf("iso: long-form Rock Ridge TF not expected")
				}
			}
		case "CE":
			blk := binary.LittleEndian.Uint32(e[4:])
			at := binary.LittleEndian.Uint32(e[12:])
			cl := binary.LittleEndian.Uint32(e[20:])
			off := int64(blk)*blockSize + int64(at)
			if off+int64(cl) > n.limit {
				return fmt.Errorf("iso: continuation area beyond the volume")
			}
			if n.named {
				if n.ce[off] {
					return fmt.Errorf("%w: go-diskfs gave several long names of one directory the same Rock Ridge continuation area (at block %d); names of about 120 bytes or more need one each", ErrInvalidPath, blk)
				}
				n.ce[off] = true
			}
			off += n.base
			c := make([]byte, cl)
			if _, err := n.f.ReadAt(c, off); err != nil {
				return fmt.Errorf("iso: read continuation area: %w", err)
			}
			if err := n.susp(c); err != nil {
				return err
			}
			if _, err := n.f.WriteAt(c, off); err != nil {
				return fmt.Errorf("iso: write continuation area: %w", err)
			}
		}
		return nil
	})
}

// eachSUSP calls fn with each entry of a System Use area (signature and
// the whole entry, header included) up to its ST entry or padding.
func eachSUSP(b []byte, fn func(sig string, e []byte) error) error {
	for i := 0; i+4 <= len(b); {
		sig, l := string(b[i:i+2]), int(b[i+2])
		if l < 4 || i+l > len(b) || sig == "ST" {
			return nil // padding, or the end of the area
		}
		if err := fn(sig, b[i:i+l]); err != nil {
			return err
		}
		i += l
	}
	return nil
}

// setPXMode sets the file mode of the Rock Ridge PX entry of a System Use
// area, reporting whether there was one.
func setPXMode(b []byte, mode uint32) bool {
	for i := 0; i+4 <= len(b); {
		l := int(b[i+2])
		if l < 4 || i+l > len(b) {
			return false
		}
		if string(b[i:i+2]) == "PX" && l >= 12 {
			setBoth32(b[i+4:], mode)
			return true
		}
		i += l
	}
	return false
}
