package demo

import (
	"archive/tar"
	"bytes"
	"debug/pe"
	"encoding/binary"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
)

// epochSeconds is the fixed timestamp of every tar header, cpio header and
// image config, so that digests depend on the content alone
// (2026-01-01T00:00:00Z, an arbitrary SOURCE_DATE_EPOCH).
const epochSeconds = 1767225600

func epoch() time.Time { return time.Unix(epochSeconds, 0).UTC() }

// entry is one file of a layer. Parent directories are added by layerOf.
type entry struct {
	path string // relative, without leading or trailing "/"
	mode int64  // permission bits
	data []byte
	link string // symlink target; data is ignored when set
	dir  bool
	// label is the SELinux label, written as the PAX record
	// SCHILY.xattr.security.selinux as Talos's extension images carry it
	label string
}

func file(p string, data []byte) entry { return entry{path: p, mode: 0o644, data: data} }
func exe(p string, data []byte) entry  { return entry{path: p, mode: 0o755, data: data} }

func labelled(e entry, label string) entry { e.label = label; return e }

// layerOf builds a gzip-compressed OCI layer from entries, adding every
// parent directory and sorting by path so that the tar bytes, and so the
// digests, do not depend on the order the caller listed the files in.
func layerOf(entries []entry) (v1.Layer, error) {
	all := map[string]entry{}

	for _, e := range entries {
		if _, dup := all[e.path]; dup {
			return nil, fmt.Errorf("layer: duplicate path %q", e.path)
		}

		all[e.path] = e

		for dir := path.Dir(e.path); dir != "."; dir = path.Dir(dir) {
			if _, ok := all[dir]; !ok {
				all[dir] = entry{path: dir, mode: 0o755, dir: true}
			}
		}
	}

	paths := make([]string, 0, len(all))
	for p := range all {
		paths = append(paths, p)
	}

	sort.Strings(paths)

	var buf bytes.Buffer

	tw := tar.NewWriter(&buf)

	for _, p := range paths {
		e := all[p]
		hdr := &tar.Header{
			Name:    p,
			Mode:    e.mode,
			ModTime: epoch(),
			Format:  tar.FormatPAX,
		}

		if e.label != "" {
			hdr.PAXRecords = map[string]string{"SCHILY.xattr.security.selinux": e.label}
		}

		switch {
		case e.dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case e.link != "":
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.link
			hdr.Mode = 0o777
		default:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(e.data))
		}

		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("layer: tar header %s: %w", p, err)
		}

		if hdr.Typeflag == tar.TypeReg {
			if _, err := tw.Write(e.data); err != nil {
				return nil, fmt.Errorf("layer: tar data %s: %w", p, err)
			}
		}
	}

	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: close tar: %w", err)
	}

	raw := buf.Bytes()

	// ggcr gzips the opener's bytes itself with a zero gzip header time, so
	// the compressed digest is as stable as the tar.
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(raw)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}

	return layer, nil
}

// imageOf builds a linux/<arch> OCI image from layers, one history entry each.
func imageOf(arch string, layers []v1.Layer, createdBy []string, cfg v1.Config) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)

	adds := make([]mutate.Addendum, len(layers))
	for i, l := range layers {
		adds[i] = mutate.Addendum{
			Layer:     l,
			MediaType: types.OCILayer,
			History: v1.History{
				Created:   v1.Time{Time: epoch()},
				CreatedBy: createdBy[i],
			},
		}
	}

	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, fmt.Errorf("image linux/%s: append layers: %w", arch, err)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("image linux/%s: config: %w", arch, err)
	}

	cf = cf.DeepCopy()
	cf.Architecture = arch
	cf.OS = "linux"
	cf.Created = v1.Time{Time: epoch()}
	cf.Config = cfg

	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("image linux/%s: set config: %w", arch, err)
	}

	return img, nil
}

// platformImages builds one image per arch and returns the OCI index of
// them, with the platform on every descriptor: image-factory skips index
// entries without one.
func platformImages(arches []string, build func(arch string) (v1.Image, error)) (v1.ImageIndex, error) {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)

	for _, arch := range arches {
		img, err := build(arch)
		if err != nil {
			return nil, err
		}

		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add: img,
			Descriptor: v1.Descriptor{
				MediaType: types.OCIManifestSchema1,
				Platform:  &v1.Platform{OS: "linux", Architecture: arch},
			},
		})
	}

	return idx, nil
}

// cpioFile is one regular file of a newc archive.
type cpioFile struct {
	name string // without leading "/", as the kernel's gen_init_cpio writes it
	mode uint32 // permission bits
	data []byte
}

// newc writes a "070701" (SVR4 without CRC) cpio archive, the only format the
// kernel unpacks from an initramfs, ending with the TRAILER!!! record.
func newc(files []cpioFile) []byte {
	var buf bytes.Buffer

	write := func(ino, mode, nlink uint32, name string, data []byte) {
		fmt.Fprintf(&buf, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
			ino, mode, 0, 0, nlink, uint32(epochSeconds), len(data), 0, 0, 0, 0, len(name)+1, 0)
		buf.WriteString(name)
		buf.WriteByte(0)
		pad4(&buf)
		buf.Write(data)
		pad4(&buf)
	}

	for i, f := range files {
		const regular = 0o100000
		write(uint32(i+1), regular|f.mode, 1, f.name, f.data)
	}

	write(0, 0, 1, "TRAILER!!!", nil)

	return buf.Bytes()
}

// pad4 aligns newc headers and data to 4 bytes, counted from the archive
// start (every record starts aligned, so the buffer length is enough).
func pad4(buf *bytes.Buffer) {
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
}

// zstdCompress compresses with one encoder goroutine: the concurrent encoder
// may split blocks differently from run to run.
func zstdCompress(data []byte) ([]byte, error) {
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1), zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return nil, fmt.Errorf("zstd encoder: %w", err)
	}
	defer enc.Close() //nolint:errcheck // EncodeAll does not use the stream state Close flushes

	return enc.EncodeAll(data, nil), nil
}

// peMachine is the COFF machine of an EFI binary for each arch.
func peMachine(arch string) (uint16, error) {
	switch arch {
	case "amd64":
		return pe.IMAGE_FILE_MACHINE_AMD64, nil
	case "arm64":
		return pe.IMAGE_FILE_MACHINE_ARM64, nil
	default:
		return 0, fmt.Errorf("no PE machine for arch %q", arch)
	}
}

// Layout of the placeholder PE: headers padded to peHeaders leave room for
// about 16 more section headers, enough for a UKI builder to add .linux,
// .initrd, .cmdline, .osrel and friends to a placeholder systemd-stub.
const (
	peFileAlign    = 0x200
	peSectionAlign = 0x1000
	peHeaders      = 0x400
	peDOSHeader    = 0x40
)

// placeholderPE returns a minimal but well-formed PE32+ EFI application
// (subsystem 10) for arch whose single .text section holds text. Unlike a
// bare "MZ" prefix it parses with debug/pe, so the builder's PE handling
// can run against the synthetic release.
func placeholderPE(arch, text string) ([]byte, error) {
	machine, err := peMachine(arch)
	if err != nil {
		return nil, err
	}

	raw := alignUp(uint32(len(text)), peFileAlign)
	virt := alignUp(uint32(len(text)), peSectionAlign)

	fh := pe.FileHeader{
		Machine:              machine,
		NumberOfSections:     1,
		SizeOfOptionalHeader: uint16(binary.Size(pe.OptionalHeader64{})),
		Characteristics:      pe.IMAGE_FILE_EXECUTABLE_IMAGE | pe.IMAGE_FILE_LARGE_ADDRESS_AWARE,
	}
	oh := pe.OptionalHeader64{
		Magic:               0x20b, // PE32+
		SizeOfCode:          raw,
		AddressOfEntryPoint: peSectionAlign,
		BaseOfCode:          peSectionAlign,
		ImageBase:           0x10000000,
		SectionAlignment:    peSectionAlign,
		FileAlignment:       peFileAlign,
		SizeOfImage:         peSectionAlign + virt,
		SizeOfHeaders:       peHeaders,
		Subsystem:           pe.IMAGE_SUBSYSTEM_EFI_APPLICATION,
		NumberOfRvaAndSizes: 16,
	}
	sh := pe.SectionHeader32{
		Name:             [8]byte{'.', 't', 'e', 'x', 't'},
		VirtualSize:      uint32(len(text)),
		VirtualAddress:   peSectionAlign,
		SizeOfRawData:    raw,
		PointerToRawData: peHeaders,
		Characteristics:  pe.IMAGE_SCN_CNT_CODE | pe.IMAGE_SCN_MEM_EXECUTE | pe.IMAGE_SCN_MEM_READ,
	}

	var buf bytes.Buffer

	dos := make([]byte, peDOSHeader)
	copy(dos, "MZ")
	binary.LittleEndian.PutUint32(dos[0x3c:], peDOSHeader) // e_lfanew
	buf.Write(dos)
	buf.WriteString("PE\x00\x00")

	for _, v := range []any{fh, oh, sh} {
		if err := binary.Write(&buf, binary.LittleEndian, v); err != nil {
			return nil, fmt.Errorf("placeholder PE: %w", err)
		}
	}

	out := make([]byte, peHeaders+raw)
	copy(out, buf.Bytes())
	copy(out[peHeaders:], text)

	return out, nil
}

func alignUp(n, to uint32) uint32 { return (n + to - 1) / to * to }

// elfPlaceholder is the content of a placeholder Linux binary or kernel
// module: the ELF magic, so file-type sniffing recognises it, then text
// saying what it stands for. It is not a loadable ELF file.
func elfPlaceholder(what string) []byte {
	return []byte("\x7fELF\x02\x01\x01\x00kiln synthetic placeholder: " + strings.TrimSpace(what) + "\n")
}
