// Package uki assembles a Unified Kernel Image: a systemd-stub EFI program
// (x86_64 or aarch64) with the kernel, initramfs, command line and
// os-release appended as PE sections, in pure Go.
//
// Section order follows the Talos imager: the stub's own sections (with its
// .sbat), then .osrel .cmdline .uname [.splash] [.pcrpkey] .linux .initrd,
// then the .profile sections, each followed by its own .cmdline if it has
// one. New sections get consecutive virtual addresses after the stub's
// image, aligned to the stub's SectionAlignment, and file offsets aligned to
// its FileAlignment, as Talos's PE writer (internal/pkg/uki/internal/pe)
// places them; SizeOfImage, SizeOfInitializedData, SizeOfHeaders,
// NumberOfSections and CheckSum are fixed up.
//
// Profiles (UKI specification, systemd >= 257): the sections before the
// first .profile are the base, and profile N is the base with the sections
// after the N-th .profile (up to the next one) in place of those of the same
// name. TalosProfiles gives the ones Talos's imager adds from Talos 1.10:
// "ID=main" with no .cmdline of its own (so the base command line), then
// for an ISO "ID=reset" and for a disk image or installer
// "ID=reset-maintenance", each with the main command line plus
// talos.experimental.wipe=.... systemd-stub boots profile 0 unless
// systemd-boot chose another entry ("<file>@<ID>"). Stubs older than 257,
// such as Debian 12's 252, know no profiles and boot the last .cmdline they
// find, the reset one.
//
// The kernel and initramfs are streamed from io.Readers in 1 MiB chunks and
// never held in memory; only the stub (tens of KiB) is read whole. They may
// also be given as parts (Blob.Parts, e.g. the release's initramfs file
// followed by what a schematic appends): AssembleAt writes the image at its
// place in a file (an ISO tree extent, an ESP's clusters) and copies a part
// that is a section of a file in the kernel (copy_file_range) when its share
// of the PE checksum is given (SumOf, which a caller can keep per file), so
// its bytes never pass through user space.
//
// What is changed in the stub and why:
//
//   - A COFF symbol table (Debian's stub has one) is refused with
//     ErrSymbolTable unless Options.StripSymbols is set. Stripping clears
//     PointerToSymbolTable and NumberOfSymbols and drops the table and its
//     string table, which sit after the last section's raw data; it is
//     refused if a section name refers to the string table ("/n" names).
//   - An Authenticode signature (the Security data directory) is dropped: it
//     would not match the new image, which must be signed afterwards.
//   - Bytes after the last section's raw data (symbols, signature, any other
//     overlay) are not copied.
//   - If the section table outgrows SizeOfHeaders, the headers are enlarged
//     by whole FileAlignment units and every raw-data pointer (sections and
//     debug directory entries) is moved by the same amount; virtual
//     addresses never change.
//
// CheckSum: Assemble computes the PE checksum while writing. When the
// destination implements io.WriterAt (an *os.File positioned at offset 0,
// for instance) the final value is written into the header at the end;
// otherwise the header carries 0 ("not computed", which UEFI accepts) and the
// value is returned in Result.
package uki
