package xfs

import (
	"fmt"
	"io"
	"io/fs"
	"math/bits"
	"slices"
	"strings"
)

// geometry is the layout mkfs.xfs chooses for a single-device file system
// of 4 KiB blocks and 512-byte inodes (xfs_mkfs.c: calc_default_ag_geometry,
// calculate_log_size, libxfs_prealloc_blocks, xfs_ialloc_calc_rootino).
type geometry struct {
	dblocks  uint64
	agblocks uint32
	agcount  uint32
	agblklog uint
	sectSize int
	feat     Features

	hdrBlocks                  uint32 // blocks holding SB, AGF, AGI, AGFL
	bnoRoot, cntRoot, inoRoot  uint32
	finoRoot, rmapRoot, refcRt uint32
	prealloc                   uint32 // first block after the fixed headers and roots
	flFill                     uint32 // AGFL blocks mkfs fills (xfs_alloc_min_freelist)
	agflSize                   int    // AGFL entries

	logAG, logStart, logBlocks uint32
	rootBno                    uint32 // AG 0 block of the root inode chunk
	inoAlign                   uint32 // sb_inoalignmt: chunk alignment in blocks
}

func newGeometry(size int64, sect int, f Features) (*geometry, error) {
	if size < MinSize || size > MaxSize {
		return nil, fmt.Errorf("%w: size %d is outside [%d, %d] bytes", ErrInvalid, size, MinSize, MaxSize)
	}
	g := &geometry{dblocks: uint64(size) / blockSize, sectSize: sect, feat: f}
	// Four AGs for a single disk between 128 MiB and 4 TiB, the AG size
	// rounded up; a last AG below 16 MiB is dropped.
	ag := g.dblocks >> 2
	if g.dblocks&3 != 0 {
		ag++
	}
	g.agblocks = uint32(ag)
	g.agcount = uint32((g.dblocks + ag - 1) / ag)
	if rem := g.dblocks % ag; rem != 0 && rem < (16<<20)/blockSize {
		g.agcount--
		g.dblocks = uint64(g.agcount) * ag
	}
	g.agblklog = uint(bits.Len32(g.agblocks - 1))

	g.hdrBlocks = uint32((4*sect + blockSize - 1) / blockSize)
	b := g.hdrBlocks
	next := func() uint32 { b++; return b - 1 }
	g.bnoRoot, g.cntRoot, g.inoRoot = next(), next(), next()
	g.finoRoot, g.rmapRoot, g.refcRt = nullAgbno, nullAgbno, nullAgbno
	if f.Finobt {
		g.finoRoot = next()
	}
	if f.Rmapbt {
		g.rmapRoot = next()
	}
	if f.Reflink {
		g.refcRt = next()
	}
	g.prealloc = b
	g.flFill = 4
	if f.Rmapbt {
		g.flFill = 6
	}
	g.agflSize = (sect - 36) / 4

	g.logBlocks = (64 << 20) / blockSize
	g.logAG = g.agcount / 2
	g.logStart = g.prealloc

	// xfs_ialloc_calc_rootino: headers, the btree roots, the initial AGFL,
	// rounded up to the inode chunk alignment.
	first := g.hdrBlocks + 3 + g.flFill
	if f.Finobt {
		first++
	}
	if f.Rmapbt {
		first++
	}
	if f.Reflink {
		first++
	}
	// A full chunk's size with sparse inodes (which move the cluster
	// alignment to sb_spino_align), else the inode cluster size.
	g.inoAlign = chunkBlocks
	if !f.Sparse {
		g.inoAlign = clusterBlocks
	}
	g.rootBno = (first + g.inoAlign - 1) / g.inoAlign * g.inoAlign
	return g, nil
}

func (g *geometry) agLen(ag uint32) uint32 {
	if ag == g.agcount-1 {
		return uint32(g.dblocks - uint64(ag)*uint64(g.agblocks))
	}
	return g.agblocks
}

func (g *geometry) fsb(ag, bno uint32) uint64 { return uint64(ag)<<g.agblklog | uint64(bno) }
func (g *geometry) daddr(ag, bno uint32) uint64 {
	return (uint64(ag)*uint64(g.agblocks) + uint64(bno)) * (blockSize / bbSize)
}
func (g *geometry) offset(ag, bno uint32) int64 {
	return (int64(ag)*int64(g.agblocks) + int64(bno)) * blockSize
}
func (g *geometry) ino(ag, bno uint32, i int) uint64 {
	return uint64(ag)<<(g.agblklog+inoPerBLog) | (uint64(bno)<<inoPerBLog + uint64(i))
}

// span is a run of blocks in one AG with its reverse-mapping owner.
type span struct {
	bno, len uint32
	owner    int64  // inode number or a negative ownXX
	off      uint64 // logical block of an inode's data fork
}

// extent is a run of a file's (or directory's) data fork.
type extent struct {
	off     uint64 // logical block
	ag, bno uint32
	len     uint32
}

const (
	formSF = iota
	formBlock
	formLeaf
)

type node struct {
	name   string
	path   string
	parent *node
	dir    bool
	kids   []*node
	perm   fs.FileMode
	size   int64
	open   func() (io.ReadCloser, error)
	ino    uint64
	exts   []extent
	blocks uint64

	// directories
	form    int
	nsub    int
	dblocks int       // data blocks (block and leaf forms)
	place   [][]*node // entries of each data block (leaf form; block 0 has . and .. first)
}

// Plan is a laid out file system, ready to be written.
type Plan struct {
	g       *geometry
	o       Options
	root    *node
	nodes   []*node // every file and directory but the root, in inode order
	inodes  int     // inodes in use, including the root and the two realtime inodes
	chunks  int     // inode chunks, all in AG 0 from rootBno
	spans   [][]span
	rmapExt []uint32 // rmapbt blocks beyond the root, per AG
	rmapAt  []uint32 // first of them
	free    [][]span // free extents per AG
	rmaps   [][]span // merged reverse-mapping records per AG
	data    int64    // bytes of file content
}

// NewPlan checks the input and lays out the file system without writing
// anything: every error about paths, names, sizes and space comes from here.
func NewPlan(size int64, files []File, opts Options) (*Plan, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if o.Features.Inobtcount && !o.Features.Finobt {
		return nil, fmt.Errorf("%w: inobtcount needs finobt", ErrInvalid)
	}
	g, err := newGeometry(size, o.SectorSize, *o.Features)
	if err != nil {
		return nil, err
	}
	p := &Plan{g: g, o: o}
	if err := p.buildTree(files); err != nil {
		return nil, err
	}
	p.assignInodes()
	if err := p.layoutDirs(); err != nil {
		return nil, err
	}
	if err := p.allocate(); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *Plan) buildTree(files []File) error {
	p.root = &node{dir: true, perm: 0o755}
	index := map[string]*node{"": p.root}
	explicit := map[string]bool{}
	for _, f := range files {
		parts, err := cleanPath(f.Path)
		if err != nil {
			return err
		}
		if f.Mode&fs.ModeType&^fs.ModeDir != 0 {
			return fmt.Errorf("%w: %s: only regular files and directories are supported (mode %v)", ErrInvalid, f.Path, f.Mode)
		}
		isDir := f.Mode.IsDir()
		if f.Mode&^(fs.ModeDir|fs.ModePerm|fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky) != 0 {
			return fmt.Errorf("%w: %s: unsupported mode %v", ErrInvalid, f.Path, f.Mode)
		}
		if !isDir && (f.Size < 0 || f.Open == nil) {
			return fmt.Errorf("%w: %s: file needs a size ≥ 0 and Open", ErrInvalid, f.Path)
		}
		parent := p.root
		for i, name := range parts {
			key := strings.Join(parts[:i+1], "/")
			last := i == len(parts)-1
			n := index[key]
			if n != nil && (!n.dir || (last && !isDir)) {
				return fmt.Errorf("%w: duplicate path %q", ErrInvalid, key)
			}
			if n != nil && last {
				if explicit[key] {
					return fmt.Errorf("%w: duplicate path %q", ErrInvalid, key)
				}
				explicit[key] = true
				n.perm = permOf(f.Mode, 0o755)
			}
			if n == nil {
				n = &node{name: name, path: key, parent: parent, dir: !last || isDir, perm: 0o755}
				if last {
					explicit[key] = true
					if isDir {
						n.perm = permOf(f.Mode, 0o755)
					} else {
						n.perm = permOf(f.Mode, 0o644)
						n.size, n.open = f.Size, f.Open
					}
				}
				index[key] = n
				parent.kids = append(parent.kids, n)
				if n.dir {
					parent.nsub++
				}
				if len(index) > MaxEntries+1 {
					return fmt.Errorf("%w: more than %d files and directories", ErrInvalid, MaxEntries)
				}
			}
			parent = n
		}
	}
	var sortTree func(n *node)
	sortTree = func(n *node) {
		slices.SortFunc(n.kids, func(a, b *node) int { return strings.Compare(a.name, b.name) })
		for _, k := range n.kids {
			if k.dir {
				sortTree(k)
			}
		}
	}
	sortTree(p.root)
	return nil
}

func permOf(m fs.FileMode, def fs.FileMode) fs.FileMode {
	perm := m & (fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky)
	if perm == 0 {
		return def
	}
	return perm
}

// assignInodes numbers the inodes depth first: the root, the two realtime
// inodes mkfs always creates, then the tree; all in full chunks in AG 0.
func (p *Plan) assignInodes() {
	var walk func(n *node)
	walk = func(n *node) {
		for _, k := range n.kids {
			p.nodes = append(p.nodes, k)
			if k.dir {
				walk(k)
			}
		}
	}
	walk(p.root)
	p.inodes = 3 + len(p.nodes)
	p.chunks = (p.inodes + inodesPerChunk - 1) / inodesPerChunk
	p.root.ino = p.inoAt(0)
	for i, n := range p.nodes {
		n.ino = p.inoAt(3 + i)
	}
}

// inoAt is the inode number of the i-th inode (chunks are contiguous).
func (p *Plan) inoAt(i int) uint64 {
	c, k := i/inodesPerChunk, i%inodesPerChunk
	return p.g.ino(0, p.g.rootBno+uint32(c*chunkBlocks), k)
}

// layoutDirs picks each directory's format as the kernel would leave it:
// short form while it fits in the inode, then one directory block, then
// data blocks plus one leaf block.
func (p *Plan) layoutDirs() error {
	dirs := append([]*node{p.root}, p.nodes...)
	for _, d := range dirs {
		if !d.dir {
			continue
		}
		sf := 6
		ents := dirEntSize(1) + dirEntSize(2)
		for _, k := range d.kids {
			sf += 1 + 2 + len(k.name) + 1 + 4
			ents += dirEntSize(len(k.name))
		}
		n := len(d.kids) + 2
		switch {
		case sf <= litSize:
			d.form = formSF
			d.size = int64(sf)
		case dirDataHdr+ents+8*n+8 <= blockSize:
			d.form = formBlock
			d.dblocks = 1
			d.size = blockSize
		default:
			d.form = formLeaf
			used := dirFirstOff
			cur := []*node{}
			for _, k := range d.kids {
				es := dirEntSize(len(k.name))
				if used+es > blockSize {
					d.place = append(d.place, cur)
					cur, used = nil, dirDataHdr
				}
				cur = append(cur, k)
				used += es
			}
			d.place = append(d.place, cur)
			d.dblocks = len(d.place)
			if dirLeafHdr+8*n+2*d.dblocks+4 > blockSize {
				return fmt.Errorf("%w: directory %q has %d entries; at most %d fit in the leaf form this writer makes",
					ErrInvalid, "/"+d.path, len(d.kids), (blockSize-dirLeafHdr-4-2*d.dblocks)/8-2)
			}
			d.size = int64(d.dblocks) * blockSize
		}
	}
	return nil
}

// allocator hands out blocks in order, AG by AG, around reserved spans.
type allocator struct {
	g     *geometry
	spans [][]span // everything placed, for the rmapbt and free space
	fixed [][]span // what was placed before the cursor started
	ag    uint32
	bno   uint32
}

func (a *allocator) reserve(ag, bno, n uint32, owner int64, off uint64) {
	a.spans[ag] = append(a.spans[ag], span{bno: bno, len: n, owner: owner, off: off})
	a.fixed[ag] = append(a.fixed[ag], span{bno: bno, len: n})
}

// usedEnd returns the end of the reserved span covering (ag, bno), or 0.
func (a *allocator) usedEnd(ag, bno uint32) uint32 {
	for _, s := range a.fixed[ag] {
		if bno >= s.bno && bno < s.bno+s.len {
			return s.bno + s.len
		}
	}
	return 0
}

// nextUsed returns the start of the first reserved span at or after bno.
func (a *allocator) nextUsed(ag, bno uint32) uint32 {
	end := a.g.agLen(ag)
	for _, s := range a.fixed[ag] {
		if s.bno >= bno && s.bno < end {
			end = s.bno
		}
	}
	return end
}

// alloc takes n blocks for owner's data fork from logical block off,
// splitting at reserved spans and AG ends.
func (a *allocator) alloc(n uint64, owner int64, off uint64) ([]extent, error) {
	var out []extent
	for n > 0 {
		if a.ag >= a.g.agcount {
			return nil, ErrNoSpace
		}
		if e := a.usedEnd(a.ag, a.bno); e != 0 {
			a.bno = e
			continue
		}
		if a.bno >= a.g.agLen(a.ag) {
			a.ag++
			a.bno = 0
			continue
		}
		stop := a.nextUsed(a.ag, a.bno)
		take := min(uint64(stop-a.bno), n, 1<<21-1)
		out = append(out, extent{off: off, ag: a.ag, bno: a.bno, len: uint32(take)})
		a.spans[a.ag] = append(a.spans[a.ag], span{bno: a.bno, len: uint32(take), owner: owner, off: off})
		a.bno += uint32(take)
		off += take
		n -= take
	}
	return out, nil
}

// allocate places the fixed metadata, the inode chunks, the extra rmapbt
// blocks, the directory blocks and the file data, then derives the free
// space and reverse-mapping records. The number of rmapbt blocks depends on
// the number of records, which depends on where things go: iterate until
// it settles.
func (p *Plan) allocate() error {
	g := p.g
	extra := make([]uint32, g.agcount)
	for range 8 {
		a := &allocator{g: g, spans: make([][]span, g.agcount), fixed: make([][]span, g.agcount)}
		p.rmapAt = make([]uint32, g.agcount)
		for ag := range g.agcount {
			a.reserve(ag, 0, g.hdrBlocks, ownFS, 0)
			a.reserve(ag, g.bnoRoot, 2, ownAG, 0)
			if g.feat.Finobt {
				a.reserve(ag, g.inoRoot, 2, ownInobt, 0)
			} else {
				a.reserve(ag, g.inoRoot, 1, ownInobt, 0)
			}
			if g.feat.Rmapbt {
				a.reserve(ag, g.rmapRoot, 1, ownAG, 0)
			}
			if g.feat.Reflink {
				a.reserve(ag, g.refcRt, 1, ownRefc, 0)
			}
			fl := g.prealloc
			if ag == g.logAG {
				a.reserve(ag, g.logStart, g.logBlocks, ownLog, 0)
				fl += g.logBlocks
			}
			a.reserve(ag, fl, g.flFill, ownAG, 0)
			next := fl + g.flFill
			if ag == 0 {
				if g.logAG == 0 {
					return fmt.Errorf("%w: the log would share AG 0 with the root inode", ErrInvalid)
				}
				a.reserve(0, g.rootBno, uint32(p.chunks*chunkBlocks), ownInodes, 0)
				next = g.rootBno + uint32(p.chunks*chunkBlocks)
			}
			if extra[ag] > 0 {
				p.rmapAt[ag] = next
				a.reserve(ag, next, extra[ag], ownAG, 0)
			}
		}
		if a.nextUsed(0, 0) > g.agLen(0) {
			return fmt.Errorf("%w: too many inodes", ErrNoSpace)
		}
		// Directory blocks first, near the inodes, then file data, both
		// in inode order.
		all := append([]*node{p.root}, p.nodes...)
		for _, n := range all {
			n.exts, n.blocks = nil, 0
			if !n.dir || n.form == formSF {
				continue
			}
			ex, err := a.alloc(uint64(n.dblocks), int64(n.ino), 0)
			if err != nil {
				return fmt.Errorf("%w: no room for directory blocks", ErrNoSpace)
			}
			n.exts = ex
			n.blocks = uint64(n.dblocks)
			if n.form == formLeaf {
				ex, err := a.alloc(1, int64(n.ino), dirLeafOffset)
				if err != nil {
					return fmt.Errorf("%w: no room for directory blocks", ErrNoSpace)
				}
				n.exts = append(n.exts, ex...)
				n.blocks++
			}
		}
		p.data = 0
		for _, n := range p.nodes {
			if n.dir || n.size == 0 {
				continue
			}
			nb := uint64((n.size + blockSize - 1) / blockSize)
			ex, err := a.alloc(nb, int64(n.ino), 0)
			if err != nil {
				return fmt.Errorf("%w: %s (%d bytes) does not fit: the files need more than the %d bytes of a %d-byte XFS",
					ErrNoSpace, n.path, n.size, p.freeBytes(), int64(g.dblocks)*blockSize)
			}
			if len(ex) > maxInlineExts {
				return fmt.Errorf("%w: %s needs %d extents (at most %d)", ErrNoSpace, n.path, len(ex), maxInlineExts)
			}
			n.exts, n.blocks = ex, nb
			p.data += n.size
		}
		p.spans = a.spans
		p.finish()
		settled := true
		for ag := range g.agcount {
			if !g.feat.Rmapbt {
				break
			}
			need := rmapExtraBlocks(len(p.rmaps[ag]))
			if need < 0 {
				return fmt.Errorf("%w: too many extents in AG %d", ErrInvalid, ag)
			}
			if uint32(need) > extra[ag] {
				extra[ag] = uint32(need)
				settled = false
			}
		}
		if settled {
			p.rmapExt = extra
			for ag := range g.agcount {
				if len(p.free[ag]) > btMaxRecs(8) {
					return fmt.Errorf("%w: AG %d has %d free extents", ErrInvalid, ag, len(p.free[ag]))
				}
			}
			return nil
		}
	}
	return fmt.Errorf("xfs: reverse-mapping layout did not settle")
}

// freeBytes is the space left for file data in an empty file system of
// this geometry (an estimate for error messages).
func (p *Plan) freeBytes() int64 {
	g := p.g
	used := uint64(g.agcount)*uint64(g.prealloc+g.flFill) + uint64(g.logBlocks) + uint64(p.chunks*chunkBlocks)
	return int64(g.dblocks-used) * blockSize
}

func btMaxRecs(recLen int) int { return (blockSize - btShortHdr) / recLen }

// rmapExtraBlocks is the number of rmapbt blocks beyond the root for n
// records: none for one leaf, else the leaves under a root node; -1 when
// one node level is not enough.
func rmapExtraBlocks(n int) int {
	per := btMaxRecs(rmapRecLen)
	if n <= per {
		return 0
	}
	leaves := (n + per - 1) / per
	if leaves > (blockSize-btShortHdr)/(2*rmapKeyLen+4) {
		return -1
	}
	return leaves
}

// finish sorts each AG's spans into reverse-mapping records (adjacent
// spans of one owner merged, as the kernel keeps them) and free extents.
func (p *Plan) finish() {
	g := p.g
	p.free = make([][]span, g.agcount)
	p.rmaps = make([][]span, g.agcount)
	for ag := range g.agcount {
		s := slices.Clone(p.spans[ag])
		slices.SortFunc(s, func(a, b span) int { return int(a.bno) - int(b.bno) })
		var r []span
		for _, x := range s {
			if len(r) > 0 {
				l := &r[len(r)-1]
				if l.bno+l.len == x.bno && l.owner == x.owner && (x.owner < 0 || l.off+uint64(l.len) == x.off) {
					l.len += x.len
					continue
				}
			}
			r = append(r, x)
		}
		p.rmaps[ag] = r
		var at uint32
		for _, x := range r {
			if x.bno > at {
				p.free[ag] = append(p.free[ag], span{bno: at, len: x.bno - at})
			}
			at = x.bno + x.len
		}
		if end := g.agLen(ag); end > at {
			p.free[ag] = append(p.free[ag], span{bno: at, len: end - at})
		}
	}
}
