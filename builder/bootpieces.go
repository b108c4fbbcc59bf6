package builder

import (
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"

	"github.com/kiln-dev/kiln/builder/initramfs"
	"github.com/kiln-dev/kiln/builder/internal/kcopy"
	"github.com/kiln-dev/kiln/builder/uki"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/storage"
)

// How the UKI's bytes travel (issue 17): the initramfs with the schematic's
// extensions is never concatenated aside; it is the release's initramfs (a
// section of its stored file) between a microcode and an extensions cpio
// (initramfs.Assemble). The UKI is assembled once, at its place in the
// output (uki.AssembleAt: an ISO tree file's extent, a disk ESP's clusters),
// the release's kernel and initramfs copied there in the kernel
// (copy_file_range) with their share of the PE checksum taken from
// Builder.sums; an ISO's ESP copy of it is copied in the kernel from the
// tree file.

// maxSums bounds Builder.sums: a kernel and an initramfs per architecture
// of a few releases.
const maxSums = 64

// checksums remembers the PE checksum share (uki.Sum) of release boot
// files by their ETag, a digest of their content, so that every UKI after
// the first of a release copies them without reading them.
type checksums struct {
	mu sync.Mutex
	m  map[string]uki.Sum
}

// of returns the Sum of a's content, read the first time (every time for
// an asset without an ETag).
func (c *checksums) of(ctx context.Context, a storage.Asset) (uki.Sum, error) {
	if a.ETag() == "" {
		return uki.SumOf(ctx, a, 0, a.Size())
	}

	key := a.ETag() + "/" + strconv.FormatInt(a.Size(), 10)

	c.mu.Lock()
	s, ok := c.m[key]
	c.mu.Unlock()

	if ok {
		return s, nil
	}

	s, err := uki.SumOf(ctx, a, 0, a.Size())
	if err != nil {
		return uki.Sum{}, err
	}

	c.mu.Lock()
	defer c.mu.Unlock()

	if c.m == nil || len(c.m) >= maxSums {
		c.m = map[string]uki.Sum{}
	}

	c.m[key] = s

	return s, nil
}

// initramfsImage is the initramfs with the schematic's extensions as the
// pieces it is made of, assembled once per job (the scratch file of its
// appended pieces is removed when the job ends).
func (j *job) initramfsImage(ctx context.Context) (*initramfs.Image, error) {
	if j.initrd != nil {
		return j.initrd, nil
	}

	exts, err := j.extensions(ctx)
	if err != nil {
		return nil, err
	}

	base, err := j.bootFile(ctx, release.InitramfsAsset)
	if err != nil {
		return nil, err
	}

	j.closeLater(base)

	j.emitInitramfs()

	im, err := initramfs.Assemble(ctx, io.NewSectionReader(base, 0, base.Size()), exts, j.initramfsOptions())
	if err != nil {
		return nil, err
	}

	j.closeLater(im)
	j.initrd, j.initrdBase = im, base

	return im, nil
}

// writeInitramfs copies the pieces of the job's initramfs to off of out.
func (j *job) writeInitramfs(ctx context.Context, out *os.File, off int64) error {
	im, err := j.initramfsImage(ctx)
	if err != nil {
		return err
	}

	for _, p := range im.Parts {
		if err := kcopy.CopySection(ctx, out, off, p); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}

		off += p.Size()
	}

	return nil
}

// ukiImage is the plan's UKI before it is written: its stub and sections.
type ukiImage struct {
	stub storage.Asset
	secs uki.Sections
	size int64
	// The release's kernel and initramfs, whose checksum shares writeAt
	// gives the sections' parts.
	kernel, base storage.Asset
	sums         *checksums
}

var ukiOptions = uki.Options{StripSymbols: true}

// writeAt assembles the UKI at off of out, the release's kernel and
// initramfs copied in the kernel.
func (u *ukiImage) writeAt(ctx context.Context, out *os.File, off int64) error {
	secs := u.secs

	for _, b := range []*uki.Blob{&secs.Linux, &secs.Initrd} {
		b.Parts = append([]uki.Part(nil), b.Parts...)

		for i, part := range b.Parts {
			for _, a := range []storage.Asset{u.kernel, u.base} {
				if outer, _, n := part.R.Outer(); outer != a || n != a.Size() {
					continue
				}

				sum, err := u.sums.of(ctx, a)
				if err != nil {
					return fmt.Errorf("assemble UKI: %w", err)
				}

				b.Parts[i].Sum = &sum
			}
		}
	}

	res, err := uki.AssembleAt(ctx, u.stub, secs, out, off, ukiOptions)
	if err != nil {
		return fmt.Errorf("assemble UKI: %w", err)
	}

	if res.Size != u.size {
		return fmt.Errorf("assemble UKI: %d bytes, planned %d", res.Size, u.size)
	}

	return nil
}

// ukiPieces plans the unified kernel image: the release's systemd stub
// with the kernel, the initramfs with extensions and the command line.
func (j *job) ukiPieces(ctx context.Context) (*ukiImage, error) {
	p := j.p

	im, err := j.initramfsImage(ctx)
	if err != nil {
		return nil, err
	}

	line, profiles, err := ukiContents(p)
	if err != nil {
		return nil, err
	}

	osrel, err := uki.OSRelease("Talos", p.Version.String())
	if err != nil {
		return nil, err
	}

	stub, err := j.bootFile(ctx, release.SDStubAsset)
	if err != nil {
		return nil, err
	}

	j.closeLater(stub)

	kernel, err := j.bootFile(ctx, release.KernelAsset)
	if err != nil {
		return nil, err
	}

	j.closeLater(kernel)

	initrd := make([]uki.Part, len(im.Parts))
	for i, part := range im.Parts {
		initrd[i] = uki.Part{R: part}
	}

	u := &ukiImage{stub: stub, kernel: kernel, base: j.initrdBase, sums: &j.b.sums, secs: uki.Sections{
		OSRel:    osrel,
		Cmdline:  line,
		Linux:    uki.Blob{Size: kernel.Size(), Parts: []uki.Part{{R: io.NewSectionReader(kernel, 0, kernel.Size())}}},
		Initrd:   uki.Blob{Size: im.Size, Parts: initrd},
		Profiles: profiles,
	}}

	if u.size, err = uki.Size(stub, u.secs, ukiOptions); err != nil {
		return nil, fmt.Errorf("assemble UKI: %w", err)
	}

	return u, nil
}

// extensions are the schematic's extensions, its virtual extension and,
// if any, the embedded machine configuration (talos-formats §2).
func (j *job) extensions(ctx context.Context) ([]initramfs.Extension, error) {
	p := j.p

	var exts []initramfs.Extension

	for _, ext := range p.exts {
		j.emit(Event{Phase: "fetch", Artifact: ext.Verified.Digest().String(), Message: "extension " + ext.Name})

		img, err := ext.Platform(ctx, p.Output.Arch)
		if err != nil {
			return nil, fmt.Errorf("extension %s: %w", ext.Name, err)
		}

		exts = append(exts, initramfs.FromImage(img))
	}

	var info []byte // the factory's extraInfo: the canonical schematic, from Talos 1.7
	if quirks.New(p.Version.String()).SupportsOverlay() {
		info = p.canonical
	}

	exts = append(exts, initramfs.SchematicExtension(p.SchematicID, info, p.FactoryURL))

	if cfg := p.schematic.Customization.EmbeddedMachineConfiguration; cfg != "" {
		exts = append(exts, initramfs.EmbeddedConfigExtension([]byte(cfg)))
	}

	return exts, nil
}

func (j *job) emitInitramfs() {
	// Counted as the schematic asked: its virtual extension (and the
	// embedded machine configuration) are kiln's, not requested ones.
	j.emit(Event{Phase: "assemble", Message: "initramfs with " + extensionCount(len(j.p.exts)) + " (and the schematic's own)"})
}

func (j *job) initramfsOptions() initramfs.Options {
	return initramfs.Options{
		Arch: j.p.Output.Arch, TalosVersion: j.p.Version, ModTime: time.Unix(j.p.Epoch, 0), TempDir: j.tmp,
		Logger: j.b.deps.Logger,
	}
}
