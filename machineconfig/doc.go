// Package machineconfig writes the Talos machine-config patch a node needs to
// live in an air gap with kiln: registry mirrors that send every pull of an
// upstream image (docker.io, ghcr.io, registry.k8s.io, ...) to kiln's registry,
// the TLS trust for it, kiln's installer as machine.install.image, the image
// cache switch for a schematic that embeds one, and the image verification
// rule with kiln's signing key.
//
// A patch is YAML as `talosctl gen config --config-patch` and `talosctl patch
// mc` take it: a partial v1alpha1 document and whole typed documents. Which
// documents a Talos version understands is decided here per version, from the
// machinery modules of every version the Go module proxy serves (see Since):
//
//   - machine.registries (mirrors with overridePath and skipFallback, TLS per
//     host) on every version; RegistryMirrorConfig and RegistryTLSConfig
//     documents from v1.12.0-beta.0 (the "documents" form, the default from
//     then on, as Talos deprecates machine.registries);
//   - machine.install.image up to 1.13, the UnattendedInstallConfig document
//     from 1.14.0, where `talosctl gen config` writes that document instead of
//     machine.install and Talos refuses a config with both;
//   - machine.features.imageCache.localEnabled, or the ImageCacheConfig
//     document from v1.14.0-alpha.1 in the documents form; a VolumeConfig for
//     IMAGECACHE sized for the cache an ISO carries;
//   - ImageVerificationConfig from v1.13.0-beta.0.
//
// How a mirror endpoint maps an image onto kiln's registry, as Talos's
// resolver (internal/pkg/containers/image) and containerd's hosts.toml
// (internal/pkg/containers/cri/containerd) both do it: the request path is
// the endpoint's path, plus "/v2" unless overridePath is set, plus the image's
// repository without its host. kiln's mirror keeps docker.io/library/nginx as
// the repository "docker.io/library/nginx" (package release), so the
// docker.io mirror is http(s)://kiln/v2/docker.io with overridePath: a pull of
// docker.io/library/nginx:1.27 asks kiln for
// /v2/docker.io/library/nginx/manifests/1.27. ghcr.io repositories are kept
// without their host, so the ghcr.io mirror is kiln itself (no path, no
// override) — unless the mirror has a namespace, which then prefixes every
// path. factory.talos.dev is kiln's own registry frontend: kiln serves
// installers as <image>/<schematic> like the factory.
package machineconfig
