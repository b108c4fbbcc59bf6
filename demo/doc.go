// Package demo is kiln's synthetic Talos release: Push generates a
// deterministic release with the real registry layout and pushes it to a
// registry, so that `kiln serve --demo` and kiln's tests have something to mirror, verify and build from without
// reaching ghcr.io; Seed is what `kiln serve --demo` does with it: signs it
// with a key of its own, pushes each version once into the embedded
// registry, and gives the trust policy rule and the release locks that go
// with it. All of it is production code: nothing of a test kit.
//
// A release is: the imager (boot assets for both arches under usr/install/),
// installer-base (the full installer before 1.10), extension images and
// their catalog, an overlay image and its catalog, talosctl-all (from
// 1.11), and the cluster images listed by release.KubernetesImages. Every
// image is an OCI index with linux/amd64 and linux/arm64 entries.
// Repositories and tags follow upstream, mapped onto the target registry
// with release.MirrorPath, and the catalogs name the upstream ghcr.io
// references exactly as the real catalogs do.
//
// The content is placeholder data, not working software: the kernel and
// systemd-boot/stub are minimal PE32+ EFI applications that debug/pe parses
// (unless Options.Assets supplies real ones), and the initramfs is a real
// zstd-compressed newc cpio holding a placeholder /init and a real
// squashfs /rootfs.sqsh (a stand-in /usr/bin/init and a base kernel module
// tree with depmod's files). The kernel-module extension (siderolabs/drbd)
// carries synthetic ELF modules that need a base module, and gvisor's
// files carry SELinux labels as PAX records. Tar headers, config
// timestamps and compression are fixed, so the same Options always yield
// the same digests. The image histories still say "kiln testrelease", the
// package's name before it became demo: changing them would change every
// digest, and a data directory seeded before would then refuse its own demo
// release by its locks.
package demo
