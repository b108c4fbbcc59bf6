// Package imagecache builds Talos image caches: the step that turns a list
// of container image references into the tree `talosctl images
// cache-create` writes, which a node's registryd serves from the boot ISO or
// the IMAGECACHE volume.
//
// Building happens in two steps. Plan resolves every reference (through a
// Resolver, normally kiln's mirror), fetches all manifests, verifies each
// image with the trust policy and picks the requested platforms; any missing
// image, missing platform or refused signature fails here, before a byte is
// written, with an error naming the image. Write then fetches every blob
// once (in parallel, bounded, streamed in 1 MiB chunks, checked against its
// digest) into a temporary directory next to the output, syncs it and
// renames it into place, either as the flat tree or as a one-layer OCI
// image layout.
//
// Where the time goes, and so how Write is built: every byte is hashed
// (once to check the blob; for OCI twice more, for the layer's diffID and
// digest) and written once. Synced output is written with O_DIRECT, so it
// costs no page cache and leaves the final syncfs almost nothing to do.
// With OCI the flat tree is never written out: blobs are fetched in tar
// order into memory spools (bounded, spilling to files) and packed as they
// arrive; the layer is gzip with stored blocks (the blobs are compressed
// already) and its two hashes and the file writes run on goroutines of
// their own. bench_test.go measures it against crane and skopeo.
//
// Flat tree (the output directory itself with --layout flat, the single layer
// of the OCI image otherwise); names are the upstream names even when the
// bytes come from a mirror:
//
//	blob/sha256-<hex>                                  config and layer blobs, one per digest
//	manifests/<registry>/<repo>/reference/<tag>        manifest bytes as served for <tag>
//	manifests/<registry>/<repo>/digest/sha256-<hex>    manifest bytes by digest
//
// <registry> is "docker.io" for Docker Hub references not spelled with
// "index.docker.io/", and "host:port" is written "host_port_" (vfat-safe).
// See paths.go for the one function that produces each path, and Handler for
// how the tree is served back.
//
// OCI layout (--layout oci, talosctl's default):
//
//	oci-layout
//	index.json                 one manifest descriptor with a platform, no annotations
//	blobs/sha256/<manifest>    OCI manifest
//	blobs/sha256/<config>      OCI config, created = Options.Created
//	blobs/sha256/<layer>       gzip (stored blocks) tar of the flat tree (sorted, with directory entries)
package imagecache
