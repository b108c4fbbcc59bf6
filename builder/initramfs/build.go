package initramfs

import (
	"archive/tar"
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/blang/semver/v4"
	"github.com/klauspost/compress/zstd"
	"github.com/siderolabs/talos/pkg/machinery/imager/quirks"
	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/builder/cpio"
	"github.com/kiln-dev/kiln/internal/squashfs"
	"github.com/kiln-dev/kiln/release"
)

// Options are the build settings that are not inputs.
type Options struct {
	// Arch is the target architecture, "amd64" or "arm64"; required. It
	// does not change the layout: microcode goes to kernel/x86/microcode
	// whatever the arch (there are no microcode extensions for arm64).
	Arch string
	// TalosVersion is checked against each extension's compatibility
	// constraint; required.
	TalosVersion release.Version
	// ModTime is stamped on every cpio entry and squashfs inode, like
	// SOURCE_DATE_EPOCH; the zero value means the Unix epoch.
	ModTime time.Time
	// TempDir is where scratch files go (one squashfs per extension, the
	// firmware and microcode files and, with kernel modules, the module
	// tree; removed before Build returns); empty means os.TempDir().
	TempDir string
	// Logger receives depmod's warnings; nil discards them.
	Logger *slog.Logger
}

const (
	// copyBuf is the chunk size for every copy of bulk data.
	copyBuf = 1 << 20
	// maxManifest bounds manifest.yaml, which is read into memory.
	maxManifest = 1 << 20

	microcodeDir = "kernel/x86/microcode"
	intelUcode   = "GenuineIntel.bin"
	amdUcode     = "AuthenticAMD.bin"
)

// Build writes the initramfs: [uncompressed microcode cpio] + base +
// [zstd or xz cpio: <i>.sqsh..., modules.dep.sqsh, extensions.yaml,
// firmware]. base is the release initramfs and is copied unchanged. exts
// become layers named by their index in exts, listed in the order Talos
// lists them (index strings sorted: "10" before "2"); put the schematic
// and embedded-config virtual extensions last, as Talos does. When any
// extension carries kernel modules, the release's module tree is read
// from base's rootfs.sqsh, the extensions' modules are added, depmod's
// files are computed (internal/depmod) and appended as a last layer,
// modules.dep.sqsh. Nothing is written to out until every extension has
// been read and validated, so a refused extension leaves out empty.
//
// What depends on the Talos version follows Talos's imager quirks
// (pkg/machinery/imager/quirks): zstd layers and a zstd cpio from 1.8, xz
// before; firmware at usr/lib/firmware and modules at usr/lib/modules
// from 1.10, lib/firmware and lib/modules before.
func Build(ctx context.Context, base io.Reader, exts []Extension, opts Options, out io.Writer) error {
	b, err := newBuilder(opts)
	if err != nil {
		return err
	}
	defer b.close()

	if err := b.addExtensions(ctx, exts); err != nil {
		return err
	}

	// With kernel modules the base is read twice: for its rootfs.sqsh,
	// then to copy it.
	if len(b.modules) > 0 {
		spooled, err := b.spool(base)
		if err != nil {
			return err
		}
		defer spooled.Close() //nolint:errcheck // read-only scratch file

		fi, err := spooled.Stat()
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}

		if err := b.addModulesLayer(ctx, spooled, fi.Size()); err != nil {
			return err
		}

		base = io.NewSectionReader(spooled, 0, fi.Size())
	}

	bw := bufio.NewWriterSize(out, copyBuf)

	if err := b.writeMicrocode(ctx, bw); err != nil {
		return err
	}

	// Hide base's WriterTo so the copy goes through bw in 1 MiB chunks.
	if _, err := io.CopyBuffer(bw, struct{ io.Reader }{base}, b.buf); err != nil {
		return fmt.Errorf("initramfs: copy base initramfs: %w", err)
	}

	if len(exts) > 0 {
		if err := b.writeExtensions(ctx, bw); err != nil {
			return err
		}
	}

	if err := bw.Flush(); err != nil {
		return fmt.Errorf("initramfs: write: %w", err)
	}

	return nil
}

// Image is the initramfs Build writes as the pieces it is concatenated
// from: the microcode cpio, the release's base (the caller's section,
// never copied) and the extensions' cpio, the first and last in a scratch
// file that Close removes. A UKI or an image takes the pieces where they
// go, the base copied in the kernel, instead of a concatenated copy.
type Image struct {
	// Parts are the pieces in order; empty ones are left out.
	Parts []*io.SectionReader
	// Size is the initramfs's size, the sum of the parts'.
	Size int64

	scratch *os.File
}

// Reader reads the whole initramfs.
func (im *Image) Reader() io.Reader {
	rs := make([]io.Reader, len(im.Parts))
	for i, p := range im.Parts {
		rs[i] = io.NewSectionReader(p, 0, p.Size())
	}

	return io.MultiReader(rs...)
}

// Close removes the scratch file.
func (im *Image) Close() error {
	if im.scratch == nil {
		return nil
	}

	err := im.scratch.Close()
	if rerr := os.Remove(im.scratch.Name()); err == nil {
		err = rerr
	}

	im.scratch = nil

	return err
}

// Assemble makes the initramfs Build would write from base as an Image,
// its scratch file in opts.TempDir. The caller closes it.
func Assemble(ctx context.Context, base *io.SectionReader, exts []Extension, opts Options) (*Image, error) {
	b, err := newBuilder(opts)
	if err != nil {
		return nil, err
	}
	defer b.close()

	if err := b.addExtensions(ctx, exts); err != nil {
		return nil, err
	}

	if len(b.modules) > 0 {
		if err := b.addModulesLayer(ctx, base, base.Size()); err != nil {
			return nil, err
		}
	}

	f, err := os.CreateTemp(opts.TempDir, "kiln-initramfs-parts-")
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}

	im := &Image{scratch: f}

	bw := bufio.NewWriterSize(struct{ io.Writer }{f}, copyBuf)

	err = b.writeMicrocode(ctx, bw)
	if err == nil {
		err = bw.Flush()
	}

	var head int64
	if err == nil {
		head, err = f.Seek(0, io.SeekCurrent)
	}

	if err == nil && len(exts) > 0 {
		err = b.writeExtensions(ctx, bw)
	}

	if err == nil {
		err = bw.Flush()
	}

	var end int64
	if err == nil {
		end, err = f.Seek(0, io.SeekCurrent)
	}

	if err != nil {
		im.Close() //nolint:errcheck // the build error is the one to report

		return nil, fmt.Errorf("initramfs: %w", err)
	}

	// A section of base's own file, not of base: a copy can find the file.
	outer, off, n := base.Outer()

	for _, p := range []*io.SectionReader{io.NewSectionReader(f, 0, head), io.NewSectionReader(outer, off, n), io.NewSectionReader(f, head, end-head)} {
		if p.Size() > 0 {
			im.Parts = append(im.Parts, p)
			im.Size += p.Size()
		}
	}

	return im, nil
}

// newBuilder checks opts and makes the builder of one initramfs, with its
// scratch directory (close removes it).
func newBuilder(opts Options) (*builder, error) {
	if opts.TalosVersion.IsZero() {
		return nil, errors.New("initramfs: no Talos version")
	}

	if opts.Arch == "" {
		return nil, errors.New("initramfs: no architecture")
	}

	tmp, err := os.MkdirTemp(opts.TempDir, "kiln-initramfs-")
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}

	q := quirks.New(opts.TalosVersion.String())

	b := &builder{
		tmp:         tmp,
		talos:       opts.TalosVersion.Semver(),
		mtime:       opts.ModTime,
		zstd:        q.UseZSTDCompression(),
		firmwareDir: strings.TrimPrefix(q.FirmwarePath(), "/"),
		modulesDir:  strings.TrimPrefix(q.KernelModulesPath(), "/"),
		firmware:    map[string]*stagedFile{},
		buf:         make([]byte, copyBuf),
		log:         opts.Logger,
	}

	if b.mtime.IsZero() {
		b.mtime = time.Unix(0, 0)
	}

	if b.log == nil {
		b.log = slog.New(slog.DiscardHandler)
	}

	return b, nil
}

// close removes the scratch directory.
func (b *builder) close() {
	os.RemoveAll(b.tmp) //nolint:errcheck // best effort; the error that matters is returned
}

// addExtensions reads and validates exts in Talos's order.
func (b *builder) addExtensions(ctx context.Context, exts []Extension) error {
	for _, i := range LayerOrder(len(exts)) {
		if err := b.addExtension(ctx, i, exts[i]); err != nil {
			return err
		}
	}

	return nil
}

// LayerOrder is the order Talos lists n extensions in: the imager extracts
// extension i into a directory named strconv.Itoa(i) and lists those
// directories sorted as strings (internal/pkg/extensions.List), so with 11
// or more the order is 0, 1, 10, 2, ... Layers are mounted, microcode is
// concatenated and firmware overrides in this order.
func LayerOrder(n int) []int {
	order := make([]int, n)
	for i := range order {
		order[i] = i
	}

	sort.Slice(order, func(a, c int) bool { return strconv.Itoa(order[a]) < strconv.Itoa(order[c]) })

	return order
}

// spool copies base to a scratch file.
func (b *builder) spool(base io.Reader) (*os.File, error) {
	f, err := os.Create(filepath.Join(b.tmp, "base"))
	if err != nil {
		return nil, fmt.Errorf("initramfs: %w", err)
	}

	if _, err := io.CopyBuffer(struct{ io.Writer }{f}, struct{ io.Reader }{base}, b.buf); err != nil {
		f.Close() //nolint:errcheck // the copy error is the one to report

		return nil, fmt.Errorf("initramfs: copy base initramfs: %w", err)
	}

	return f, nil
}

// stagedFile is a file, directory or symlink waiting in tmp for a cpio.
type stagedFile struct {
	name string // path in the archive
	mode uint32 // cpio type and permission bits
	link string
	data string // scratch file holding the content, for regular files
	size int64
}

type builder struct {
	tmp   string
	talos semver.Version
	mtime time.Time
	// zstd or xz, by Talos version
	zstd bool
	// usr/lib/firmware or lib/firmware, usr/lib/modules or lib/modules
	firmwareDir, modulesDir string
	layers                  []Layer
	sqsh                    []stagedFile
	firmware                map[string]*stagedFile
	// modules are the extensions that carry modulesDir, in layer order
	modules []extensionModules
	log     *slog.Logger
	enc     *squashfs.Encoder
	// microcode parts by target file name, in extension order, each
	// extension's files sorted by name.
	microcode map[string][]stagedFile
	scratch   int
	buf       []byte
}

// extensionError names the extension in an error.
func extensionError(i int, name string, err error) error {
	return fmt.Errorf("initramfs: extension %d (%s): %w", i, name, err)
}

// addExtension reads one extension's tar stream once: rootfs/ goes into
// <i>.sqsh as it streams by, firmware and microcode into scratch files.
func (b *builder) addExtension(ctx context.Context, i int, ext Extension) error {
	name := ext.Name()

	rc, err := ext.Open(ctx)
	if err != nil {
		return extensionError(i, name, err)
	}
	defer rc.Close() //nolint:errcheck // read-only stream

	sqshPath := filepath.Join(b.tmp, strconv.Itoa(i)+".sqsh")

	f, err := os.Create(sqshPath)
	if err != nil {
		return extensionError(i, name, err)
	}
	defer f.Close() //nolint:errcheck // closed explicitly on success

	enc, err := b.encoder()
	if err != nil {
		return extensionError(i, name, err)
	}

	sq, err := squashfs.NewWriter(f, squashfs.Options{Encoder: enc, ModTime: b.mtime})
	if err != nil {
		return extensionError(i, name, err)
	}

	var (
		manifest  *Manifest
		hasRootfs bool
		ucode     = map[string][]stagedFile{}
		mods      = extensionModules{index: i, dir: filepath.Join(b.tmp, "modules-"+strconv.Itoa(i))}
	)

	tr := tar.NewReader(rc)

	for {
		if err := ctx.Err(); err != nil {
			return extensionError(i, name, err)
		}

		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}

		if err != nil {
			return extensionError(i, name, fmt.Errorf("read: %w", err))
		}

		p := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if p == "." || p == "/" {
			continue
		}

		p = strings.TrimPrefix(p, "/")

		switch {
		case p == "manifest.yaml":
			if manifest, err = b.readManifest(tr, hdr); err != nil {
				return extensionError(i, name, err)
			}

			name = fmt.Sprintf("%s, %s", name, manifest.Metadata.Name)
		case p == "rootfs":
			hasRootfs = true

			// The root of the layer: its mode and label (Talos labels
			// "/" from the rootfs entry's PAX record).
			if hdr.Typeflag == tar.TypeDir {
				if err := sq.Mkdir("", fs.FileMode(hdr.Mode&0o7777)|0o700, selinuxLabel(hdr)); err != nil {
					return extensionError(i, name, err)
				}
			}
		case strings.HasPrefix(p, "rootfs/"):
			hasRootfs = true

			if err := b.addRootfsEntry(sq, ucode, &mods, strings.TrimPrefix(p, "rootfs/"), hdr, tr); err != nil {
				return extensionError(i, name, err)
			}
		default:
			return extensionError(i, name, fmt.Errorf("%w: unexpected file %q at the top level (only manifest.yaml and rootfs/ are allowed)",
				ErrInvalidExtension, p))
		}
	}

	if manifest == nil {
		return extensionError(i, name, fmt.Errorf("%w: no manifest.yaml", ErrInvalidExtension))
	}

	if !hasRootfs {
		return extensionError(i, name, fmt.Errorf("%w: no rootfs/", ErrInvalidExtension))
	}

	size, err := sq.Close()
	if err != nil {
		return extensionError(i, name, err)
	}

	if err := f.Close(); err != nil {
		return extensionError(i, name, err)
	}

	for target, parts := range ucode {
		sort.Slice(parts, func(a, c int) bool { return parts[a].name < parts[c].name })

		if b.microcode == nil {
			b.microcode = map[string][]stagedFile{}
		}

		b.microcode[target] = append(b.microcode[target], parts...)
	}

	image := strconv.Itoa(i) + ".sqsh"
	b.layers = append(b.layers, Layer{Image: image, Metadata: manifest.Metadata})
	b.sqsh = append(b.sqsh, stagedFile{name: image, mode: cpio.TypeReg | 0o644, data: sqshPath, size: size})

	if mods.present {
		mods.name = name
		b.modules = append(b.modules, mods)
	}

	return nil
}

// encoder is the build's one squashfs encoder: zstd at the strongest
// level the Go encoder has, or xz; made once, as the zstd one allocates
// 34 MiB of tables.
func (b *builder) encoder() (*squashfs.Encoder, error) {
	if b.enc != nil {
		return b.enc, nil
	}

	comp := squashfs.XZ
	if b.zstd {
		comp = squashfs.Zstd
	}

	var err error

	b.enc, err = squashfs.NewEncoder(comp, 0)

	return b.enc, err
}

// selinuxLabel is the only xattr Talos keeps: security.selinux from the
// tar entry's PAX record SCHILY.xattr.security.selinux, when not empty
// (pkg/archiver.Untar records it; mksquashfs gets -xattrs-exclude .* and
// one -p "<path> x security.selinux=<label>" per labelled path).
func selinuxLabel(hdr *tar.Header) map[string]string {
	if label := hdr.PAXRecords[paxSELinux]; label != "" {
		return map[string]string{"security.selinux": label}
	}

	return nil
}

func (b *builder) readManifest(tr io.Reader, hdr *tar.Header) (*Manifest, error) {
	if hdr.Typeflag != tar.TypeReg {
		return nil, fmt.Errorf("%w: manifest.yaml is not a regular file", ErrInvalidExtension)
	}

	if hdr.Size > maxManifest {
		return nil, fmt.Errorf("%w: manifest.yaml is %d bytes", ErrInvalidExtension, hdr.Size)
	}

	data, err := io.ReadAll(tr)
	if err != nil {
		return nil, fmt.Errorf("read manifest.yaml: %w", err)
	}

	return parseManifest(data, b.talos)
}

// microcodeTarget says which microcode bundle a rootfs path belongs to:
// every file directly in intel-ucode/, and amd-ucode/microcode_amd*.bin
// (Talos's globs).
func (b *builder) microcodeTarget(rel string) string {
	dir, file := path.Split(rel)

	switch strings.TrimSuffix(dir, "/") {
	case b.firmwareDir + "/intel-ucode":
		return intelUcode
	case b.firmwareDir + "/amd-ucode":
		if strings.HasPrefix(file, "microcode_amd") && strings.HasSuffix(file, ".bin") {
			return amdUcode
		}
	}

	return ""
}

func (b *builder) addRootfsEntry(sq *squashfs.Writer, ucode map[string][]stagedFile, mods *extensionModules,
	rel string, hdr *tar.Header, r io.Reader,
) error {
	perm := fs.FileMode(hdr.Mode & 0o7777)
	if hdr.Typeflag == tar.TypeDir {
		perm |= 0o700 // Talos's Untar makes every directory rwx for its owner
	}

	xattrs := selinuxLabel(hdr)

	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink:
	case tar.TypeLink:
		return fmt.Errorf("%w: %s: hard links are not supported", ErrInvalidExtension, rel)
	default:
		return fmt.Errorf("%w: %s: unsupported tar entry type %q", ErrInvalidExtension, rel, hdr.Typeflag)
	}

	if target := b.microcodeTarget(rel); target != "" && hdr.Typeflag == tar.TypeReg {
		sf, err := b.stage(rel, cpio.TypeReg|0o644, hdr, r)
		if err != nil {
			return err
		}

		ucode[target] = append(ucode[target], sf)

		return nil
	}

	if rel == b.firmwareDir || strings.HasPrefix(rel, b.firmwareDir+"/") {
		mode := uint32(perm)

		switch hdr.Typeflag {
		case tar.TypeDir:
			mode |= cpio.TypeDir
		case tar.TypeSymlink:
			mode |= cpio.TypeSymlink
		default:
			mode |= cpio.TypeReg
		}

		sf, err := b.stage(rel, mode, hdr, r)
		if err != nil {
			return err
		}

		// A later extension's firmware replaces an earlier one's, as the
		// later layer would.
		b.firmware[rel] = &sf

		return nil
	}

	// Kernel modules stay in the layer and are also staged for depmod.
	if rel == b.modulesDir || strings.HasPrefix(rel, b.modulesDir+"/") {
		var err error
		if r, err = mods.stage(strings.TrimPrefix(strings.TrimPrefix(rel, b.modulesDir), "/"), hdr, r); err != nil {
			return err
		}
	}

	switch hdr.Typeflag {
	case tar.TypeDir:
		return sq.Mkdir(rel, perm, xattrs)
	case tar.TypeSymlink:
		return sq.Symlink(rel, hdr.Linkname, xattrs)
	default:
		err := sq.Create(rel, perm, r, xattrs)
		if ferr := mods.finish(); err == nil {
			err = ferr
		}

		return err
	}
}

// stage copies a regular file's content to a scratch file; directories
// and symlinks need only their header.
func (b *builder) stage(rel string, mode uint32, hdr *tar.Header, r io.Reader) (stagedFile, error) {
	sf := stagedFile{name: rel, mode: mode, link: hdr.Linkname}
	if hdr.Typeflag != tar.TypeReg {
		return sf, nil
	}

	b.scratch++
	sf.data = filepath.Join(b.tmp, "f"+strconv.Itoa(b.scratch))

	f, err := os.Create(sf.data)
	if err != nil {
		return sf, err
	}

	n, err := io.CopyBuffer(struct{ io.Writer }{f}, struct{ io.Reader }{r}, b.buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}

	if err != nil {
		return sf, fmt.Errorf("%s: %w", rel, err)
	}

	sf.size = n

	return sf, nil
}

// writeMicrocode writes the uncompressed microcode cpio, if any extension
// had microcode. The kernel only finds early microcode in an uncompressed
// archive at the very start of the initramfs.
func (b *builder) writeMicrocode(ctx context.Context, w io.Writer) error {
	if len(b.microcode) == 0 {
		return nil
	}

	cw := cpio.NewWriter(w)

	for _, d := range []string{"kernel", "kernel/x86", microcodeDir} {
		if err := cw.WriteHeader(&cpio.Header{Name: d, Mode: cpio.TypeDir | 0o755, ModTime: b.mtime}); err != nil {
			return fmt.Errorf("initramfs: microcode cpio: %w", err)
		}
	}

	for _, target := range []string{amdUcode, intelUcode} {
		parts := b.microcode[target]
		if len(parts) == 0 {
			continue
		}

		var size int64
		for _, p := range parts {
			size += p.size
		}

		h := &cpio.Header{Name: microcodeDir + "/" + target, Mode: cpio.TypeReg | 0o644, ModTime: b.mtime, Size: size}
		if err := cw.WriteHeader(h); err != nil {
			return fmt.Errorf("initramfs: microcode cpio: %w", err)
		}

		for _, p := range parts {
			if err := b.copyFile(ctx, cw, p.data); err != nil {
				return fmt.Errorf("initramfs: microcode %s: %w", p.name, err)
			}
		}
	}

	if err := cw.Close(); err != nil {
		return fmt.Errorf("initramfs: microcode cpio: %w", err)
	}

	return nil
}

// writeExtensions writes the zstd-compressed cpio with the layers,
// extensions.yaml and the firmware.
func (b *builder) writeExtensions(ctx context.Context, w io.Writer) error {
	cfg, err := yaml.Marshal(Config{Layers: b.layers})
	if err != nil {
		return fmt.Errorf("initramfs: extensions.yaml: %w", err)
	}

	cfgPath := filepath.Join(b.tmp, "extensions.yaml")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	entries := append([]stagedFile{}, b.sqsh...)
	entries = append(entries, stagedFile{name: "extensions.yaml", mode: cpio.TypeReg | 0o644, data: cfgPath, size: int64(len(cfg))})

	// Firmware, with every parent directory (tar streams may omit them).
	have := map[string]bool{}
	for name, f := range b.firmware {
		entries = append(entries, *f)
		have[name] = true
	}

	for name := range b.firmware {
		for d := path.Dir(name); d != "."; d = path.Dir(d) {
			if !have[d] {
				have[d] = true
				entries = append(entries, stagedFile{name: d, mode: cpio.TypeDir | 0o755})
			}
		}
	}

	// The order of a sorted directory walk, like Talos's filepath.Walk:
	// parents first, siblings by name.
	sort.Slice(entries, func(i, j int) bool { return walkLess(entries[i].name, entries[j].name) })

	if !b.zstd {
		return b.writeXz(ctx, w, entries)
	}

	// Talos compresses with zstd -18; the layers inside are already
	// compressed, so the default level loses little and is much faster.
	// One goroutine keeps the output independent of scheduling, and an
	// 8 MiB window is what zstd -18 uses, well within what the kernel's
	// decompressor accepts.
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1),
		zstd.WithWindowSize(8<<20), zstd.WithEncoderCRC(true))
	if err != nil {
		return fmt.Errorf("initramfs: zstd: %w", err)
	}

	if err := b.writeCpio(ctx, zw, entries); err != nil {
		return err
	}

	if err := zw.Close(); err != nil {
		return fmt.Errorf("initramfs: zstd: %w", err)
	}

	return nil
}

// writeCpio writes the extension archive.
func (b *builder) writeCpio(ctx context.Context, w io.Writer, entries []stagedFile) error {
	cw := cpio.NewWriter(w)

	for _, e := range entries {
		h := &cpio.Header{Name: e.name, Mode: e.mode, ModTime: b.mtime, Size: e.size, Linkname: e.link}
		if err := cw.WriteHeader(h); err != nil {
			return fmt.Errorf("initramfs: extension cpio: %s: %w", e.name, err)
		}

		if e.data != "" {
			if err := b.copyFile(ctx, cw, e.data); err != nil {
				return fmt.Errorf("initramfs: extension cpio: %s: %w", e.name, err)
			}
		}
	}

	if err := cw.Close(); err != nil {
		return fmt.Errorf("initramfs: extension cpio: %w", err)
	}

	return nil
}

func (b *builder) copyFile(ctx context.Context, w io.Writer, name string) error {
	if err := ctx.Err(); err != nil {
		return err
	}

	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close() //nolint:errcheck // read-only

	_, err = io.CopyBuffer(struct{ io.Writer }{w}, struct{ io.Reader }{f}, b.buf)

	return err
}

// walkLess orders paths component by component, so that "a/b" comes
// before "a-b" as in a directory walk ("a" < "a-b").
func walkLess(a, b string) bool {
	pa, pb := strings.Split(a, "/"), strings.Split(b, "/")
	for i := range min(len(pa), len(pb)) {
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}

	return len(pa) < len(pb)
}
