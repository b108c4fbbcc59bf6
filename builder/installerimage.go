package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/kiln-dev/kiln/artifacts"
	"github.com/kiln-dev/kiln/builder/installer"
	"github.com/kiln-dev/kiln/release"
	"github.com/kiln-dev/kiln/signing"
)

// InstallerRequest names an installer image: the index over the release's
// architectures (those of them whose installer base is mirrored) of
// <platform>-installer/<schematic>:<version>.
type InstallerRequest struct {
	SchematicID string
	Version     string
	// Platform is the platform the installer installs ("metal").
	Platform string
}

// InstallerPlan is an installer image resolved: one plan per architecture
// (each names the schematic, the version, the imager and the extensions by
// verified digest) and the verified base installer.
type InstallerPlan struct {
	Version release.Version
	// Base is the verified base installer image, repository@digest.
	Base  string
	plans []*Plan
	base  interface {
		Platform(ctx context.Context, arch string) (v1.Image, error)
	}
}

// Key names what decides the index's bytes: equal keys are equal indexes.
func (ip *InstallerPlan) Key() string {
	h := sha256.New()

	fmt.Fprintf(h, "installer\x00%s\x00", ip.Base)

	for _, p := range ip.plans {
		fmt.Fprintf(h, "%s\x00", p.Key())
	}

	return hex.EncodeToString(h.Sum(nil))
}

// PlanInstaller resolves req: the schematic, the version and every input
// by verified digest, refusing what kiln does not build (an overlay, a
// platform other than metal, SecureBoot) before anything is built.
func (b *Builder) PlanInstaller(ctx context.Context, req InstallerRequest) (*InstallerPlan, error) {
	platform := req.Platform
	if platform == "" {
		platform = "metal"
	}

	ip := &InstallerPlan{}

	var missing []string

	for _, arch := range release.Arches {
		out := Output{Kind: KindInstaller, Platform: platform, Arch: arch, Path: platform + "-installer-" + arch + ".tar"}

		p, err := b.plan(ctx, Request{SchematicID: req.SchematicID, Version: req.Version, Path: out.Path}, out, func() error {
			if platform != "metal" {
				return &UnsupportedError{What: "platform " + platform + " (only metal)"}
			}

			return nil
		})
		if err != nil {
			return nil, err
		}

		// A mirror made with kiln mirror --arch keeps the base's index
		// whole but only the children of its architectures: the installer
		// is an index over those.
		if _, err := p.base.Platform(ctx, arch); errors.Is(err, artifacts.ErrNotMirrored) {
			missing = append(missing, arch)

			continue
		} else if err != nil {
			return nil, fmt.Errorf("installer base linux/%s: %w", arch, err)
		}

		ip.plans = append(ip.plans, p)
		ip.Version = p.Version
	}

	if len(ip.plans) == 0 {
		return nil, fmt.Errorf("installer base of Talos %s: no architecture of %v is mirrored: %w", req.Version, release.Arches, artifacts.ErrNotMirrored)
	}

	if len(missing) > 0 {
		b.deps.Logger.InfoContext(ctx, "installer over the mirrored architectures only", "schematic", req.SchematicID, "version", ip.Version,
			"not_mirrored", missing)
	}

	ip.Base, ip.base = ip.plans[0].InstallerBase, ip.plans[0].base

	return ip, nil
}

// Arches are the architectures of the index, those the mirrored installer
// base has.
func (ip *InstallerPlan) Arches() []string {
	arches := make([]string, 0, len(ip.plans))
	for _, p := range ip.plans {
		arches = append(arches, p.Output.Arch)
	}

	return arches
}

// Installer builds the installer index of ip and hands it to publish, once
// for every caller asking for the same plan and target at the same time, in
// a build slot like every other build (a BusyError when the queue is full).
// target names where publish writes (a repository): callers with another
// target run their own build, so each publish happens. The index's own
// layers are files in scratch space that exist only while publish runs:
// publish writes the index out (to a registry, a tarball). progress (may be
// nil) receives events.
func (b *Builder) Installer(ctx context.Context, ip *InstallerPlan, target string, progress func(Event), publish func(context.Context, v1.ImageIndex) error) error {
	if progress == nil {
		progress = func(Event) {}
	}

	return b.flight(ctx, "installer-"+ip.Key()+"-"+target, progress, func(ctx context.Context, emit func(Event)) error {
		if err := b.deps.Artifacts.Drift(ctx, ip.Version); err != nil {
			return err
		}

		start := time.Now()

		if err := b.writeInstaller(ctx, ip, emit, publish); err != nil {
			b.logFailure(ctx, "installer build", err, "schematic", ip.plans[0].SchematicID, "version", ip.Version)

			return err
		}

		b.deps.Logger.InfoContext(ctx, "built installer", "schematic", ip.plans[0].SchematicID, "version", ip.Version,
			"platform", ip.plans[0].Output.Platform, "key", ip.Key(), "duration", time.Since(start))

		return nil
	})
}

func (b *Builder) writeInstaller(ctx context.Context, ip *InstallerPlan, emit func(Event), publish func(context.Context, v1.ImageIndex) error) error {
	tmp, err := b.scratch("installer-")
	if err != nil {
		return err
	}

	defer os.RemoveAll(tmp) //nolint:errcheck // scratch space

	layers := filepath.Join(tmp, "layers")
	if err := os.Mkdir(layers, 0o755); err != nil {
		return err
	}

	platforms := make([]installer.Platform, 0, len(ip.plans))

	for _, p := range ip.plans {
		arch := p.Output.Arch

		dir := filepath.Join(tmp, arch)
		if err := os.Mkdir(dir, 0o755); err != nil {
			return err
		}

		j := &job{b: b, p: p, tmp: dir, emit: emit}
		defer j.closeAll()

		emit(Event{Phase: "fetch", Artifact: ip.Base, Message: "installer base linux/" + arch})

		base, err := ip.base.Platform(ctx, arch)
		if err != nil {
			return fmt.Errorf("installer base linux/%s: %w", arch, err)
		}

		assets, err := j.installerAssets(ctx)
		if err != nil {
			return fmt.Errorf("installer linux/%s: %w", arch, err)
		}

		platforms = append(platforms, installer.Platform{Arch: arch, Base: base, Assets: assets})
	}

	emit(Event{Phase: "assemble", Message: "installer image"})

	idx, err := installer.Build(ctx, installer.Options{Version: ip.Version, Created: time.Unix(SourceDateEpoch, 0), Dir: layers}, platforms...)
	if err != nil {
		return err
	}

	emit(Event{Phase: "publish", Message: "publishing the installer image"})

	return publish(ctx, idx)
}

// installerAssets writes the boot assets of the job's architecture into
// its scratch directory: systemd-boot and the installer's UKI from Talos
// 1.10, the kernel and the initramfs with extensions before.
func (j *job) installerAssets(ctx context.Context) (installer.Assets, error) {
	if installer.UsesUKI(j.p.Version) {
		ukiPath := filepath.Join(j.tmp, "vmlinuz.efi")

		if err := j.writeFile(ukiPath, func(f *os.File) error { _, err := j.uki(ctx, f); return err }); err != nil {
			return installer.Assets{}, err
		}

		sdboot, err := j.bootFile(ctx, release.SDBootAsset)
		if err != nil {
			return installer.Assets{}, err
		}

		j.closeLater(sdboot)

		uki, err := installer.FileBlob(ukiPath)
		if err != nil {
			return installer.Assets{}, err
		}

		return installer.Assets{SDBoot: assetBlob(sdboot), UKI: uki}, nil
	}

	initrdPath := filepath.Join(j.tmp, release.InitramfsAsset)

	if err := j.writeFile(initrdPath, func(f *os.File) error { return j.initramfs(ctx, f) }); err != nil {
		return installer.Assets{}, err
	}

	kernel, err := j.bootFile(ctx, release.KernelAsset)
	if err != nil {
		return installer.Assets{}, err
	}

	j.closeLater(kernel)

	initrd, err := installer.FileBlob(initrdPath)
	if err != nil {
		return installer.Assets{}, err
	}

	return installer.Assets{Kernel: assetBlob(kernel), Initramfs: initrd}, nil
}

// writeFile creates path and fills it with write.
func (j *job) writeFile(path string, write func(*os.File) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}

	if err := write(f); err != nil {
		f.Close()

		return err
	}

	return f.Close()
}

// closeAll closes the release files the job kept open.
func (j *job) closeAll() {
	for _, c := range j.open {
		c.Close()
	}
}

// readerAtSized is an open release file (storage.Asset).
type readerAtSized interface {
	ReadAt(p []byte, off int64) (int, error)
	Size() int64
}

// assetBlob reads an open release file from its start each time the layer
// is written; the job keeps it open.
func assetBlob(a readerAtSized) installer.Blob {
	return installer.Blob{Size: a.Size(), Open: func() (io.ReadCloser, error) {
		return io.NopCloser(io.NewSectionReader(a, 0, a.Size())), nil
	}}
}

// installerTarball writes the linux/<arch> installer image as the docker
// archive the public factory serves as [<platform>-]installer-<arch>.tar.
func (j *job) installerTarball(ctx context.Context, w io.Writer) error {
	p := j.p

	j.emit(Event{Phase: "fetch", Artifact: p.InstallerBase, Message: "installer base linux/" + p.Output.Arch})

	base, err := p.base.Platform(ctx, p.Output.Arch)
	if err != nil {
		return fmt.Errorf("installer base linux/%s: %w", p.Output.Arch, err)
	}

	assets, err := j.installerAssets(ctx)
	if err != nil {
		return err
	}

	layers := filepath.Join(j.tmp, "layers")
	if err := os.Mkdir(layers, 0o755); err != nil {
		return err
	}

	j.emit(Event{Phase: "assemble", Message: "installer image"})

	idx, err := installer.Build(ctx, installer.Options{Version: p.Version, Created: time.Unix(SourceDateEpoch, 0), Dir: layers},
		installer.Platform{Arch: p.Output.Arch, Base: base, Assets: assets})
	if err != nil {
		return err
	}

	img, err := idx.Arch(p.Output.Arch)
	if err != nil {
		return err
	}

	tag, err := installer.TarballTag(p.Version)
	if err != nil {
		return err
	}

	return installer.WriteTarball(ctx, w, img, tag)
}

// InstallerPublisher puts the installer of a schematic and version into
// kiln's registry, signed, as its first pull does (the server's registry
// frontend), and says where it is. The builder asks it while planning an
// ISO or disk whose schematic embeds an image cache, so that the cache
// carries the installer the node installs from. With build false it only
// finds an installer published already, and answers one that is not with
// an error matching storage.ErrNotFound.
type InstallerPublisher interface {
	PublishInstaller(ctx context.Context, req InstallerRequest, build bool) (*PublishedInstaller, error)
}

// PublishedInstaller is an installer index in kiln's registry.
type PublishedInstaller struct {
	// Public is how nodes pull it, <kiln host>/<platform>-installer/<id>:<version>:
	// machine.install.image of kiln's air-gap patch, and the name the
	// image cache keeps it under, which a node's registryd looks up (the
	// "ns" of containerd's mirror request is the reference's host).
	Public name.Tag
	// Source is the index by digest where kiln reads it, with Remote.
	Source name.Digest
	Remote []remote.Option
	// Check verifies what is read from Source: kiln's signature over it
	// (the trust policy covers the mirror's images, not kiln's own).
	Check signing.Checker
}

// SetInstallerPublisher makes image caches embedded in ISOs and disks
// carry the schematic's installer, published with p; nil turns it off.
// Call it before serving.
func (b *Builder) SetInstallerPublisher(p InstallerPublisher) {
	if p == nil {
		b.installers.Store(nil)

		return
	}

	b.installers.Store(&p)
}
