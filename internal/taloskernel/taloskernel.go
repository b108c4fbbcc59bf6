// Package taloskernel checks a boot asset against what the Talos kernel
// can read, so that tests fail on what only a laxer kernel (Debian's, in
// the boot fixture) would accept.
//
// The facts, from the kernel configuration Talos v1.13.9 builds with
// (siderolabs/pkgs kernel/build/config-amd64 at v1.13.0-60-gf541ca4, the
// same in config-arm64; see also /work/shared/reference/talos-real-release.md):
//
//   - initramfs decompressors: CONFIG_RD_XZ=y and CONFIG_RD_ZSTD=y;
//     CONFIG_RD_GZIP, _BZIP2, _LZMA, _LZO and _LZ4 are not set. Every
//     compressed initramfs segment must be xz or zstd, and an xz one must
//     use check type none or CRC32 (the kernel's lib/xz verifies nothing
//     else and refuses other checks with XZ_OPTIONS_ERROR).
//   - squashfs: CONFIG_SQUASHFS_XZ=y and CONFIG_SQUASHFS_ZSTD=y;
//     CONFIG_SQUASHFS_ZLIB, _LZ4 and _LZO are not set. Every extension
//     layer (and rootfs.sqsh) must be xz or zstd, or Talos's init cannot
//     mount it and panics ("early boot failed").
package taloskernel

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/kiln-dev/kiln/builder/cpio"
)

// squashfs compressor ids the Talos kernel mounts (squashfs_fs.h).
const (
	squashfsXZ   = 4
	squashfsZstd = 6
)

var squashfsNames = map[uint16]string{1: "gzip", 2: "lzma", 3: "lzo", 4: "xz", 5: "lz4", 6: "zstd"}

// ErrUnsupported is wrapped by every finding the Talos kernel would refuse.
var ErrUnsupported = errors.New("the Talos kernel cannot read this")

// Layer is one squashfs image found in an initramfs.
type Layer struct {
	Segment     int    // index of the initramfs segment holding it
	Name        string // cpio entry name, "0.sqsh"
	Compression string // "zstd", "xz", ...
}

// Report is what CheckInitramfs looked at.
type Report struct {
	Segments []cpio.Segment
	Layers   []Layer
}

// CheckInitramfs walks every segment of an initramfs and every *.sqsh in
// them and returns an error wrapping ErrUnsupported for each one the
// Talos kernel could not decompress or mount (all of them, joined).
func CheckInitramfs(r io.ReaderAt, size int64) (*Report, error) {
	segs, err := cpio.Segments(r, size)
	if err != nil {
		return nil, fmt.Errorf("initramfs segments: %w", err)
	}

	rep := &Report{Segments: segs}

	var errs []error

	for i, s := range segs {
		sec := io.NewSectionReader(r, s.Offset, s.Size)

		var archive io.Reader

		switch s.Compression {
		case cpio.None:
			archive = sec
		case cpio.Zstd:
			d, err := zstd.NewReader(sec, zstd.WithDecoderConcurrency(1))
			if err != nil {
				return rep, err
			}

			defer d.Close()

			archive = d
		case cpio.Xz:
			var h [8]byte
			if _, err := sec.ReadAt(h[:], 0); err != nil {
				return rep, err
			}

			if h[7] > 1 {
				errs = append(errs, fmt.Errorf("%w: segment %d at %d is xz with check type %d; the kernel's lib/xz takes none (0) and CRC32 (1) only",
					ErrUnsupported, i, s.Offset, h[7]))

				continue
			}

			xr, err := xz.NewReader(sec)
			if err != nil {
				return rep, fmt.Errorf("segment %d: %w", i, err)
			}

			archive = xr
		default:
			errs = append(errs, fmt.Errorf("%w: segment %d at %d is %s-compressed; the kernel has CONFIG_RD_XZ and CONFIG_RD_ZSTD only",
				ErrUnsupported, i, s.Offset, s.Compression))

			continue
		}

		layers, err := checkArchive(archive, i)
		rep.Layers = append(rep.Layers, layers...)

		if err != nil {
			errs = append(errs, err)
		}
	}

	return rep, errors.Join(errs...)
}

func checkArchive(r io.Reader, seg int) ([]Layer, error) {
	cr := cpio.NewReader(r)

	var (
		layers []Layer
		errs   []error
	)

	for {
		h, err := cr.Next()
		if errors.Is(err, io.EOF) {
			return layers, errors.Join(errs...)
		}

		if err != nil {
			return layers, fmt.Errorf("segment %d: cpio: %w", seg, err)
		}

		if !strings.HasSuffix(h.Name, ".sqsh") || h.FileMode().IsDir() {
			continue
		}

		var sb [24]byte
		if _, err := io.ReadFull(cr, sb[:]); err != nil {
			errs = append(errs, fmt.Errorf("%w: segment %d: %s: no squashfs superblock: %v", ErrUnsupported, seg, h.Name, err))
			continue
		}

		if !bytes.Equal(sb[:4], []byte("hsqs")) {
			errs = append(errs, fmt.Errorf("%w: segment %d: %s is not a squashfs image", ErrUnsupported, seg, h.Name))
			continue
		}

		comp := binary.LittleEndian.Uint16(sb[20:])
		name := squashfsNames[comp]

		if name == "" {
			name = fmt.Sprintf("compressor %d", comp)
		}

		layers = append(layers, Layer{Segment: seg, Name: h.Name, Compression: name})

		if comp != squashfsXZ && comp != squashfsZstd {
			errs = append(errs, fmt.Errorf("%w: %s is a %s squashfs; the kernel has CONFIG_SQUASHFS_XZ and CONFIG_SQUASHFS_ZSTD only",
				ErrUnsupported, h.Name, name))
		}
	}
}
