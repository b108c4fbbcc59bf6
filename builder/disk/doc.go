// Package disk assembles Talos raw disk images (the `image` output): a GPT
// disk in the sd-boot layout (EFI, META), the dual-boot layout (EFI, BIOS,
// BOOT, META) or the grub layout (a 100 MiB EFI, BIOS, BOOT, META), with
// optional extra partitions such as IMAGECACHE after META, written sparse
// into a file. For grub and dual-boot, GRUB's boot.img goes into the
// protective MBR's boot code and core.img into BIOS, both patched as
// Talos's PatchBlocklistsForDiskImage patches them; the BOOT partition's
// content (XFS, builder/xfs) comes from the caller.
//
// Layout follows talos-formats.md §4: 128 GPT entries, primary header at
// LBA 1, partitions aligned to 1 MiB, a protective MBR, disk and partition
// GUIDs from GUIDFromLabel, partition names equal to the Talos labels, META of
// exactly 1 MiB. Both 512- and 4096-byte logical sectors are supported.
//
// The GPT is encoded here rather than through go-diskfs: it is ~200 lines, it
// keeps 4Kn correct without the re-read workaround, and it lets every byte not
// written by a partition's content stay a hole in the output file.
//
// Write writes into a file owned by the caller. It does not make the result
// visible anywhere: the caller hands it a temp file of the asset cache and
// commits it only when Write returns nil (style.md §5.10).
package disk
