// Package meta encodes Talos META key/value pairs, the small store Talos keeps
// on its 1 MiB META partition.
//
// Two encodings are produced, matching what the Talos imager does:
//
//   - EnvValue: the text carried on the kernel command line of outputs that
//     have no META partition (ISO, UKI, installer, PXE), as
//     talos.environment=INSTALLER_META_BASE64=<EnvValue>. It is
//     github.com/siderolabs/talos/pkg/machinery/meta Values.Encode, gzip
//     allowed only for Talos versions that can decode it.
//   - Partition: the exact 1 MiB META partition image written into disk
//     images: a Talos ADV (github.com/siderolabs/go-adv/adv/talos layout) at
//     offset 0, stored twice, the rest zero; all zeros when there are no
//     values. Unlike go-adv's own marshaller, entries are written in
//     ascending key order, so the image is reproducible.
//
// The package is pure: no I/O.
package meta
