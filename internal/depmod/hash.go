package depmod

import (
	"encoding/binary"
	"slices"
	"strings"
)

// superFastHash is libkmod-hash.c's hash_superfast (Paul Hsieh's
// SuperFastHash). depmod lists modules, and writes modules.symbols, in the
// iteration order of its hash tables, so the files are only byte-equal to
// depmod's when this is too. Bytes are read as C chars (signed on x86).
func superFastHash(key string) uint32 {
	n := uint32(len(key))
	hash, rem := n, n&3
	k := []byte(key)
	u16 := func(b []byte) uint32 { return uint32(binary.LittleEndian.Uint16(b)) }

	for n /= 4; n > 0; n-- {
		hash += u16(k)
		tmp := (u16(k[2:]) << 11) ^ hash
		hash = (hash << 16) ^ tmp
		k = k[4:]
		hash += hash >> 11
	}

	switch rem {
	case 3:
		hash += u16(k)
		hash ^= hash << 16
		hash ^= uint32(int32(int8(k[2])) << 18)
		hash += hash >> 11
	case 2:
		hash += u16(k)
		hash ^= hash << 11
		hash += hash >> 17
	case 1:
		hash += uint32(int32(int8(k[0])))
		hash ^= hash << 10
		hash += hash >> 1
	}

	hash ^= hash << 3
	hash += hash >> 5
	hash ^= hash << 4
	hash += hash >> 17
	hash ^= hash << 25
	hash += hash >> 6

	return hash
}

// hashOrder sorts keys the way a libkmod hash of n buckets iterates them:
// by bucket, then by strcmp within a bucket.
func hashOrder(keys []string, buckets uint32) {
	slices.SortFunc(keys, func(a, b string) int {
		ha, hb := superFastHash(a)%buckets, superFastHash(b)%buckets
		if ha != hb {
			if ha < hb {
				return -1
			}

			return 1
		}

		return strings.Compare(a, b)
	})
}
