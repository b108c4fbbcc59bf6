package iso

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
)

// partOffset is xorriso's -partition_offset 16, in ISO blocks: go-diskfs
// writes the volume from byte 32 KiB (the start of MBR partition 1), with
// every block address relative to that start, so partition 1 alone is a
// complete, mountable ISO9660 volume. The whole device needs a second
// superblock with absolute addresses; xorriso writes it and a second
// directory tree, and so does writeDeviceTree.
const partOffset = 16

// metaRegion returns the blocks [first, end) of the volume that hold its
// directories, their continuation areas and the path tables: go-diskfs
// writes them in one run, from the root directory to the end of the M path
// table, before any file data. writeDeviceTree checks every structure it
// follows lies inside.
func metaRegion(pvd []byte) (first, end uint32) {
	first = binary.LittleEndian.Uint32(pvd[156+2:])
	ptSize := binary.LittleEndian.Uint32(pvd[132:])
	ptM := binary.BigEndian.Uint32(pvd[148:])
	return first, ptM + (ptSize+blockSize-1)/blockSize
}

// deviceTree rewrites a copy of the metadata region for the whole-device
// view: addresses inside the region move to the copy at block at (absolute),
// every other one (file data) moves by partOffset.
type deviceTree struct {
	m         []byte // the region, rewritten in place
	first     uint32 // first block of the region, volume-relative
	at        uint32 // first block of the copy, absolute
	seenDir   map[uint32]bool
	seenBlock map[int]bool // continuation areas done, by byte offset in m
}

func (d *deviceTree) shift(lba uint32) uint32 {
	if lba >= d.first && int64(lba-d.first)*blockSize < int64(len(d.m)) {
		return lba - d.first + d.at
	}
	return lba + partOffset
}

// shiftBoth rewrites an ISO9660 both-endian 32-bit address in b[0:8].
func (d *deviceTree) shiftBoth(b []byte) uint32 {
	old := binary.LittleEndian.Uint32(b)
	n := d.shift(old)
	binary.LittleEndian.PutUint32(b, n)
	binary.BigEndian.PutUint32(b[4:], n)
	return old
}

// region returns the bytes of volume blocks lba.. of length n inside m.
func (d *deviceTree) region(lba uint32, n int64) ([]byte, error) {
	if lba < d.first {
		return nil, fmt.Errorf("iso: block %d before the directory region", lba)
	}
	off := int64(lba-d.first) * blockSize
	if off+n > int64(len(d.m)) {
		return nil, fmt.Errorf("iso: %d bytes at block %d beyond the directory region", n, lba)
	}
	return d.m[off : off+n], nil
}

func (d *deviceTree) dir(lba, size uint32) error {
	if d.seenDir[lba] {
		return nil
	}
	d.seenDir[lba] = true
	b, err := d.region(lba, int64(size))
	if err != nil {
		return err
	}
	var subs [][2]uint32
	for i := 0; i < len(b); {
		l := int(b[i])
		if l == 0 {
			i = (i/blockSize + 1) * blockSize
			continue
		}
		if l < 34 || i+l > len(b) {
			return fmt.Errorf("iso: bad directory record at block %d+%d", lba, i)
		}
		r := b[i : i+l]
		old := d.shiftBoth(r[2:10])
		nameLen := int(r[32])
		isDot := nameLen == 1 && (r[33] == 0 || r[33] == 1)
		if r[25]&2 != 0 && !isDot {
			subs = append(subs, [2]uint32{old, binary.LittleEndian.Uint32(r[10:])})
		}
		su := 33 + nameLen
		if nameLen%2 == 0 {
			su++
		}
		if su < l {
			if err := d.susp(r[su:]); err != nil {
				return err
			}
		}
		i += l
	}
	for _, s := range subs {
		if err := d.dir(s[0], s[1]); err != nil {
			return err
		}
	}
	return nil
}

// susp rewrites the addresses of a System Use area: CE (continuation
// areas, followed), CL and PL (Rock Ridge relocated directories).
func (d *deviceTree) susp(b []byte) error {
	return eachSUSP(b, func(sig string, e []byte) error {
		l := len(e)
		switch sig {
		case "CE":
			if l < 28 {
				return fmt.Errorf("iso: short CE entry")
			}
			blk := d.shiftBoth(e[4:12])
			at := binary.LittleEndian.Uint32(e[12:])
			cl := binary.LittleEndian.Uint32(e[20:])
			area, err := d.region(blk, int64(at)+int64(cl))
			if err != nil {
				return err
			}
			key := int(int64(blk-d.first)*blockSize) + int(at)
			if !d.seenBlock[key] {
				d.seenBlock[key] = true
				if err := d.susp(area[at:]); err != nil {
					return err
				}
			}
		case "CL", "PL":
			if l < 12 {
				return fmt.Errorf("iso: short %s entry", sig)
			}
			d.shiftBoth(e[4:12])
		}
		return nil
	})
}

// pathTable rewrites the directory addresses of a path table.
func (d *deviceTree) pathTable(lba, size uint32, order binary.ByteOrder) error {
	b, err := d.region(lba, int64(size))
	if err != nil {
		return err
	}
	for i := 0; i+8 <= len(b); {
		n := int(b[i])
		if n == 0 {
			return fmt.Errorf("iso: bad path table entry at %d", i)
		}
		order.PutUint32(b[i+2:], d.shift(order.Uint32(b[i+2:])))
		i += 8 + n + n%2
	}
	return nil
}

// writeDeviceTree writes the whole-device copy of the directory region at
// absolute block at and returns the whole-device primary volume descriptor
// (volume space size still to be set).
func writeDeviceTree(f *os.File, vd *volumeDescriptors, pvd []byte, at uint32) ([]byte, error) {
	first, end := metaRegion(pvd)
	if first <= uint32(vd.termBlock) || end <= first || end > vd.volumeBlocks {
		return nil, fmt.Errorf("iso: unexpected directory region %d..%d in a volume of %d blocks", first, end, vd.volumeBlocks)
	}
	d := &deviceTree{m: make([]byte, int64(end-first)*blockSize), first: first, at: at,
		seenDir: map[uint32]bool{}, seenBlock: map[int]bool{}}
	if _, err := f.ReadAt(d.m, vd.base+int64(first)*blockSize); err != nil {
		return nil, fmt.Errorf("iso: read directories: %w", err)
	}
	dev := bytes.Clone(pvd)
	root := dev[156 : 156+34]
	if err := d.dir(binary.LittleEndian.Uint32(root[2:]), binary.LittleEndian.Uint32(root[10:])); err != nil {
		return nil, err
	}
	d.shiftBoth(root[2:10])
	ptSize := binary.LittleEndian.Uint32(dev[132:])
	for _, pt := range []struct {
		off   int
		order binary.ByteOrder
	}{{140, binary.LittleEndian}, {144, binary.LittleEndian}, {148, binary.BigEndian}, {152, binary.BigEndian}} {
		lba := pt.order.Uint32(dev[pt.off:])
		if lba == 0 { // optional table absent
			continue
		}
		if err := d.pathTable(lba, ptSize, pt.order); err != nil {
			return nil, err
		}
		pt.order.PutUint32(dev[pt.off:], d.shift(lba))
	}
	if _, err := f.WriteAt(d.m, int64(at)*blockSize); err != nil {
		return nil, fmt.Errorf("iso: write device directories: %w", err)
	}
	return dev, nil
}

// writeDescriptors writes both volume descriptor sets as xorriso does:
//   - the whole device (block 16): PVD over the whole image, the El Torito
//     boot record (catalog address made absolute), terminator;
//   - partition 1 (its block 16, absolute block 32): PVD whose volume space
//     is the partition, terminator; no boot record.
func writeDescriptors(f *os.File, vd *volumeDescriptors, pvd, dev []byte, l Layout) error {
	boot := make([]byte, blockSize)
	if _, err := f.ReadAt(boot, vd.base+vd.bootBlock*blockSize); err != nil {
		return fmt.Errorf("iso: read boot record: %w", err)
	}
	binary.LittleEndian.PutUint32(boot[0x47:], vd.catalogBlock+partOffset)
	term := make([]byte, blockSize)
	term[0] = 255
	copy(term[1:7], "CD001\x01")

	setBoth32(dev[80:], uint32(l.Size/blockSize))
	setBoth32(pvd[80:], uint32((l.ESPStart-vd.base)/blockSize))

	writes := []struct {
		b   []byte
		off int64
	}{
		{dev, 16 * blockSize},
		{boot, 17 * blockSize},
		{term, 18 * blockSize},
		{pvd, vd.base + 16*blockSize},
		{term, vd.base + 17*blockSize},
		{make([]byte, blockSize), vd.base + 18*blockSize},
	}
	if vd.pvdBlock != 16 || vd.bootBlock != 17 || vd.termBlock != 18 {
		return fmt.Errorf("iso: unexpected volume descriptor blocks %d/%d/%d", vd.pvdBlock, vd.bootBlock, vd.termBlock)
	}
	for _, w := range writes {
		if _, err := f.WriteAt(w.b, w.off); err != nil {
			return fmt.Errorf("iso: write volume descriptors: %w", err)
		}
	}
	return nil
}

func setBoth32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}
