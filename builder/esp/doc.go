// Package esp builds the FAT file system of an EFI system partition in pure
// Go (github.com/diskfs/go-diskfs), from a list of files to place in it.
//
// It is the "ESP image" step of kiln's builders: builder/iso appends the image
// as the El Torito EFI boot image and as partition 2 of the hybrid ISO, and
// builder/disk formats the EFI partition of raw disk images with BuildAt.
//
// File system type. The type follows the FAT specification's rule, which is
// the one firmware applies: a volume is FAT32 only with at least 65525
// clusters, FAT16 with 4085..65524 and FAT12 below (OVMF refuses a "FAT32"
// with too few clusters). For 512-byte sectors the image is formatted FAT32
// when go-diskfs's FAT32 layout for that size reaches 65525 clusters (about
// 33 MiB and up), else FAT16, else FAT12. go-diskfs has no FAT12/FAT16 for
// 4096-byte sectors, so with 4096-byte sectors Build sizes the image up to
// MinFAT32Size4K and BuildAt refuses smaller sizes with ErrTooSmall.
//
// Size. Build makes the image max(Options.MinSize, RequiredSize(files)):
// 10 MiB plus every file rounded up to 1 MiB plus the FAT overhead, the
// Talos imager's rule (talos-formats.md §3.3) extended to any number of
// files.
//
// go-diskfs defects worked around here (go-diskfs-findings.md §1):
//   - every Write that grows a file rewrites both FATs, and file data is
//     written one cluster per system call: go-diskfs gets one Write per
//     file of a mapped, untouched marker buffer, whose writes the backend
//     drops and records, and the file's bytes are then copied once into
//     the clusters it chose (content.go);
//   - files of 4 GiB or more are silently truncated: refused with ErrFileTooLarge;
//   - '..' of first-level directories points at cluster 2 instead of 0, the
//     FAT32 FSInfo free count is left unset, FAT12/16 leak cluster 2, and
//     timestamps come from the clock: a final pass (fixup.go) rewrites the
//     '..' entries, the FSInfo sector, the serial number and every directory
//     entry's timestamps, so `fsck.vfat -n` is clean and equal inputs give
//     byte-identical images.
package esp
