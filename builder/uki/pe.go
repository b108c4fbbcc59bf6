package uki

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// PE/COFF constants used here (Microsoft PE format specification).
const (
	machineAMD64 = 0x8664
	machineARM64 = 0xaa64

	optMagicPE32Plus = 0x20b

	coffHeaderSize    = 20
	sectionHeaderSize = 40
	debugEntrySize    = 28

	dirSecurity = 4
	dirDebug    = 6

	// Offsets inside the PE32+ optional header.
	optSizeOfInitializedData = 8
	optSectionAlignment      = 32
	optFileAlignment         = 36
	optSizeOfImage           = 56
	optSizeOfHeaders         = 60
	optCheckSum              = 64
	optNumberOfRvaAndSizes   = 108
	optDataDirectories       = 112

	// scnData is IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ.
	scnData = 0x40000040

	maxStubSize = 64 << 20
)

// Errors returned for stubs Assemble cannot use.
var (
	ErrNotStub     = errors.New("not a PE32+ EFI stub")
	ErrSymbolTable = errors.New("stub has a COFF symbol table (set StripSymbols to drop it)")
)

type section struct {
	name        [8]byte
	virtualSize uint32
	virtualAddr uint32
	rawSize     uint32
	rawPtr      uint32
}

func (s section) nameString() string {
	n := 0
	for n < len(s.name) && s.name[n] != 0 {
		n++
	}

	return string(s.name[:n])
}

// stub is a parsed systemd-stub image.
type stub struct {
	data      []byte // file bytes [0, dataEnd): headers and all section raw data
	peOff     int    // offset of "PE\0\0"
	optOff    int    // offset of the optional header
	secOff    int    // offset of the section table
	machine   uint16
	sections  []section
	secAlign  uint32
	fileAlign uint32
	sizeOfHdr uint32
	imageEnd  uint32 // end of the highest section in memory
	symPtr    uint32
	numSyms   uint32
}

func le16(b []byte, off int) uint16 { return binary.LittleEndian.Uint16(b[off:]) }
func le32(b []byte, off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }

func alignUp(v, a int64) int64 { return (v + a - 1) / a * a }

// readStub parses a PE32+ image from r and reads its headers and section
// data into memory.
func readStub(r io.ReaderAt) (*stub, error) {
	head := make([]byte, 4096)

	n, err := r.ReadAt(head, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read stub: %w", err)
	}

	head = head[:n]
	if len(head) < 0x40 || head[0] != 'M' || head[1] != 'Z' {
		return nil, fmt.Errorf("%w: no MZ header", ErrNotStub)
	}

	s := &stub{peOff: int(le32(head, 0x3c))}
	if s.peOff+4+coffHeaderSize > len(head) || string(head[s.peOff:s.peOff+4]) != "PE\x00\x00" {
		return nil, fmt.Errorf("%w: no PE signature", ErrNotStub)
	}

	coff := s.peOff + 4
	s.machine = le16(head, coff)
	numSec := int(le16(head, coff+2))
	s.symPtr = le32(head, coff+8)
	s.numSyms = le32(head, coff+12)
	optSize := int(le16(head, coff+16))
	s.optOff = coff + coffHeaderSize
	s.secOff = s.optOff + optSize

	if s.machine != machineAMD64 && s.machine != machineARM64 {
		return nil, fmt.Errorf("%w: machine %#x is neither x86_64 nor aarch64", ErrNotStub, s.machine)
	}

	if optSize < optDataDirectories || s.secOff+numSec*sectionHeaderSize > len(head) {
		return nil, fmt.Errorf("%w: headers do not fit in 4 KiB", ErrNotStub)
	}

	opt := head[s.optOff:s.secOff]
	if le16(opt, 0) != optMagicPE32Plus {
		return nil, fmt.Errorf("%w: optional header magic %#x", ErrNotStub, le16(opt, 0))
	}

	if dirs := int(le32(opt, optNumberOfRvaAndSizes)); optDataDirectories+8*dirs > optSize {
		return nil, fmt.Errorf("%w: %d data directories do not fit the optional header", ErrNotStub, dirs)
	}

	s.secAlign = le32(opt, optSectionAlignment)
	s.fileAlign = le32(opt, optFileAlignment)
	s.sizeOfHdr = le32(opt, optSizeOfHeaders)

	if !pow2(s.secAlign) || !pow2(s.fileAlign) || s.fileAlign < 512 || s.secAlign < s.fileAlign {
		return nil, fmt.Errorf("%w: bad alignment (section %#x, file %#x)", ErrNotStub, s.secAlign, s.fileAlign)
	}

	dataEnd := int64(s.sizeOfHdr)

	for i := range numSec {
		h := head[s.secOff+i*sectionHeaderSize:]

		var sec section

		copy(sec.name[:], h[:8])
		sec.virtualSize = le32(h, 8)
		sec.virtualAddr = le32(h, 12)
		sec.rawSize = le32(h, 16)
		sec.rawPtr = le32(h, 20)
		s.sections = append(s.sections, sec)

		if sec.rawSize > 0 {
			dataEnd = max(dataEnd, int64(sec.rawPtr)+int64(sec.rawSize))
		}

		memSize := sec.virtualSize
		if memSize == 0 {
			memSize = sec.rawSize
		}

		s.imageEnd = max(s.imageEnd, sec.virtualAddr+memSize)
	}

	if dataEnd > maxStubSize {
		return nil, fmt.Errorf("%w: sections extend to %d bytes", ErrNotStub, dataEnd)
	}

	s.data = make([]byte, dataEnd)
	if _, err := r.ReadAt(s.data, 0); err != nil {
		return nil, fmt.Errorf("read stub sections: %w", err)
	}

	return s, nil
}

func pow2(v uint32) bool { return v != 0 && v&(v-1) == 0 }

// stripSymbols drops the COFF symbol table. It must lie after all section
// data (it is then simply not copied), and no section name may refer to its
// string table.
func (s *stub) stripSymbols() error {
	if s.symPtr == 0 && s.numSyms == 0 {
		return nil
	}

	if int64(s.symPtr) < int64(len(s.data)) {
		return fmt.Errorf("%w: symbol table at %#x overlaps section data", ErrNotStub, s.symPtr)
	}

	for _, sec := range s.sections {
		if sec.name[0] == '/' {
			return fmt.Errorf("%w: section name %q refers to the COFF string table", ErrNotStub, sec.nameString())
		}
	}

	coff := s.peOff + 4
	binary.LittleEndian.PutUint32(s.data[coff+8:], 0)
	binary.LittleEndian.PutUint32(s.data[coff+12:], 0)
	s.symPtr, s.numSyms = 0, 0

	return nil
}

// dataDir returns data directory i (RVA, size) and the header offset of
// its entry.
func (s *stub) dataDir(i int) (rva, size uint32, off int) {
	opt := s.data[s.optOff:]
	if uint32(i) >= le32(opt, optNumberOfRvaAndSizes) {
		return 0, 0, -1
	}

	off = s.optOff + optDataDirectories + 8*i

	return le32(s.data, off), le32(s.data, off+4), off
}

// fileOffset maps an RVA to a file offset inside s.data.
func (s *stub) fileOffset(rva, size uint32) (int, bool) {
	for _, sec := range s.sections {
		if rva >= sec.virtualAddr && rva+size <= sec.virtualAddr+min(sec.virtualSize, sec.rawSize) {
			off := int(sec.rawPtr + (rva - sec.virtualAddr))

			return off, off+int(size) <= len(s.data)
		}
	}

	return 0, false
}

// shiftRaw moves every raw-data pointer by delta bytes: section headers and
// debug directory entries (which hold file offsets).
func (s *stub) shiftRaw(delta uint32) error {
	for i := range s.sections {
		if s.sections[i].rawSize > 0 || s.sections[i].rawPtr != 0 {
			s.sections[i].rawPtr += delta
			binary.LittleEndian.PutUint32(s.data[s.secOff+i*sectionHeaderSize+20:], s.sections[i].rawPtr)
		}
	}

	rva, size, _ := s.dataDir(dirDebug)
	if rva == 0 || size == 0 {
		return nil
	}

	// s.sections already moved; look the directory up at its old offset.
	off, ok := s.fileOffset(rva, size)
	if !ok {
		return fmt.Errorf("%w: debug directory outside section data", ErrNotStub)
	}

	off -= int(delta)
	for e := off; e+debugEntrySize <= off+int(size); e += debugEntrySize {
		if p := le32(s.data, e+24); p != 0 {
			binary.LittleEndian.PutUint32(s.data[e+24:], p+delta)
		}
	}

	return nil
}
