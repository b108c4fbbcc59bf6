// Package grub makes the GRUB images Talos's imager makes with grub-mkimage,
// in Go, from a release's own GRUB platform directories
// (/usr/lib/grub/i386-pc, x86_64-efi, arm64-efi in the imager image), and
// renders the grub.cfg texts Talos writes.
//
// The formats follow GRUB's util/mkimage.c and util/grub-mkimagexx.c
// (2.06, 2.12 and 2.14 agree on everything used here except the EFI
// NX-compat flag, which 2.14 sets):
//
//   - i386-pc: diskboot.img, then lzma_decompress.img with the compressed and
//     uncompressed sizes patched in, then raw LZMA (lc=3 lp=0 pb=2, what
//     lzma_decompress.img's decoder is built for) of kernel.img's loaded
//     sections followed by the module area (a grub_module_info header, each
//     module from moddep.lst's dependency order, the prefix). diskboot.img's
//     blocklist length counts the sectors after it.
//   - i386-pc-eltorito: cdboot.img in front of the same.
//   - x86_64-efi, arm64-efi: kernel.img (a relocatable ELF object) laid out
//     and relocated as GRUB lays it out, with the module area appended, in a
//     PE32+ with .text, .data, mods and .reloc sections. grub-mkimage ignores
//     --compression for EFI (only platforms with a decompressor compress), so
//     Talos's "--compression xz" changes nothing there.
//
// GRUB's own LZMA encoder (the LZMA SDK's, with its optimal parser) is not
// reproduced: the i386-pc payload decompresses to exactly the bytes
// grub-mkimage compresses, but the compressed stream, and so the two size
// fields and the blocklist length, differ. The EFI images are byte for byte
// what grub-mkimage writes.
package grub
