package demo

import (
	"errors"
	"fmt"
	"io/fs"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"go.yaml.in/yaml/v4"

	"github.com/kiln-dev/kiln/release"
)

// versionLabel is the label the real imager and installer-base carry.
const versionLabel = "alpha.talos.dev/version"

// bootAssets returns usr/install/<arch>/* for one arch: the caller's asset
// when Options.Assets has one, a placeholder otherwise.
func bootAssets(o *Options, arch string) ([]entry, error) {
	dir := release.InstallDir + "/" + arch + "/"

	var entries []entry

	// The four files image-factory extracts from the imager for each arch.
	for _, name := range []string{release.KernelAsset, release.InitramfsAsset, release.SDBootAsset, release.SDStubAsset} {
		data, err := o.asset(arch, name)
		if err != nil {
			return nil, err
		}

		if data == nil {
			if data, err = placeholderAsset(o.ver, arch, name, o.KernelVersion); err != nil {
				return nil, err
			}
		}

		entries = append(entries, file(dir+name, data))
	}

	sbom := fmt.Sprintf(`{"spdxVersion":"SPDX-2.3","dataLicense":"CC0-1.0","SPDXID":"SPDXRef-DOCUMENT",`+
		`"name":"talos-%s-%s","documentNamespace":"https://kiln.invalid/testrelease/%s/%s",`+
		`"creationInfo":{"created":"%s","creators":["Tool: kiln-testrelease"]},"packages":[]}`+"\n",
		o.Version, arch, o.Version, arch, epoch().Format("2006-01-02T15:04:05Z"))

	return append(entries, file(dir+"talos.spdx.json", []byte(sbom))), nil
}

// asset asks Options.Assets for a real boot asset; nil data means "use a
// placeholder", which is also the answer to fs.ErrNotExist so that a caller
// can supply only a kernel.
func (o *Options) asset(arch, name string) ([]byte, error) {
	if o.Assets == nil {
		return nil, nil
	}

	data, err := o.Assets(arch, name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("boot asset %s/%s: %w", arch, name, err)
	}

	return data, nil
}

// placeholderAsset makes a stand-in boot asset: PE files for the kernel and
// systemd-boot/stub (all three are EFI applications upstream) and a real
// zstd newc initramfs with a placeholder /init and a real /rootfs.sqsh, the
// two files the real one holds (placeholderRootfs: the module tree a
// build with kernel-module extensions needs).
func placeholderAsset(version release.Version, arch, name, kver string) ([]byte, error) {
	what := fmt.Sprintf("talos %s %s %s", version, arch, name)

	if name != release.InitramfsAsset {
		return placeholderPE(arch, "kiln synthetic placeholder: "+what+"\n")
	}

	rootfs, err := placeholderRootfs(version, arch, kver)
	if err != nil {
		return nil, fmt.Errorf("placeholder %s/%s rootfs.sqsh: %w", arch, name, err)
	}

	archive := newc([]cpioFile{
		{name: "init", mode: 0o755, data: elfPlaceholder(what + " /init")},
		{name: "rootfs.sqsh", mode: 0o644, data: rootfs},
	})

	data, err := zstdCompress(archive)
	if err != nil {
		return nil, fmt.Errorf("placeholder %s/%s: %w", arch, name, err)
	}

	return data, nil
}

// installerBaseFiles is the content of installer-base, which the imager is
// built on, for one arch: bin is the installer, a placeholder when nil.
func installerBaseFiles(version, arch string, bin []byte) []entry {
	if bin == nil {
		bin = elfPlaceholder(fmt.Sprintf("talos %s installer linux/%s", version, arch))
	}

	return []entry{exe("usr/bin/installer", bin)}
}

// installer asks Options.Installer for a real installer binary; nil means
// "use the placeholder", as for asset.
func (o *Options) installer(arch string) ([]byte, error) {
	if o.Installer == nil {
		return nil, nil
	}

	data, err := o.Installer(arch)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}

	if err != nil {
		return nil, fmt.Errorf("installer-base linux/%s installer: %w", arch, err)
	}

	return data, nil
}

// imagerExtraFiles is what the imager adds to installer-base besides the
// boot assets.
func imagerExtraFiles() []entry {
	return []entry{
		{path: "usr/bin/imager", link: "installer"},
		// Read by depmod when the builder rebuilds module dependencies for
		// extensions carrying kernel modules.
		file("etc/modules.d/10-extra-modules.conf", []byte("search extras built-in\n")),
	}
}

// extension is one synthetic system extension image.
type extension struct {
	name        string // "gvisor"; the repository is siderolabs/<name>
	tag         string
	description string
	rootfs      func(arch string) []entry // paths relative to rootfs/
}

// extensionAuthor is what every official extension manifest says.
const extensionAuthor = "Sidero Labs"

// extensionSet returns the synthetic extensions of a release: a plain
// binary with SELinux labels, firmware, CPU microcode (the builder moves it
// to an uncompressed cpio) and kernel modules (the builder rebuilds
// modules.dep), one of each path the builder treats differently. Tags
// follow upstream: most carry the Talos version, microcode does not.
// modules, when not nil, replaces the synthetic kernel modules (paths
// relative to usr/lib/modules/<kver>).
func extensionSet(version, kver string, modules map[string][]byte) []extension {
	return []extension{
		{
			name:        "gvisor",
			tag:         "20250505.0-" + version,
			description: "This system extension provides gVisor using containerd's runtime handler.",
			rootfs: func(arch string) []entry {
				return []entry{
					labelled(exe("usr/local/bin/runsc", elfPlaceholder("gvisor runsc linux/"+arch)), GvisorBinaryLabel),
					exe("usr/local/bin/containerd-shim-runsc-v1", elfPlaceholder("gvisor shim linux/"+arch)),
					labelled(file("etc/cri/conf.d/gvisor.part", []byte(
						"[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.runsc]\n  runtime_type = \"io.containerd.runsc.v1\"\n")),
						GvisorConfigLabel),
				}
			},
		},
		{
			name:        "i915",
			tag:         "20250509-" + version,
			description: "This system extension provides Intel i915 GPU firmware binaries.",
			rootfs: func(string) []entry {
				return []entry{
					// Labelled, but firmware leaves the layer for the
					// initramfs, where the label is not kept.
					labelled(file("usr/lib/firmware/i915/adlp_dmc.bin", []byte("kiln synthetic placeholder: i915 adlp_dmc firmware\n")),
						"system_u:object_r:kiln_synthetic_firmware_t:s0"),
					file("usr/lib/firmware/i915/tgl_guc_70.bin", []byte("kiln synthetic placeholder: i915 tgl_guc firmware\n")),
				}
			},
		},
		{
			name:        "intel-ucode",
			tag:         "20250512",
			description: "This system extension provides Intel microcode binaries.",
			rootfs: func(string) []entry {
				return []entry{
					file("usr/lib/firmware/intel-ucode/06-55-04", []byte("kiln synthetic placeholder: intel microcode 06-55-04\n")),
					file("usr/lib/firmware/intel-ucode/06-8e-0a", []byte("kiln synthetic placeholder: intel microcode 06-8e-0a\n")),
				}
			},
		},
		{
			name:        "drbd",
			tag:         "9.2.14-" + version,
			description: "This system extension provides the DRBD kernel modules built against a specific Talos version.",
			rootfs: func(arch string) []entry {
				files := modules
				if files == nil {
					files = moduleFiles(drbdModules(), arch, kver)
				}

				var entries []entry
				for p, data := range files {
					entries = append(entries, file("usr/lib/modules/"+kver+"/"+p, data))
				}

				return entries
			},
		},
	}
}

// extensionManifest is manifest.yaml, with the fields and YAML names of
// pkg/machinery/extensions.Manifest. That package is not imported: its
// dependencies (machinery constants, crypto, CNI) are not in go.sum and
// other engineers share go.mod.
type extensionManifest struct {
	Version  string `yaml:"version"`
	Metadata struct {
		Name          string `yaml:"name"`
		Version       string `yaml:"version"`
		Author        string `yaml:"author"`
		Description   string `yaml:"description"`
		Compatibility struct {
			Talos struct {
				Version string `yaml:"version"`
			} `yaml:"talos"`
		} `yaml:"compatibility"`
	} `yaml:"metadata"`
}

// extensionLayerFiles is an extension's only layer: manifest.yaml and rootfs/,
// nothing else, as pkg/machinery/extensions.Load requires.
func extensionLayerFiles(ext extension, arch string) ([]entry, error) {
	var manifest extensionManifest

	manifest.Version = "v1alpha1"
	manifest.Metadata.Name = ext.name
	manifest.Metadata.Version = ext.tag
	manifest.Metadata.Author = extensionAuthor
	manifest.Metadata.Description = ext.description
	manifest.Metadata.Compatibility.Talos.Version = ">= v1.0.0"

	data, err := yaml.Marshal(manifest)
	if err != nil {
		return nil, fmt.Errorf("extension %s manifest: %w", ext.name, err)
	}

	entries := []entry{file("manifest.yaml", data), {path: "rootfs", mode: 0o755, dir: true}}
	for _, e := range ext.rootfs(arch) {
		e.path = "rootfs/" + e.path
		entries = append(entries, e)
	}

	return entries, nil
}

// catalogDescription is one value of descriptions.yaml.
type catalogDescription struct {
	Author      string `yaml:"author"`
	Description string `yaml:"description"`
}

// overlaysCatalog is overlays.yaml.
type overlaysCatalog struct {
	Overlays []overlayEntry `yaml:"overlays"`
}

// overlayEntry names an overlay: image is the tagged upstream reference
// (image-factory parses it with name.NewTag), digest the index digest.
type overlayEntry struct {
	Name   string `yaml:"name"`
	Image  string `yaml:"image"`
	Digest string `yaml:"digest"`
}

// overlay is one synthetic overlay image.
type overlay struct {
	image string // "sbc-raspberrypi"; the repository is siderolabs/<image>
	tag   string
	names []string // installer/profile names it provides
	files func(arch string) []entry
}

// overlaySet returns the synthetic overlays. The image is multi-arch like
// upstream: the installer binary runs on the build host, while the
// artifacts are arm64 in both.
func overlaySet() []overlay {
	return []overlay{{
		image: "sbc-raspberrypi",
		tag:   "v0.1.9",
		names: []string{"rpi_generic"},
		files: func(arch string) []entry {
			return []entry{
				file("artifacts/arm64/firmware/boot/start4.elf", []byte("kiln synthetic placeholder: raspberry pi start4.elf\n")),
				file("artifacts/arm64/firmware/boot/fixup4.dat", []byte("kiln synthetic placeholder: raspberry pi fixup4.dat\n")),
				file("artifacts/arm64/u-boot/rpi_generic/u-boot.bin", []byte("kiln synthetic placeholder: u-boot rpi_generic\n")),
				file("artifacts/arm64/dtb/broadcom/bcm2711-rpi-4-b.dtb", []byte("\xd0\x0d\xfe\xedkiln synthetic placeholder dtb\n")),
				exe("installers/rpi_generic", elfPlaceholder("overlay installer rpi_generic linux/"+arch)),
				file("profiles/rpi_generic.yaml", []byte(rpiGenericProfile)),
			}
		},
	}}
}

// rpiGenericProfile is an imager profile fragment as the real overlay ships.
const rpiGenericProfile = `arch: arm64
platform: metal
secureboot: false
output:
  kind: image
  outFormat: .xz
  imageOptions:
    diskSize: 1306525696
    diskFormat: raw
    bootloader: grub
`

// talosctlFiles are the binaries of talosctl-all, at the image root.
func talosctlFiles(version string) []entry {
	var entries []entry
	for _, n := range []string{"talosctl-darwin-amd64", "talosctl-darwin-arm64", "talosctl-linux-amd64",
		"talosctl-linux-arm64", "talosctl-windows-amd64.exe"} {
		entries = append(entries, exe(n, elfPlaceholder("talosctl "+version+" "+n)))
	}

	return entries
}

// kubernetesFiles is the content of a placeholder Kubernetes bundle image:
// one binary named after the repository.
func kubernetesFiles(bin, tag, arch string) []entry {
	return []entry{exe("usr/local/bin/"+bin, elfPlaceholder(bin+" "+tag+" linux/"+arch))}
}

// baseConfig is the image config shared by the Talos images.
func baseConfig(version string) v1.Config {
	return v1.Config{
		Env:    []string{"VERSION=" + version},
		Labels: map[string]string{versionLabel: version},
	}
}
