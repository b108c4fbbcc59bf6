// Command talos-imager makes one boot asset with Talos's own imager
// (github.com/siderolabs/talos/pkg/imager), linked in process as the public
// Image Factory links it: imager.New(profile).Execute(ctx, outDir,
// reporter.New()). It is the Talos side of make bench-imager
// (hack/imager-bench): one process per asset, so that the bench measures
// its wall time, CPU and peak RSS with every tool it runs.
//
// The profile is what the factory makes of a request path with no
// schematic beyond extra kernel arguments and a boot loader: platform
// metal, amd64, the inputs as local files, the schematic's virtual
// extension as a system extension (the factory appends it to every ISO and
// disk: image-factory internal/profile EnhanceFromSchematic, the tarball of
// internal/artifacts/schematic.go, made here from -schematic-id,
// -schematic and -factory-url), an ISO with isoOptions.bootloader
// or a disk image of MinRAWDiskSize (the imager adds its boot partition
// deltas) with imageOptions.bootloader, and the factory's post-processing
// (outFormat raw, zstd or xz: zstd -T0 -18, xz -0 -T0, pkg/imager/post.go).
// SOURCE_DATE_EPOCH comes from the environment, as at the factory.
package main

import (
	"archive/tar"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/siderolabs/talos/pkg/imager"
	"github.com/siderolabs/talos/pkg/imager/profile"
	"github.com/siderolabs/talos/pkg/machinery/extensions"
	"github.com/siderolabs/talos/pkg/reporter"
	"go.yaml.in/yaml/v4"
)

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "talos-imager:", err)
		os.Exit(1)
	}
}

func run() error {
	var args stringList

	kind := flag.String("kind", "iso", "iso or image")
	bootloader := flag.String("bootloader", "sd-boot", "sd-boot, dual-boot or grub")
	format := flag.String("format", "raw", "post-processing: raw, zstd or xz")
	version := flag.String("version", "v1.13.9", "Talos version of the profile")
	kernel := flag.String("kernel", "", "vmlinuz")
	initramfs := flag.String("initramfs", "", "initramfs.xz")
	sdStub := flag.String("sd-stub", "", "systemd-stub (linuxx64.efi.stub)")
	sdBoot := flag.String("sd-boot", "", "systemd-boot (systemd-bootx64.efi)")
	out := flag.String("out", "", "output directory")
	rssFile := flag.String("rss", "", "write the peak RSS of the process tree here, in bytes")
	schematicID := flag.String("schematic-id", "", "the schematic's ID: with -schematic, its virtual extension is added as the factory adds it")
	schematicFile := flag.String("schematic", "", "the schematic's canonical YAML (the extension's extraInfo)")
	factoryURL := flag.String("factory-url", "", "the factory's external URL (the extension's author)")
	verbose := flag.Bool("v", false, "keep the imager's progress output (dropped by default: the bench times the build, not a terminal)")
	flag.Var(&args, "arg", "extra kernel argument (repeatable)")
	flag.Parse()

	for name, v := range map[string]string{"-kernel": *kernel, "-initramfs": *initramfs, "-sd-stub": *sdStub, "-sd-boot": *sdBoot, "-out": *out} {
		if v == "" {
			return fmt.Errorf("%s is required", name)
		}
	}

	var bl profile.BootloaderKind
	if err := bl.UnmarshalText([]byte(*bootloader)); err != nil {
		return fmt.Errorf("-bootloader %q: %w", *bootloader, err)
	}

	prof := profile.Profile{
		Arch:       "amd64",
		Platform:   "metal",
		SecureBoot: new(false),
		Version:    *version,
		Customization: profile.CustomizationProfile{
			ExtraKernelArgs: args,
		},
		Input: profile.Input{
			Kernel:    profile.FileAsset{Path: *kernel},
			Initramfs: profile.FileAsset{Path: *initramfs},
			SDStub:    profile.FileAsset{Path: *sdStub},
			SDBoot:    profile.FileAsset{Path: *sdBoot},
		},
	}

	if *schematicID != "" {
		info, err := os.ReadFile(*schematicFile)
		if err != nil {
			return fmt.Errorf("-schematic: %w", err)
		}

		tarball := filepath.Join(os.TempDir(), "schematic-"+*schematicID+".tar")
		if err := writeSchematicExtension(tarball, *schematicID, info, *factoryURL); err != nil {
			return err
		}

		defer os.Remove(tarball) //nolint:errcheck // scratch

		prof.Input.SystemExtensions = append(prof.Input.SystemExtensions, profile.ContainerAsset{TarballPath: tarball})
	}

	switch *kind {
	case "iso":
		prof.Output = profile.Output{Kind: profile.OutKindISO, OutFormat: profile.OutFormatRaw, ISOOptions: &profile.ISOOptions{Bootloader: bl}}
	case "image":
		prof.Output = profile.Output{Kind: profile.OutKindImage, OutFormat: profile.OutFormatRaw, ImageOptions: &profile.ImageOptions{
			DiskSize: profile.MinRAWDiskSize, DiskFormat: profile.DiskFormatRaw, Bootloader: bl,
		}}
	default:
		return fmt.Errorf("-kind %q: want iso or image", *kind)
	}

	switch *format {
	case "raw":
	case "zstd":
		prof.Output.OutFormat = profile.OutFormatZSTD
	case "xz":
		prof.Output.OutFormat = profile.OutFormatXZ
	default:
		return fmt.Errorf("-format %q: want raw, zstd or xz", *format)
	}

	// The imager dumps the profile and reports progress on stderr and
	// stdout; the bench has no use for them unless asked.
	stdout := os.Stdout

	if !*verbose {
		devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
		if err != nil {
			return err
		}

		stderr := os.Stderr
		os.Stdout, os.Stderr = devnull, devnull

		defer func() { os.Stderr = stderr }()
	}

	img, err := imager.New(prof)
	if err != nil {
		return err
	}

	path, err := img.Execute(context.Background(), *out, reporter.New())
	if err != nil {
		return err
	}

	if *rssFile != "" {
		rss, err := treePeakRSS()
		if err != nil {
			return err
		}

		if err := os.WriteFile(*rssFile, []byte(strconv.FormatInt(rss, 10)+"\n"), 0o644); err != nil {
			return err
		}
	}

	_, err = io.WriteString(stdout, path+"\n")

	return err
}

// treePeakRSS is the peak RSS of the largest process of this tree: this
// process's own high-water mark (VmHWM; its parent's cannot leak in, as it
// would into the ru_maxrss wait4 gives the parent, since exec records the
// high-water mark of the mm it replaces) or that of the largest child
// waited for.
func treePeakRSS() (int64, error) {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, err
	}

	var self int64

	for _, line := range strings.Split(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("VmHWM %q: %w", rest, err)
			}

			self = kb << 10
		}
	}

	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_CHILDREN, &ru); err != nil {
		return 0, err
	}

	return max(self, ru.Maxrss<<10), nil
}

// writeSchematicExtension writes the tarball the Image Factory passes the
// imager for a schematic (image-factory v1.4.0 internal/artifacts/schematic.go
// schematicExtension, for Talos versions with overlays): manifest.yaml, the
// rootfs directories and the empty rootfs/usr/local/share/schematic/<id>.
// The imager turns it into a squashfs layer of the initramfs, as kiln does
// with its own copy of the schematic extension.
func writeSchematicExtension(path, id string, canonical []byte, factoryURL string) error {
	manifest, err := yaml.Marshal(extensions.Manifest{
		Version: "v1alpha1",
		Metadata: extensions.Metadata{
			Name:          "schematic",
			Version:       id,
			Author:        "Image Factory (" + factoryURL + ")",
			Description:   "Virtual extension which specifies the schematic of the image built with schematic.",
			Compatibility: extensions.Compatibility{Talos: extensions.Constraint{Version: ">= 1.0.0"}},
			ExtraInfo:     string(canonical),
		},
	})
	if err != nil {
		return err
	}

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()

	tw := tar.NewWriter(f)

	if err := tw.WriteHeader(&tar.Header{Name: "manifest.yaml", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(manifest))}); err != nil {
		return err
	}

	if _, err := tw.Write(manifest); err != nil {
		return err
	}

	for _, dir := range []string{"rootfs/", "rootfs/usr/", "rootfs/usr/local/", "rootfs/usr/local/share/", "rootfs/usr/local/share/schematic/"} {
		if err := tw.WriteHeader(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
			return err
		}
	}

	if err := tw.WriteHeader(&tar.Header{Name: "rootfs/usr/local/share/schematic/" + id, Typeflag: tar.TypeReg, Mode: 0o644}); err != nil {
		return err
	}

	if err := tw.Close(); err != nil {
		return err
	}

	return f.Close()
}
