package uki

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"slices"

	"github.com/siderolabs/talos/pkg/machinery/version"

	"github.com/kiln-dev/kiln/builder/internal/kcopy"
	"github.com/kiln-dev/kiln/internal/iox"
)

// Blob is section content streamed from R, exactly Size bytes long, or
// made of Parts (R nil), whose sizes add up to Size.
type Blob struct {
	R    io.Reader
	Size int64
	// Parts are the content's pieces in order, e.g. an initramfs as the
	// release's file followed by what a schematic appends: nothing is
	// concatenated aside first.
	Parts []Part
}

// Part is a piece of a Blob.
type Part struct {
	R *io.SectionReader
	// Sum, if not nil, is SumOf(R)'s value. AssembleAt then copies a part
	// that is a section of a file in the kernel (copy_file_range) and takes
	// its share of the PE checksum from Sum instead of reading it.
	Sum *Sum
}

// Profile is one extra UKI profile: a .profile section (os-release style
// text, e.g. "ID=reset\nTITLE=Reset system disk") followed by its .cmdline
// section when Cmdline is not empty.
type Profile struct {
	Profile string
	Cmdline string
}

// Sections are the contents added to the stub. Empty optional sections are
// omitted; Linux is required.
type Sections struct {
	OSRel   []byte // .osrel, see OSRelease
	Cmdline string // .cmdline
	Uname   string // .uname, the kernel release (uname -r)
	Splash  []byte // .splash, a BMP image (optional)
	PCRPKey []byte // .pcrpkey, PEM public key for PCR policies (optional)
	Linux   Blob   // .linux, the kernel image
	Initrd  Blob   // .initrd, the initramfs (optional)
	// Profiles are appended after .initrd; nil builds a single-profile UKI.
	Profiles []Profile
}

// Options change how the stub is treated.
type Options struct {
	// StripSymbols drops a COFF symbol table from the stub instead of
	// failing with ErrSymbolTable.
	StripSymbols bool
}

// SectionInfo describes one section of the assembled image.
type SectionInfo struct {
	Name           string
	VirtualAddress uint32
	VirtualSize    uint32
	Offset         uint32 // PointerToRawData
	RawSize        uint32 // SizeOfRawData
}

// Result describes the assembled image.
type Result struct {
	Size     int64  // bytes written
	Checksum uint32 // PE checksum of the image
	// ChecksumWritten is false when out was not an io.WriterAt and the
	// header's CheckSum field was left 0.
	ChecksumWritten bool
	Sections        []SectionInfo // stub sections, then added ones, in file order
}

// OSRelease returns the .osrel content Talos uses:
// machinery version.OSReleaseFor(name, version), e.g. ("Talos", "v1.13.0").
func OSRelease(name, ver string) ([]byte, error) {
	return version.OSReleaseFor(name, ver)
}

// ErrInput reports unusable section contents.
var ErrInput = errors.New("invalid UKI input")

const copyBufferSize = 1 << 20

type newSection struct {
	name string
	data []byte
	blob *Blob
	size int64
	info SectionInfo
}

// Assemble writes a UKI made of the stub read from stub and secs to out.
// If out also implements io.WriterAt, it must start at offset 0 of the
// destination: the checksum is patched there at the end. Readers in secs
// are read to exactly their Size; shorter or longer content is an error.
// On error, out holds a partial image and must be discarded.
func Assemble(ctx context.Context, stubR io.ReaderAt, secs Sections, out io.Writer, opts Options) (Result, error) {
	return assemble(ctx, stubR, secs, out, nil, opts)
}

// AssembleAt writes the UKI Assemble would write at offset off of out,
// e.g. straight at its place in an ISO. Every byte is written once: the
// parts of a blob that are sections of a file and come with their Sum are
// copied in the kernel, never read; the rest passes through user space for
// the checksum.
func AssembleAt(ctx context.Context, stubR io.ReaderAt, secs Sections, out *os.File, off int64, opts Options) (Result, error) {
	fw := &fileWriter{f: out, base: off}

	return assemble(ctx, stubR, secs, fw, fw, opts)
}

// fileWriter writes at base of f onwards, where skip leaves bytes written
// by other means.
type fileWriter struct {
	f    *os.File
	base int64
	n    int64
}

func (w *fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.WriteAt(p, w.base+w.n)
	w.n += int64(n)

	return n, err
}

// WriteAt writes at off from base.
func (w *fileWriter) WriteAt(p []byte, off int64) (int, error) { return w.f.WriteAt(p, w.base+off) }

// Size is the size of the UKI Assemble would write, without writing it.
func Size(stubR io.ReaderAt, secs Sections, opts Options) (int64, error) {
	s, added, err := prepare(stubR, secs, opts)
	if err != nil {
		return 0, err
	}

	if _, _, err := layoutHeaders(s, added); err != nil {
		return 0, err
	}

	if len(added) == 0 {
		return int64(len(s.data)), nil
	}

	last := added[len(added)-1].info

	return int64(last.Offset) + int64(last.RawSize), nil
}

// prepare reads the stub and plans the added sections.
func prepare(stubR io.ReaderAt, secs Sections, opts Options) (*stub, []*newSection, error) {
	s, err := readStub(stubR)
	if err != nil {
		return nil, nil, err
	}

	if s.symPtr != 0 || s.numSyms != 0 {
		if !opts.StripSymbols {
			return nil, nil, ErrSymbolTable
		}

		if err := s.stripSymbols(); err != nil {
			return nil, nil, err
		}
	}

	added, err := plan(secs)
	if err != nil {
		return nil, nil, err
	}

	for _, sec := range s.sections {
		if slices.ContainsFunc(added, func(n *newSection) bool { return n.name == sec.nameString() }) {
			return nil, nil, fmt.Errorf("%w: stub already has a %s section", ErrNotStub, sec.nameString())
		}
	}

	return s, added, nil
}

// assemble is Assemble; with file set (out itself), parts with a Sum are
// copied in the kernel.
func assemble(ctx context.Context, stubR io.ReaderAt, secs Sections, out io.Writer, file *fileWriter, opts Options) (Result, error) {
	s, added, err := prepare(stubR, secs, opts)
	if err != nil {
		return Result{}, err
	}

	// Drop the Authenticode signature; it cannot survive the change.
	if _, _, off := s.dataDir(dirSecurity); off >= 0 {
		binary.LittleEndian.PutUint64(s.data[off:], 0)
	}

	hdr, stubData, err := layoutHeaders(s, added)
	if err != nil {
		return Result{}, err
	}

	ck := &checksum{skip: [2]int64{int64(s.optOff + optCheckSum), int64(s.optOff + optCheckSum + 4)}}
	w := &countWriter{w: io.MultiWriter(out, ck)}

	if _, err := w.Write(hdr); err != nil {
		return Result{}, err
	}

	if _, err := w.Write(stubData); err != nil {
		return Result{}, err
	}

	buf := make([]byte, copyBufferSize)

	for _, n := range added {
		if err := pad(w, int64(n.info.Offset)); err != nil {
			return Result{}, err
		}

		if err := writeSection(ctx, w, ck, file, n, buf); err != nil {
			return Result{}, err
		}
	}

	if len(added) > 0 {
		last := added[len(added)-1].info
		if err := pad(w, int64(last.Offset)+int64(last.RawSize)); err != nil {
			return Result{}, err
		}
	}

	res := Result{Size: w.n, Checksum: ck.value()}

	if wa, ok := out.(io.WriterAt); ok {
		var b [4]byte

		binary.LittleEndian.PutUint32(b[:], res.Checksum)

		if _, err := wa.WriteAt(b[:], int64(s.optOff+optCheckSum)); err != nil {
			return Result{}, fmt.Errorf("write checksum: %w", err)
		}

		res.ChecksumWritten = true
	}

	for _, sec := range s.sections {
		res.Sections = append(res.Sections, SectionInfo{
			Name: sec.nameString(), VirtualAddress: sec.virtualAddr, VirtualSize: sec.virtualSize,
			Offset: sec.rawPtr, RawSize: sec.rawSize,
		})
	}

	for _, n := range added {
		res.Sections = append(res.Sections, n.info)
	}

	return res, nil
}

// plan lists the sections to add, in Talos order.
func plan(secs Sections) ([]*newSection, error) {
	if (secs.Linux.R == nil && secs.Linux.Parts == nil) || secs.Linux.Size <= 0 {
		return nil, fmt.Errorf("%w: .linux is required", ErrInput)
	}

	if secs.Initrd.Size < 0 || (secs.Initrd.Size > 0 && secs.Initrd.R == nil && secs.Initrd.Parts == nil) {
		return nil, fmt.Errorf("%w: .initrd has size %d and reader %v", ErrInput, secs.Initrd.Size, secs.Initrd.R != nil)
	}

	for name, b := range map[string]Blob{".linux": secs.Linux, ".initrd": secs.Initrd} {
		if b.Parts == nil {
			continue
		}

		if b.R != nil {
			return nil, fmt.Errorf("%w: %s has both a reader and parts", ErrInput, name)
		}

		var n int64
		for _, p := range b.Parts {
			if p.R == nil {
				return nil, fmt.Errorf("%w: %s has a part without a reader", ErrInput, name)
			}

			n += p.R.Size()
		}

		if n != b.Size {
			return nil, fmt.Errorf("%w: %s parts are %d bytes, want %d", ErrInput, name, n, b.Size)
		}
	}

	var out []*newSection

	addBytes := func(name string, data []byte) {
		if len(data) > 0 {
			out = append(out, &newSection{name: name, data: data, size: int64(len(data))})
		}
	}

	addBytes(".osrel", secs.OSRel)
	addBytes(".cmdline", []byte(secs.Cmdline))
	addBytes(".uname", []byte(secs.Uname))
	addBytes(".splash", secs.Splash)
	addBytes(".pcrpkey", secs.PCRPKey)
	out = append(out, &newSection{name: ".linux", blob: &secs.Linux, size: secs.Linux.Size})

	if secs.Initrd.Size > 0 {
		out = append(out, &newSection{name: ".initrd", blob: &secs.Initrd, size: secs.Initrd.Size})
	}

	for i, p := range secs.Profiles {
		if p.Profile == "" {
			return nil, fmt.Errorf("%w: profile %d has no .profile content", ErrInput, i)
		}

		addBytes(".profile", []byte(p.Profile))
		addBytes(".cmdline", []byte(p.Cmdline))
	}

	return out, nil
}

// layoutHeaders assigns addresses to the added sections and returns the new
// header block and the stub's section data that follows it.
func layoutHeaders(s *stub, added []*newSection) (hdr, stubData []byte, err error) {
	fa, sa := int64(s.fileAlign), int64(s.secAlign)

	firstRaw, firstVA := int64(len(s.data)), int64(math.MaxUint32)
	for _, sec := range s.sections {
		if sec.rawSize > 0 {
			firstRaw = min(firstRaw, int64(sec.rawPtr))
		}

		firstVA = min(firstVA, int64(sec.virtualAddr))
	}

	oldTableEnd := int64(s.secOff + len(s.sections)*sectionHeaderSize)
	need := oldTableEnd + int64(len(added))*sectionHeaderSize

	// The space the new section headers take must be unused.
	if z := s.data[oldTableEnd:min(need, firstRaw)]; !bytes.Equal(z, make([]byte, len(z))) {
		return nil, nil, fmt.Errorf("%w: data after the section table", ErrNotStub)
	}

	sizeOfHdr := max(int64(s.sizeOfHdr), alignUp(need, fa))
	if sizeOfHdr > firstVA {
		return nil, nil, fmt.Errorf("%w: %d section headers do not fit before the first section", ErrNotStub, len(s.sections)+len(added))
	}

	var delta int64
	if sizeOfHdr > firstRaw {
		delta = alignUp(sizeOfHdr-firstRaw, fa)
		if err := s.shiftRaw(uint32(delta)); err != nil {
			return nil, nil, err
		}
	}

	va := alignUp(int64(s.imageEnd), sa)
	raw := alignUp(int64(len(s.data))+delta, fa)

	var initData int64

	for _, n := range added {
		va = alignUp(va, sa)
		n.info = SectionInfo{
			Name: n.name, VirtualAddress: uint32(va), VirtualSize: uint32(n.size),
			Offset: uint32(raw), RawSize: uint32(alignUp(n.size, fa)),
		}
		va += n.size
		raw += alignUp(n.size, fa)
		initData += alignUp(n.size, fa)

		if va > math.MaxUint32 || raw > math.MaxUint32 {
			return nil, nil, fmt.Errorf("%w: image exceeds 4 GiB", ErrInput)
		}
	}

	hdr = make([]byte, firstRaw+delta)
	copy(hdr, s.data[:firstRaw])

	for i, n := range added {
		h := hdr[oldTableEnd+int64(i)*sectionHeaderSize:]
		copy(h[:8], n.name)
		binary.LittleEndian.PutUint32(h[8:], n.info.VirtualSize)
		binary.LittleEndian.PutUint32(h[12:], n.info.VirtualAddress)
		binary.LittleEndian.PutUint32(h[16:], n.info.RawSize)
		binary.LittleEndian.PutUint32(h[20:], n.info.Offset)
		binary.LittleEndian.PutUint32(h[36:], scnData)
	}

	coff := s.peOff + 4
	binary.LittleEndian.PutUint16(hdr[coff+2:], uint16(len(s.sections)+len(added)))

	opt := hdr[s.optOff:]
	binary.LittleEndian.PutUint32(opt[optSizeOfInitializedData:], le32(opt, optSizeOfInitializedData)+uint32(initData))
	binary.LittleEndian.PutUint32(opt[optSizeOfImage:], uint32(alignUp(va, sa)))
	binary.LittleEndian.PutUint32(opt[optSizeOfHeaders:], uint32(sizeOfHdr))
	binary.LittleEndian.PutUint32(opt[optCheckSum:], 0)

	return hdr, s.data[firstRaw:], nil
}

func writeSection(ctx context.Context, w *countWriter, ck *checksum, file *fileWriter, n *newSection, buf []byte) error {
	if n.blob == nil {
		_, err := w.Write(n.data)

		return err
	}

	if n.blob.R == nil {
		for _, p := range n.blob.Parts {
			if err := writePart(ctx, w, ck, file, p, buf); err != nil {
				return fmt.Errorf("%s: %w", n.name, err)
			}
		}

		return nil
	}

	copied, err := io.CopyBuffer(w, iox.ContextReader(ctx, io.LimitReader(n.blob.R, n.size)), buf)
	if err != nil {
		return fmt.Errorf("%s: %w", n.name, err)
	}

	if copied != n.size {
		return fmt.Errorf("%w: %s is %d bytes, want %d", ErrInput, n.name, copied, n.size)
	}

	var one [1]byte
	if k, _ := io.ReadFull(n.blob.R, one[:]); k > 0 {
		return fmt.Errorf("%w: %s is longer than %d bytes", ErrInput, n.name, n.size)
	}

	return nil
}

// writePart writes p at w's offset: in the kernel when it can (file set,
// p a section of a file with its Sum, at an even offset past the checksum
// field), else read through w and the checksum.
func writePart(ctx context.Context, w *countWriter, ck *checksum, file *fileWriter, p Part, buf []byte) error {
	if file != nil && p.Sum != nil && p.Sum.n == p.R.Size() && ck.canAdd() {
		if _, _, _, ok := kcopy.Section(p.R); ok {
			if err := kcopy.CopySection(ctx, file.f, file.base+file.n, p.R); err != nil {
				return err
			}

			ck.addSum(*p.Sum)
			w.n += p.R.Size()
			file.n += p.R.Size()

			return nil
		}
	}

	r := io.NewSectionReader(p.R, 0, p.R.Size())

	copied, err := io.CopyBuffer(w, iox.ContextReader(ctx, r), buf)
	if err != nil {
		return err
	}

	if copied != p.R.Size() {
		return fmt.Errorf("%w: a part is %d bytes, want %d", ErrInput, copied, p.R.Size())
	}

	return nil
}

// pad writes zeros up to file offset to.
func pad(w *countWriter, to int64) error {
	if to < w.n {
		return fmt.Errorf("internal error: at offset %d, past %d", w.n, to)
	}

	_, err := w.Write(make([]byte, to-w.n))

	return err
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)

	return n, err
}
