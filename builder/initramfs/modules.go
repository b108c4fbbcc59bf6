package initramfs

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"

	"github.com/kiln-dev/kiln/builder/cpio"
	"github.com/kiln-dev/kiln/internal/depmod"
	"github.com/kiln-dev/kiln/internal/squashfs"
)

// The synthetic last layer Talos's imager makes when extensions carry
// kernel modules (pkg/imager/extensions, internal/pkg/extensions
// kernel_modules.go).
const (
	ModulesLayerName        = "modules.dep"
	modulesLayerAuthor      = "Talos Machinery"
	modulesLayerDescription = "Combined modules.dep for all extensions"
	rootfsAsset             = "rootfs.sqsh"

	// Bounds on what is read out of the release's rootfs.sqsh.
	maxRootfs       = 4 << 30
	maxModuleTree   = 4 << 30
	maxModuleFiles  = 1 << 20
	modulesFilePerm = 0o644
)

// talosDepmodSearch is the imager's depmod configuration,
// /etc/modules.d/10-extra-modules.conf (Talos hack/extra-modules.conf):
// "search extras built-in", so an extension's extras/foo.ko wins over the
// kernel's foo.ko.
var talosDepmodSearch = []string{"extras", depmod.BuiltIn}

// extensionModules is one extension's part of the module tree, staged as
// it streams by (the files also go into its layer).
type extensionModules struct {
	index   int
	name    string
	dir     string // scratch copy of rootfs/<modules dir>
	present bool   // the extension has rootfs/<modules dir> at all
	pending *os.File
}

// stage records an entry under the modules directory (rel is relative to
// it) and returns the reader the layer should consume: for a regular file
// one that also copies it to the scratch tree. Symlinks are not staged
// (depmod does not follow them either here).
func (m *extensionModules) stage(rel string, hdr *tar.Header, r io.Reader) (io.Reader, error) {
	m.present = true

	if rel == "" {
		return r, nil
	}

	p := filepath.Join(m.dir, filepath.FromSlash(rel))

	switch hdr.Typeflag {
	case tar.TypeDir:
		return r, os.MkdirAll(p, 0o755)
	case tar.TypeReg:
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return nil, err
		}

		f, err := os.Create(p)
		if err != nil {
			return nil, err
		}

		m.pending = f

		return io.TeeReader(r, f), nil
	}

	return r, nil
}

// finish closes the file stage opened, if any.
func (m *extensionModules) finish() error {
	if m.pending == nil {
		return nil
	}

	err := m.pending.Close()
	m.pending = nil

	return err
}

// addModulesLayer does what Talos's GenerateKernelModuleDependencyTreeExtension
// does: take the module tree of the release's rootfs.sqsh (exactly one
// kernel version directory), copy every extension's modules for that
// version over it, run depmod, and make a layer of the modules.* files.
func (b *builder) addModulesLayer(ctx context.Context, base io.ReaderAt, size int64) error {
	rootfs, err := b.extractRootfs(base, size)
	if err != nil {
		return err
	}
	defer rootfs.Close() //nolint:errcheck // read-only scratch file

	fi, err := rootfs.Stat()
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	sq, err := squashfs.NewReader(rootfs, fi.Size())
	if err != nil {
		return fmt.Errorf("initramfs: release %s: %w", rootfsAsset, err)
	}

	ents, err := sq.ReadDir(b.modulesDir)
	if err != nil {
		return fmt.Errorf("initramfs: release %s has no module tree, which extensions with kernel modules need: %w", rootfsAsset, err)
	}

	if len(ents) != 1 || !ents[0].IsDir() {
		names := make([]string, len(ents))
		for i, e := range ents {
			names[i] = e.Name()
		}

		return fmt.Errorf("initramfs: release %s: /%s holds %q, want one kernel version directory", rootfsAsset, b.modulesDir, names)
	}

	kver := ents[0].Name()
	tree := filepath.Join(b.tmp, "module-tree", kver)

	if err := b.extractTree(ctx, sq, b.modulesDir+"/"+kver, tree); err != nil {
		return err
	}

	for _, m := range b.modules {
		src := filepath.Join(m.dir, kver)
		if _, err := os.Stat(src); err != nil {
			var have []string
			if des, err := os.ReadDir(m.dir); err == nil {
				for _, d := range des {
					have = append(have, d.Name())
				}
			}

			return extensionError(m.index, m.name, fmt.Errorf("%w: it ships /%s but nothing for the release's kernel %s (it has %q)",
				ErrInvalidExtension, b.modulesDir, kver, have))
		}

		if err := b.copyTree(ctx, src, tree); err != nil {
			return extensionError(m.index, m.name, err)
		}
	}

	files, err := depmod.Generate(os.DirFS(tree), depmod.Options{Search: talosDepmodSearch, Logger: b.log})
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	for name, data := range files {
		if err := os.WriteFile(filepath.Join(tree, name), data, modulesFilePerm); err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
	}

	return b.writeModulesLayer(tree, kver)
}

// writeModulesLayer makes modules.dep.sqsh of every modules.* file of the
// tree (the generated ones and those the release brought:
// modules.order, modules.builtin, modules.builtin.modinfo).
func (b *builder) writeModulesLayer(tree, kver string) error {
	ents, err := os.ReadDir(tree)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	image := ModulesLayerName + ".sqsh"
	sqshPath := filepath.Join(b.tmp, image)

	f, err := os.Create(sqshPath)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer f.Close() //nolint:errcheck // closed explicitly on success

	enc, err := b.encoder()
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	sq, err := squashfs.NewWriter(f, squashfs.Options{Encoder: enc, ModTime: b.mtime})
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	dir := b.modulesDir + "/" + kver
	if err := sq.Mkdir(dir, 0o755, nil); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "modules.") || !e.Type().IsRegular() {
			continue
		}

		info, err := e.Info()
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}

		data, err := os.Open(filepath.Join(tree, e.Name()))
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}

		err = sq.Create(dir+"/"+e.Name(), info.Mode().Perm(), data, nil)
		data.Close() //nolint:errcheck // read-only

		if err != nil {
			return fmt.Errorf("initramfs: %s layer: %w", ModulesLayerName, err)
		}
	}

	size, err := sq.Close()
	if err != nil {
		return fmt.Errorf("initramfs: %s layer: %w", ModulesLayerName, err)
	}

	if err := f.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	b.layers = append(b.layers, Layer{Image: image, Metadata: Metadata{
		Name: ModulesLayerName, Version: kver, Author: modulesLayerAuthor, Description: modulesLayerDescription,
	}})
	b.sqsh = append(b.sqsh, stagedFile{name: image, mode: cpio.TypeReg | 0o644, data: sqshPath, size: size})

	return nil
}

// extractRootfs finds rootfs.sqsh in the release initramfs (a zstd or xz
// newc archive, as Talos's autoDecompress reads it; uncompressed segments
// are looked at too) and copies it to a scratch file.
func (b *builder) extractRootfs(base io.ReaderAt, size int64) (*os.File, error) {
	segs, err := cpio.Segments(base, size)
	if err != nil {
		return nil, fmt.Errorf("initramfs: release initramfs: %w", err)
	}

	for _, s := range segs {
		sec := io.NewSectionReader(base, s.Offset, s.Size)

		var r io.Reader

		switch s.Compression {
		case cpio.None:
			r = sec
		case cpio.Zstd:
			d, err := zstd.NewReader(sec, zstd.WithDecoderConcurrency(1))
			if err != nil {
				return nil, fmt.Errorf("initramfs: %w", err)
			}

			defer d.Close()

			r = d
		case cpio.Xz:
			if r, err = xz.NewReader(sec); err != nil {
				return nil, fmt.Errorf("initramfs: release initramfs: %w", err)
			}
		default:
			continue
		}

		f, err := b.findInCpio(r, rootfsAsset)
		if err != nil {
			return nil, err
		}

		if f != nil {
			return f, nil
		}
	}

	return nil, fmt.Errorf("initramfs: the release initramfs has no %s, which extensions with kernel modules need", rootfsAsset)
}

// findInCpio copies the archive's entry name to a scratch file, or
// returns nil if the archive has none.
func (b *builder) findInCpio(r io.Reader, name string) (*os.File, error) {
	cr := cpio.NewReader(r)

	for {
		h, err := cr.Next()
		if errors.Is(err, io.EOF) {
			return nil, nil
		}

		if err != nil {
			return nil, fmt.Errorf("initramfs: release initramfs: %w", err)
		}

		if strings.TrimPrefix(path.Clean("/"+h.Name), "/") != name || !h.FileMode().IsRegular() {
			continue
		}

		if h.Size > maxRootfs {
			return nil, fmt.Errorf("initramfs: release %s is %d bytes", name, h.Size)
		}

		f, err := os.Create(filepath.Join(b.tmp, name))
		if err != nil {
			return nil, fmt.Errorf("initramfs: %w", err)
		}

		if _, err := io.CopyBuffer(struct{ io.Writer }{f}, struct{ io.Reader }{cr}, b.buf); err != nil {
			f.Close() //nolint:errcheck // the copy error is the one to report

			return nil, fmt.Errorf("initramfs: release %s: %w", name, err)
		}

		return f, nil
	}
}

// extractTree copies directory root of the image to dst: directories and
// regular files with their permissions (unsquashfs -no-xattrs, as Talos
// runs it); symlinks and special files are left out. Bounded in files and
// bytes.
func (b *builder) extractTree(ctx context.Context, sq *squashfs.Reader, root, dst string) error {
	var files int

	var bytesLeft int64 = maxModuleTree

	err := fs.WalkDir(sq, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		if err := ctx.Err(); err != nil {
			return err
		}

		if files++; files > maxModuleFiles {
			return fmt.Errorf("more than %d entries", maxModuleFiles)
		}

		target := filepath.Join(dst, filepath.FromSlash(strings.TrimPrefix(strings.TrimPrefix(p, root), "/")))

		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case !d.Type().IsRegular():
			return nil
		}

		info, err := d.Info()
		if err != nil {
			return err
		}

		if bytesLeft -= info.Size(); bytesLeft < 0 {
			return fmt.Errorf("more than %d bytes", int64(maxModuleTree))
		}

		in, err := sq.Open(p)
		if err != nil {
			return err
		}
		defer in.Close() //nolint:errcheck // read-only

		return b.writeFile(target, info.Mode().Perm(), in)
	})
	if err != nil {
		return fmt.Errorf("initramfs: release %s: module tree: %w", rootfsAsset, err)
	}

	return nil
}

// copyTree copies an extension's staged module directory over the tree.
func (b *builder) copyTree(ctx context.Context, src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}

		if err := ctx.Err(); err != nil {
			return err
		}

		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}

		target := filepath.Join(dst, rel)

		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}

		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close() //nolint:errcheck // read-only

		return b.writeFile(target, modulesFilePerm, in)
	})
}

func (b *builder) writeFile(name string, perm fs.FileMode, r io.Reader) error {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, perm)
	if err != nil {
		return err
	}

	_, err = io.CopyBuffer(struct{ io.Writer }{f}, struct{ io.Reader }{r}, b.buf)
	if cerr := f.Close(); err == nil {
		err = cerr
	}

	return err
}

// writeXz writes the extension archive xz-compressed, as Talos before 1.8
// does (xz -C crc32 -0 -e): check type CRC32, which the kernel's initramfs
// decompressor requires, and xz -0's 256 KiB dictionary. The stream is
// decoded back and compared before it is written, so an encoder fault
// cannot reach a node.
func (b *builder) writeXz(ctx context.Context, w io.Writer, entries []stagedFile) error {
	raw, err := os.Create(filepath.Join(b.tmp, "extensions.cpio"))
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer raw.Close() //nolint:errcheck // scratch

	rawSum := sha256.New()
	if err := b.writeCpio(ctx, io.MultiWriter(raw, rawSum), entries); err != nil {
		return err
	}

	if _, err := raw.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	packed, err := os.Create(filepath.Join(b.tmp, "extensions.cpio.xz"))
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer packed.Close() //nolint:errcheck // scratch

	xw, err := xz.WriterConfig{CheckSum: xz.CRC32, DictCap: 256 << 10, Matcher: lzma.HashTable4}.NewWriter(packed)
	if err != nil {
		return fmt.Errorf("initramfs: xz: %w", err)
	}

	if _, err := io.CopyBuffer(xw, struct{ io.Reader }{raw}, b.buf); err != nil {
		return fmt.Errorf("initramfs: xz: %w", err)
	}

	if err := xw.Close(); err != nil {
		return fmt.Errorf("initramfs: xz: %w", err)
	}

	if _, err := packed.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	xr, err := xz.NewReader(packed)
	if err != nil {
		return fmt.Errorf("initramfs: xz check: %w", err)
	}

	check := sha256.New()
	if _, err := io.CopyBuffer(check, xr, b.buf); err != nil {
		return fmt.Errorf("initramfs: xz check: %w", err)
	}

	if !bytes.Equal(check.Sum(nil), rawSum.Sum(nil)) {
		return errors.New("initramfs: xz check: the compressed extension archive does not decompress to the archive")
	}

	if _, err := packed.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	if _, err := io.CopyBuffer(w, struct{ io.Reader }{packed}, b.buf); err != nil {
		return fmt.Errorf("initramfs: write: %w", err)
	}

	return nil
}
