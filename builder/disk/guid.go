package disk

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// GUID is a UUID in its canonical (RFC 4122, big-endian) byte order. GPT stores
// the first three fields little-endian; see gptBytes.
type GUID [16]byte

// GUIDFromLabel returns the GUID Talos derives from a label
// (pkg/makefs GUIDFromLabel: uuid.NewHash(sha256.New(), uuid.Nil, label, 8)):
// the first 16 bytes of sha256(16 zero bytes || label) with the version
// nibble set to 8 and the RFC 4122 variant bits.
func GUIDFromLabel(label string) GUID {
	h := sha256.New()
	var ns [16]byte // uuid.Nil namespace
	h.Write(ns[:])
	h.Write([]byte(label))
	var g GUID
	copy(g[:], h.Sum(nil))
	g[6] = (g[6] & 0x0f) | 0x80
	g[8] = (g[8] & 0x3f) | 0x80
	return g
}

// ParseGUID parses the canonical 8-4-4-4-12 text form (any case).
func ParseGUID(s string) (GUID, error) {
	var g GUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return g, fmt.Errorf("disk: invalid GUID %q", s)
	}
	b, err := hex.DecodeString(strings.ReplaceAll(s, "-", ""))
	if err != nil {
		return g, fmt.Errorf("disk: invalid GUID %q: %w", s, err)
	}
	copy(g[:], b)
	return g, nil
}

// MustParseGUID is ParseGUID for constants; it panics on malformed input.
func MustParseGUID(s string) GUID {
	g, err := ParseGUID(s)
	if err != nil {
		panic(err)
	}
	return g
}

// String returns the lower-case canonical text form.
func (g GUID) String() string {
	var b [36]byte
	hex.Encode(b[0:8], g[0:4])
	b[8] = '-'
	hex.Encode(b[9:13], g[4:6])
	b[13] = '-'
	hex.Encode(b[14:18], g[6:8])
	b[18] = '-'
	hex.Encode(b[19:23], g[8:10])
	b[23] = '-'
	hex.Encode(b[24:], g[10:])
	return string(b[:])
}

// gptBytes returns the GPT on-disk ("mixed-endian") encoding.
func (g GUID) gptBytes() [16]byte {
	var b [16]byte
	binary.LittleEndian.PutUint32(b[0:], binary.BigEndian.Uint32(g[0:]))
	binary.LittleEndian.PutUint16(b[4:], binary.BigEndian.Uint16(g[4:]))
	binary.LittleEndian.PutUint16(b[6:], binary.BigEndian.Uint16(g[6:]))
	copy(b[8:], g[8:])
	return b
}
