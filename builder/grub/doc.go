// Package grub makes the GRUB images Talos's imager makes with grub-mkimage
// and grub-mkrescue, in Go, from a release's own GRUB platform directories
// (/usr/lib/grub/i386-pc, x86_64-efi, arm64-efi in the imager image), patches
// the BIOS boot sectors as Talos and xorriso do, and renders the grub.cfg
// texts Talos writes.
//
//   - MakeImage is grub-mkimage for the formats Talos uses, with Talos's
//     module lists and prefix in TalosModules, TalosBIOSModules and
//     TalosPrefix; MkrescueElTorito gives grub-mkrescue's El Torito options.
//   - BootImage, HybridBootImage and the Patch functions place the i386-pc
//     images: PatchForGPTDisk for a disk's BIOS boot partition and MBR
//     (Talos's PatchBlocklistsForDiskImage), PatchElToritoImage and
//     PatchHybridMBR for an ISO (xorriso's -boot-info-table,
//     --grub2-boot-info and --grub2-mbr).
//   - ISOConfig and DiskConfig are Talos's grub.cfg for an ISO and for a
//     disk image's BOOT partition, Quote its escaping.
//
// The formats follow GRUB's util/mkimage.c and util/grub-mkimagexx.c; 2.06,
// 2.12 and 2.14 agree on everything used here except the EFI NX-compat flag,
// which 2.14 sets (the version is read from the directory's modinfo.sh):
//
//   - i386-pc: diskboot.img, then lzma_decompress.img with the compressed and
//     uncompressed sizes patched in, then raw LZMA (lc=3 lp=0 pb=2, what
//     lzma_decompress.img's decoder is built for, no header, no end marker)
//     of kernel.img's loaded sections followed by the module area (a
//     grub_module_info header, each module in moddep.lst's dependency order,
//     the embedded config, the prefix). diskboot.img's blocklist length
//     counts the sectors after it. i386-pc-eltorito puts cdboot.img in front.
//   - x86_64-efi, arm64-efi: kernel.img (a relocatable ELF object) laid out
//     and relocated as GRUB lays it out, with the module area appended, in a
//     PE32+ with .text, .data, mods and .reloc sections. grub-mkimage ignores
//     --compression for EFI (only platforms with a decompressor compress), so
//     Talos's "--compression xz" changes nothing there.
//
// The EFI images are byte for byte what grub-mkimage writes. GRUB's own LZMA
// encoder (the LZMA SDK's, with its optimal parser) is not reproduced: the
// i386-pc payload decompresses to exactly the bytes grub-mkimage compresses,
// but the stream (about 12% longer, from ulikunitz/xz), and so the two size
// fields and the blocklist length, differ.
package grub
