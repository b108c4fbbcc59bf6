// Package installer assembles Talos installer images (the `installer`
// output, what `talosctl upgrade --image` and `machine.install.image` pull)
// the way Talos's imager does (pkg/imager/out.go outInstaller,
// talos-formats.md §1.3), but reproducibly: the same release and assets give
// the same digests on every kiln.
//
// Each platform image is the base installer's layers (installer-base from
// Talos 1.10; before it the full installer, of which only the first layer is
// kept when it has exactly two, as Talos does), then one artifacts layer
// holding usr/install/<arch>/systemd-boot.efi and vmlinuz.efi (the UKI) from
// 1.10, vmlinuz and initramfs.xz before, then an overlay layer when the
// schematic has an overlay. The config takes the base's container config
// (entrypoint, environment, labels) with the platform's architecture and os.
// The platform images are gathered in an OCI index.
//
// What Talos leaves to chance is fixed here: the config's created time and
// every history entry carry Options.Created (the build epoch), not the
// clock. The layers kiln writes are Talos's own bytes (filemap.Layer): tar
// entries sorted by path, no timestamps, owners or names, file mode 0 in the
// artifacts layer, gzip at go-containerregistry's level with a zero header.
//
// Layers are streamed: each is tarred, compressed and hashed in one pass
// into a file under Options.Dir, so memory stays bounded whatever the size of
// the UKI. The result is a v1.ImageIndex whose own layers read those files
// and whose base layers are the base image's (remote layers stay remote), so
// remote.WriteIndex pushes it, WriteTarball writes the docker-archive the
// public factory serves as installer-<arch>.tar, and layout.Write an OCI
// layout.
package installer
