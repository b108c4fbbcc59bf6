package xfs

import (
	"fmt"
	"path"
)

// Features is a set of XFS v5 features, as the [metadata], [inode] and
// [naming] sections of an xfsprogs mkfs config file (mkfs.xfs -c
// options=FILE) turn them on. crc=1 (v5), ftype=1, attr2, lazy-count and
// projid32bit are always on, metadir always off.
//
// Parent pointers (naming parent=1, turned on by lts_6.18.conf) are not
// implemented: they add an extended attribute to every inode, which no
// reader available here (xfsprogs 6.1, Linux 6.1) can check. A file system
// without them is valid for every kernel and GRUB that reads one with them.
type Features struct {
	Finobt     bool // free inode B+tree
	Rmapbt     bool // reverse-mapping B+tree (every AG's extents with their owners)
	Reflink    bool // reference-count B+tree (empty: nothing is shared)
	Inobtcount bool // inode B+tree block counts in the AGI
	Bigtime    bool // 64-bit nanosecond timestamps
	Sparse     bool // sparse inode chunks allowed (all chunks written are full)
	Nrext64    bool // 64-bit data fork extent counters
	Exchange   bool // file content exchange log items (a superblock bit only)
}

// The feature sets of xfsprogs' mkfs config files that Talos passes
// (pkg/machinery/imager/quirks XFSMkfsConfig), less parent pointers.
var (
	// LTS61 is lts_6.1.conf (Talos < 1.8).
	LTS61 = Features{Finobt: true, Reflink: true, Inobtcount: true, Bigtime: true, Sparse: true}
	// LTS66 is lts_6.6.conf (Talos 1.8–1.9).
	LTS66 = Features{Finobt: true, Rmapbt: true, Reflink: true, Inobtcount: true, Bigtime: true, Sparse: true, Nrext64: true}
	// LTS612 is lts_6.12.conf (Talos 1.10–1.12).
	LTS612 = LTS66
	// LTS618 is lts_6.18.conf (Talos ≥ 1.13) without parent pointers.
	LTS618 = Features{Finobt: true, Rmapbt: true, Reflink: true, Inobtcount: true, Bigtime: true, Sparse: true, Nrext64: true, Exchange: true}
)

// ForConfig returns the feature set of an xfsprogs mkfs config file, by
// its name or path as Talos passes it
// (quirks.New(version).XFSMkfsConfig(), e.g.
// "/usr/share/xfsprogs/mkfs/lts_6.18.conf").
func ForConfig(config string) (Features, error) {
	switch path.Base(config) {
	case "lts_6.1.conf":
		return LTS61, nil
	case "lts_6.6.conf":
		return LTS66, nil
	case "lts_6.12.conf":
		return LTS612, nil
	case "lts_6.18.conf":
		return LTS618, nil
	}
	return Features{}, fmt.Errorf("%w: unknown mkfs.xfs config %q", ErrInvalid, config)
}

func (f Features) roCompat() uint32 {
	var v uint32
	if f.Finobt {
		v |= roFinobt
	}
	if f.Rmapbt {
		v |= roRmapbt
	}
	if f.Reflink {
		v |= roReflink
	}
	if f.Inobtcount {
		v |= roInobtcnt
	}
	return v
}

func (f Features) incompat() uint32 {
	v := uint32(inFtype)
	if f.Sparse {
		v |= inSpinodes
	}
	if f.Bigtime {
		v |= inBigtime
	}
	if f.Nrext64 {
		v |= inNrext64
	}
	if f.Exchange {
		v |= inExchange
	}
	return v
}

func (f Features) String() string {
	b := func(v bool) int {
		if v {
			return 1
		}
		return 0
	}
	return fmt.Sprintf("finobt=%d rmapbt=%d reflink=%d inobtcount=%d bigtime=%d sparse=%d nrext64=%d exchange=%d",
		b(f.Finobt), b(f.Rmapbt), b(f.Reflink), b(f.Inobtcount), b(f.Bigtime), b(f.Sparse), b(f.Nrext64), b(f.Exchange))
}
