// Package initramfs is the builder step that adds system extensions to a
// Talos release initramfs, as the Talos imager does
// (pkg/imager/extensions, internal/pkg/extensions), in pure Go.
//
// The output is three concatenated segments, which the kernel unpacks in
// order:
//
//	[uncompressed cpio: kernel/x86/microcode/{AuthenticAMD,GenuineIntel}.bin]  only if an extension carries CPU microcode
//	[the release initramfs, byte for byte: zstd cpio with /init and /rootfs.sqsh]
//	[zstd cpio: 0.sqsh, 1.sqsh, ..., extensions.yaml, usr/lib/firmware/**]      only if there are extensions
//
// Each extension's rootfs/ becomes one squashfs layer, <index>.sqsh,
// listed in extensions.yaml in the order given; Talos's init mounts the
// layers as a read-only overlay over the root filesystem, later layers
// winning. Firmware does not go into the layers: the kernel loads it
// before the overlay exists, so it is unpacked straight into the
// initramfs, and init bind-mounts /usr/lib/firmware into the new root.
// Microcode must be in the first, uncompressed segment because the kernel
// looks for it there before it unpacks anything.
//
// Kernel modules (rootfs/usr/lib/modules) are put into their layer
// unchanged. Talos additionally re-runs depmod over the base modules plus
// the extension modules and appends a "modules.dep" layer; that is not
// implemented here (see Build).
package initramfs
