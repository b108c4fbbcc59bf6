// Package initramfs is the builder step that adds system extensions to a
// Talos release initramfs, as the Talos imager does
// (pkg/imager/extensions, internal/pkg/extensions), in pure Go.
//
// The output is three concatenated segments, which the kernel unpacks in
// order:
//
//	[uncompressed cpio: kernel/x86/microcode/{AuthenticAMD,GenuineIntel}.bin]  only if an extension carries CPU microcode
//	[the release initramfs, byte for byte: zstd cpio with /init and /rootfs.sqsh]
//	[zstd cpio: 0.sqsh, 1.sqsh, ..., modules.dep.sqsh, extensions.yaml, usr/lib/firmware/**]  only if there are extensions
//
// Each extension's rootfs/ becomes one squashfs layer, <index>.sqsh, with
// the extension's security.selinux labels (from its tar's PAX records) as
// its only xattrs. Talos lists the layers with their index strings sorted,
// so 10.sqsh comes before 2.sqsh; its init mounts them as a read-only
// overlay over the root filesystem, later layers winning. Layers and the
// appended archive are zstd from Talos 1.8 and xz before, the only two
// the Talos kernel reads (internal/taloskernel has its configuration).
// Firmware does not go into the layers: the kernel loads it before the
// overlay exists, so it is unpacked straight into the initramfs, and init
// bind-mounts the firmware directory into the new root. Microcode must be
// in the first, uncompressed segment because the kernel looks for it
// there before it unpacks anything.
//
// Kernel modules stay in their extension's layer. When any extension has
// them, Talos loads them by name only if modules.dep knows them, so, as the
// imager does, the release's module tree is read out of rootfs.sqsh, the
// extensions' modules for that kernel are added, depmod's files are
// computed (internal/depmod, equal to kmod's depmod) and every modules.*
// file becomes a last layer, modules.dep.sqsh.
//
// Paths that moved in Talos 1.10 follow the target version: firmware in
// usr/lib/firmware and modules in usr/lib/modules from 1.10, lib/firmware
// and lib/modules before.
package initramfs
