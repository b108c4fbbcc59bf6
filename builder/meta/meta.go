package meta

import (
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"
	talosmeta "github.com/siderolabs/talos/pkg/machinery/meta"

	"github.com/kiln-dev/kiln/release"
)

// Value is one META entry: a one-byte key (see the Talos constants in
// github.com/siderolabs/talos/pkg/machinery/meta, e.g. 0x0a for the metal
// network configuration) and its value.
type Value struct {
	Key   uint8
	Value string
}

// Layout of the META partition and of one Talos ADV copy.
const (
	// PartitionSize is the size of the META partition; Talos only accepts
	// a META partition of exactly this size.
	PartitionSize = 1 << 20
	// ADVLength is the size of one ADV copy; the ADV is stored twice.
	ADVLength = 256 << 10

	advMagic1 uint32 = 0x5a4b3c2d
	advMagic2 uint32 = 0xa5b4c3d2
	// advOverhead is magic1 (4) + sha256 (32) + magic2 (4).
	advOverhead = 40
	// entryHeader is tag (4) + size (4).
	entryHeader = 8
)

// ErrInvalid reports META values that cannot be encoded.
var ErrInvalid = errors.New("invalid META values")

// Validate checks values: key 0 is reserved (it ends the ADV entry list),
// keys must be unique, and a value must not contain ';' (the separator of
// the environment encoding, which Talos does not escape).
func Validate(values []Value) error {
	seen := make(map[uint8]bool, len(values))

	for _, v := range values {
		switch {
		case v.Key == 0:
			return fmt.Errorf("%w: key 0x0 is reserved", ErrInvalid)
		case seen[v.Key]:
			return fmt.Errorf("%w: duplicate key 0x%x", ErrInvalid, v.Key)
		case strings.Contains(v.Value, ";"):
			return fmt.Errorf("%w: value of key 0x%x contains ';'", ErrInvalid, v.Key)
		}

		seen[v.Key] = true
	}

	return nil
}

// EnvValue returns the INSTALLER_META_BASE64 encoding of values for the
// given target Talos version: "0x<key>=<value>" joined with ';' in the given
// order, gzip-compressed (best compression) when the version supports it
// (>= 1.6.3) and the text is longer than 256 bytes, then standard base64.
// It returns "" for no values.
func EnvValue(values []Value, talosVersion release.Version) (string, error) {
	if talosVersion.IsZero() {
		return "", errors.New("no Talos version")
	}

	if err := Validate(values); err != nil {
		return "", err
	}

	if len(values) == 0 {
		return "", nil
	}

	tv := make(talosmeta.Values, 0, len(values))
	for _, v := range values {
		tv = append(tv, talosmeta.Value{Key: v.Key, Value: v.Value})
	}

	return tv.Encode(quirks.New(talosVersion.String()).SupportsCompressedEncodedMETA()), nil
}

// Partition returns the META partition image (PartitionSize bytes) holding
// values. With no values the image is all zeros, which Talos treats as an
// empty META. Otherwise one ADV block (big-endian: magic1, entries
// tag|size|value in ascending key order, zero fill, sha256 of the block with
// the checksum field zeroed, magic2) is written at offset 0 and again at
// ADVLength; the rest, including the legacy syslinux ADV area in the last
// 1 KiB, stays zero.
func Partition(values []Value) ([]byte, error) {
	if err := Validate(values); err != nil {
		return nil, err
	}

	img := make([]byte, PartitionSize)
	if len(values) == 0 {
		return img, nil
	}

	if err := marshalADV(img[:ADVLength], values); err != nil {
		return nil, err
	}

	copy(img[ADVLength:2*ADVLength], img[:ADVLength])

	return img, nil
}

// marshalADV writes one ADV copy into block (len ADVLength, zeroed).
func marshalADV(block []byte, values []Value) error {
	sorted := slices.Clone(values)
	slices.SortFunc(sorted, func(a, b Value) int { return int(a.Key) - int(b.Key) })

	need := 0
	for _, v := range sorted {
		need += entryHeader + len(v.Value)
	}

	if need > ADVLength-advOverhead {
		return fmt.Errorf("%w: %d bytes of entries exceed the ADV capacity of %d", ErrInvalid, need, ADVLength-advOverhead)
	}

	binary.BigEndian.PutUint32(block[0:4], advMagic1)
	binary.BigEndian.PutUint32(block[ADVLength-4:], advMagic2)

	off := 4
	for _, v := range sorted {
		binary.BigEndian.PutUint32(block[off:], uint32(v.Key))
		binary.BigEndian.PutUint32(block[off+4:], uint32(len(v.Value)))
		off += entryHeader
		off += copy(block[off:], v.Value)
	}

	sum := sha256.Sum256(block)
	copy(block[ADVLength-36:ADVLength-4], sum[:])

	return nil
}
