// Command installer is the test fixture's /bin/installer: what the
// synthetic installer-base carries in place of Talos's installer, so that
// an installer image kiln assembled can be run, in a VM, onto a blank disk.
//
//	installer install --disk /dev/vda [--timeout 10] [--efi-size MiB] [--arch amd64] [--root /]
//
// It reads the boot assets the installer image carries
// (<root>/usr/install/<arch>/systemd-boot.efi and vmlinuz.efi, Talos 1.10
// and later) and writes a GPT disk with the sd-boot layout of Talos (EFI,
// META) whose EFI system partition holds systemd-boot as
// EFI/BOOT/BOOTX64.EFI (BOOTAA64.EFI), the UKI as EFI/Linux/Talos-<version>.efi
// and loader/loader.conf, with kiln's own builder/disk and builder/esp.
// The version comes from $VERSION, as installer-base's config sets it.
//
// Onto a block device it builds the image in a sparse file under $TMPDIR
// (which must support SEEK_DATA, e.g. tmpfs) and copies only the written
// extents, so a blank disk needs no zeroing; a regular file is written in
// place. It is a fixture: no STATE/EPHEMERAL, no EFI variables, no GRUB.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/kiln-dev/kiln/builder/disk"
	"github.com/kiln-dev/kiln/builder/esp"
)

func main() {
	if err := run(context.Background(), os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "installer:", err)
		os.Exit(1)
	}
}

type options struct {
	disk, arch, root, version string
	timeout                   int
	efiMiB                    int64
	viaTemp                   bool
}

func run(ctx context.Context, args []string, out io.Writer) error {
	if len(args) == 0 || args[0] != "install" {
		return errors.New("usage: installer install --disk DEVICE [--timeout N] [--arch ARCH] [--root DIR]")
	}

	var o options

	fs := flag.NewFlagSet("install", flag.ContinueOnError)
	fs.StringVar(&o.disk, "disk", "", "block device (or disk image file) to install onto")
	fs.StringVar(&o.arch, "arch", runtime.GOARCH, "architecture of the boot assets")
	fs.StringVar(&o.root, "root", "/", "root of the installer image (holding usr/install)")
	fs.StringVar(&o.version, "version", os.Getenv("VERSION"), "Talos version, for the UKI's file name")
	fs.IntVar(&o.timeout, "timeout", 10, "systemd-boot menu timeout in seconds (Talos's loader.conf says 10)")
	fs.Int64Var(&o.efiMiB, "efi-size", 0, "EFI partition size in MiB (0: builder/disk's default, Talos's image size)")
	fs.BoolVar(&o.viaTemp, "via-temp", false, "build in a temp file and copy extents even onto a regular file")

	if err := fs.Parse(args[1:]); err != nil {
		return err
	}

	if o.disk == "" || o.version == "" {
		return errors.New("--disk and a version ($VERSION or --version) are required")
	}

	return install(ctx, o, out)
}

func install(ctx context.Context, o options, out io.Writer) error {
	assets := filepath.Join(o.root, "usr", "install", o.arch)

	sdboot, uki := filepath.Join(assets, "systemd-boot.efi"), filepath.Join(assets, "vmlinuz.efi")
	if _, err := os.Stat(uki); err != nil {
		if _, kerr := os.Stat(filepath.Join(assets, "vmlinuz")); kerr == nil {
			return fmt.Errorf("%s holds vmlinuz and initramfs.xz (Talos before 1.10, GRUB): this fixture installs only systemd-boot and a UKI", assets)
		}

		return err
	}

	bootName := map[string]string{"amd64": "BOOTX64.EFI", "arm64": "BOOTAA64.EFI"}[o.arch]
	if bootName == "" {
		return fmt.Errorf("no EFI boot file name for %q", o.arch)
	}

	files := []esp.File{}

	for _, f := range []struct{ path, src string }{
		{"EFI/BOOT/" + bootName, sdboot},
		{"EFI/Linux/Talos-" + o.version + ".efi", uki},
	} {
		st, err := os.Stat(f.src)
		if err != nil {
			return err
		}

		src := f.src
		files = append(files, esp.File{Path: f.path, Size: st.Size(), Open: func() (io.ReadCloser, error) { return os.Open(src) }})
	}

	conf := fmt.Sprintf("# systemd-boot configuration\n\ntimeout %d\n", o.timeout)
	files = append(files, esp.File{Path: "loader/loader.conf", Size: int64(len(conf)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(conf)), nil }})

	dev, err := os.OpenFile(o.disk, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer dev.Close() //nolint:errcheck // closed below on success

	st, err := dev.Stat()
	if err != nil {
		return err
	}

	size, err := dev.Seek(0, io.SeekEnd)
	if err != nil {
		return err
	}

	sector := sectorSize(o.disk)
	params := disk.Params{SectorSize: sector, Size: size / int64(sector) * int64(sector), EFISize: o.efiMiB * disk.MiB,
		EFI: disk.ESP(files, esp.Options{})}

	if st.Mode().IsRegular() && !o.viaTemp {
		if err := disk.Write(ctx, dev, params); err != nil {
			return err
		}
	} else if err := writeViaTemp(ctx, dev, params); err != nil {
		return err
	}

	if err := dev.Sync(); err != nil {
		return err
	}

	fmt.Fprintf(out, "installer: Talos %s (%s) installed onto %s: %d bytes, %d-byte sectors, EFI/BOOT/%s, EFI/Linux/Talos-%s.efi\n",
		o.version, o.arch, o.disk, params.Size, sector, bootName, o.version)

	return dev.Close()
}

// sectorSize is the logical sector size of a block device, 512 otherwise.
func sectorSize(dev string) int {
	b, err := os.ReadFile(filepath.Join("/sys/class/block", filepath.Base(dev), "queue", "logical_block_size"))
	if err != nil {
		return 512
	}

	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || (n != 512 && n != 4096) {
		return 512
	}

	return n
}

// writeViaTemp builds the disk in a sparse temp file and copies its data
// extents onto dev.
func writeViaTemp(ctx context.Context, dev *os.File, params disk.Params) error {
	tmp, err := os.CreateTemp("", "disk-*.raw")
	if err != nil {
		return err
	}

	defer os.Remove(tmp.Name()) //nolint:errcheck // scratch
	defer tmp.Close()           //nolint:errcheck // scratch

	if err := disk.Write(ctx, tmp, params); err != nil {
		return err
	}

	buf := make([]byte, 4<<20)

	for off := int64(0); off < params.Size; {
		start, err := tmp.Seek(off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			return nil // only a hole is left
		}

		if err != nil {
			return fmt.Errorf("finding data in the temp image (does $TMPDIR support SEEK_DATA?): %w", err)
		}

		end, err := tmp.Seek(start, unix.SEEK_HOLE)
		if err != nil {
			return err
		}

		for p := start; p < end; {
			n := min(int64(len(buf)), end-p)
			if _, err := tmp.ReadAt(buf[:n], p); err != nil {
				return err
			}

			if _, err := dev.WriteAt(buf[:n], p); err != nil {
				return err
			}

			p += n
		}

		off = end
	}

	return nil
}
